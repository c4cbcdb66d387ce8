"""Validation: nats per token and bits per byte on the fixed validation slice (or the tuning slice);
under a generated task, loss and accuracy at the answer positions of its fixed test sequences.

Every model is scored on the same quantity, the next-token negative log-likelihood its
``compute_loss`` returns (``LossOutput.nll``), whatever its training objective. Bits per byte
divide the summed nats by ``ln 2`` times the UTF-8 bytes the predicted tokens stand for, so token
and byte models evaluated on the same text share one scale.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch

from ..data.loader import ValSlice
from ..plugin.specs import Batch, LossOutput
from .distributed import Dist


class Evaluator:
    """Scores a model on one rank's share of the validation slice; the sums cross ranks.

    ``lockstep``: every rank runs as many forwards as the rank with the most rows (a sharded model's
    forward is a collective); a rank out of rows scores a padding batch that counts for nothing.
    """

    def __init__(self, val: ValSlice, token_bytes, micro_batch: int, seq_len: int, dist: Dist,
                 autocast: AbstractContextManager, compute_loss, model_config, prefix: str = "val",
                 lockstep: bool = False) -> None:
        self.val, self.micro_batch, self.seq_len, self.dist, self.lockstep = val, micro_batch, seq_len, dist, lockstep
        self.token_bytes = torch.from_numpy(token_bytes).to(dist.device)
        self.autocast, self.compute_loss, self.model_config = autocast, compute_loss, model_config
        self.prefix = prefix  # "val", or "tune" for the tuning slice

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        device = self.dist.device
        nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # tokens, bytes
        positions = torch.arange(self.seq_len, device=device)[None, :]
        rows, valid = self.val.rows, self.val.valid
        n_batches = -(-len(rows) // self.micro_batch)
        if self.lockstep:
            most = int(self.dist.all_max(torch.tensor([n_batches], device=device)).item())
            pad = (most - n_batches) * self.micro_batch
            if pad:
                rows = torch.cat([rows, torch.zeros(pad, self.seq_len + 1, dtype=rows.dtype)])
                valid = torch.cat([valid, torch.zeros(pad, dtype=valid.dtype)])
        model.eval()
        try:
            with torch.no_grad(), self.autocast:
                for i in range(0, len(rows), self.micro_batch):
                    batch = Batch(rows[i : i + self.micro_batch].to(device))
                    real = positions < valid[i : i + self.micro_batch].to(device)[:, None]
                    out = self.compute_loss(model, batch, self.model_config)
                    nll_sum += out.nll.double()[real].sum()
                    counts[0] += real.sum()
                    counts[1] += self.token_bytes[batch.targets][real].sum()
        finally:
            model.train()
        self.dist.all_sum(nll_sum)
        self.dist.all_sum(counts)
        p = self.prefix
        return {
            f"{p}/loss": float(nll_sum / counts[0]),
            f"{p}/bpb": float(nll_sum / (math.log(2) * counts[1])),
            f"{p}/tokens": float(counts[0]),
            f"{p}/bytes": float(counts[1]),
        }


def masked_mean(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``nll`` over the positions ``mask`` marks (a task's answers): the loss a task
    run trains; positions outside the mask contribute nothing, not even to the count."""
    m = mask.to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1.0)


def task_loss(model: torch.nn.Module, batch: Batch, vocab_size: int) -> LossOutput:
    """What a task run trains: the masked mean (:func:`masked_mean`) of the next-token
    cross-entropy of the model's own logits at the answer positions. From ``forward``, not the
    plugin's ``compute_loss``, whose ``nll`` may be detached (it is documented as the validation
    quantity) and whose extra objectives do not apply to a task."""
    logits = model(batch.inputs)[..., :vocab_size].float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none").view_as(batch.targets)
    return LossOutput(loss=masked_mean(nll, batch.mask), nll=nll.detach(), metrics={})


class TaskEvaluator:
    """Scores a model on one rank's share of a task's fixed test (or tuning) sequences, at the
    answer positions only: ``<prefix>/loss`` (mean nll per answer, from ``compute_loss``, in nats)
    and ``<prefix>/accuracy`` (the share of answers where the argmax of ``forward``'s logits over
    the task's vocabulary is the answer); the sums cross ranks."""

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, micro_batch: int, dist: Dist,
                 autocast: AbstractContextManager, compute_loss, model_config, prefix: str = "val", lockstep: bool = False) -> None:
        self.tokens, self.mask = tokens[dist.rank :: dist.world], mask[dist.rank :: dist.world]
        self.vocab_size, self.micro_batch, self.dist = vocab_size, micro_batch, dist
        self.autocast, self.compute_loss, self.model_config, self.prefix = autocast, compute_loss, model_config, prefix
        self.lockstep = lockstep  # as Evaluator's: a sharded model's forward is a collective

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        device = self.dist.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, correct, answers
        tokens, masks = self.tokens, self.mask
        if self.lockstep:
            n_batches = -(-len(tokens) // self.micro_batch)
            most = int(self.dist.all_max(torch.tensor([n_batches], device=device)).item())
            pad = (most - n_batches) * self.micro_batch
            if pad:  # padding rows with no answers: forwards that count for nothing
                tokens = torch.cat([tokens, torch.zeros(pad, tokens.shape[1], dtype=tokens.dtype)])
                masks = torch.cat([masks, torch.zeros(pad, masks.shape[1], dtype=masks.dtype)])
        model.eval()
        try:
            with torch.no_grad(), self.autocast:
                for i in range(0, len(tokens), self.micro_batch):
                    mask = masks[i : i + self.micro_batch].to(device)
                    batch = Batch(tokens[i : i + self.micro_batch].to(device), mask=mask)
                    out = self.compute_loss(model, batch, self.model_config)
                    guess = model(batch.inputs)[..., : self.vocab_size].argmax(-1)
                    sums[0] += out.nll.double()[mask].sum()
                    sums[1] += (guess == batch.targets)[mask].sum()
                    sums[2] += mask.sum()
        finally:
            model.train()
        self.dist.all_sum(sums)
        p = self.prefix
        return {f"{p}/loss": float(sums[0] / sums[2]), f"{p}/accuracy": float(sums[1] / sums[2]), f"{p}/answers": float(sums[2])}


def describe(evals: dict[str, float], prefix: str) -> str:
    """One evaluation in words: loss and bpb (language modelling) or accuracy (a task)."""
    if f"{prefix}/accuracy" in evals:
        return f"{prefix} loss {evals[f'{prefix}/loss']:.4f} nats/answer | {prefix} accuracy {evals[f'{prefix}/accuracy']:.4f}"
    return f"{prefix} loss {evals[f'{prefix}/loss']:.4f} nats/token | {prefix} bpb {evals[f'{prefix}/bpb']:.4f}"
