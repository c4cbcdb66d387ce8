"""Noticing a diverged run without a host sync per step.

The trainer hands every step's loss and gradient norm to a :class:`FiniteWatch`, which records on
the device the first step where either is NaN or infinite. The host reads that record only at
steps that read something back anyway (logging, evaluation, checkpoints), and always before a
checkpoint is written, so a poisoned model is never saved and the error names the step where the
run went wrong, not the step where it was noticed.
"""

from __future__ import annotations

import math

import torch

from ..errors import BlagptError
from .distributed import Dist


class TrainingDiverged(BlagptError):
    """The loss or the gradient norm became NaN or infinite."""


class FiniteWatch:
    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self.first_bad = torch.zeros((), dtype=torch.int64, device=dist.device)
        self.values = torch.zeros(2, dtype=torch.float32, device=dist.device)  # loss, gradient norm there

    def see(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Record ``step`` if its loss or gradient norm is not finite and none was before (on the device)."""
        gn = grad_norm.detach().float() if grad_norm is not None else torch.zeros((), device=loss.device)
        bad = ~(torch.isfinite(loss) & torch.isfinite(gn)) & (self.first_bad == 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.values = torch.where(bad, torch.stack([loss.float(), gn]), self.values)

    def check(self, kept: str) -> None:
        """Raise :class:`TrainingDiverged` if any rank saw a non-finite step; ``kept`` says what
        checkpoint the run keeps. A collective: every rank calls it at the same steps."""
        step = int(self.dist.all_max(self.first_bad.clone()))
        if not step:
            return
        if int(self.first_bad) == 0:
            what, value = "loss or gradient norm", "not finite on another rank"
        else:
            loss, gn = (float(v) for v in self.values)
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", gn)
        raise TrainingDiverged(f"{what} is {value} at step {step}; stopped, {kept}")
