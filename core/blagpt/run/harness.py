"""A trained run as a model of EleutherAI's lm-evaluation-harness (``blagpt eval --tasks``).

:class:`BlagptLM` implements the harness's model interface (``lm_eval.api.model.LM``, through its
``TemplateLM``, which splits context and continuation tokens as the harness's own Hugging Face
model does: ``encode(context + continuation)`` cut after ``len(encode(context))`` ids, trailing
spaces of the context moved to the continuation, an empty context replaced by end-of-text):

- ``loglikelihood``: the summed log-probability of the continuation's ids given the context, and
  whether greedy decoding would produce exactly them. Inputs longer than the model's context
  (the run's ``train.seq_len``) keep their last ``seq_len + 1`` ids (truncated on the left).
  Requests are scored in batches of similar length, right-padded (the model is causal, so padding
  after a sequence cannot change its outputs).
- ``loglikelihood_rolling``: a document's whole log-likelihood in disjoint windows of
  ``seq_len`` predicted ids, each with as much context as fits (the harness's own
  ``get_rolling_token_windows``: every id predicted once; the last window full-length).
- ``generate_until``: :func:`~.sample.generate` (greedy unless the task asks to sample), stopped at
  end-of-text, ``max_gen_toks`` or the first stop string, which is cut off.

Log-probabilities are the log-softmax of the model's ``forward`` logits over all its outputs, the
distribution validation's cross-entropy scores; greedy picks among real ids only.

lm-eval is an optional extra (``pip install 'blagpt[lm-eval]'``), imported only here and only by
``blagpt eval --tasks``.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import BlagptError, ConfigError

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ModuleNotFoundError as e:  # pragma: no cover - the extra is in the test environment
    raise ConfigError(f"--tasks: EleutherAI's lm-evaluation-harness is not installed (no module {e.name!r}); "
                      "install it with: pip install 'blagpt[lm-eval]'") from None

log = logging.getLogger("blagpt.eval")
GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k"}


class BlagptLM(TemplateLM):
    """The harness's model interface on a :class:`~.sample.LoadedRun`."""

    def __init__(self, run, batch_size: int = 8, max_gen_toks: int = 256, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size}")
        self.run, self.tok, self.model = run, run.tokenizer, run.model
        self._batch_size, self._max_gen_toks, self.seed = batch_size, max_gen_toks, seed
        self._device = run.device
        self._ignored: set[str] = set()

    # -- what the harness asks of a model ----------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot

    @property
    def max_length(self) -> int:
        return self.run.context

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(list(tokens))

    # -- scoring -----------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: (key, context ids, continuation ids) as ``TemplateLM.loglikelihood`` makes them."""
        return self.score([(ctx, cont) for _, ctx, cont in requests], "loglikelihood", disable_tqdm)

    def score(self, pairs: list[tuple[list[int], list[int]]], what: str = "loglikelihood", quiet: bool = True) -> list[tuple[float, bool]]:
        """(log-likelihood of ``cont`` after ``ctx``, whether greedy decoding gives ``cont``) of each pair."""
        from tqdm import tqdm

        L, V = self.max_length, self.tok.vocab_size
        windows = []
        for ctx, cont in pairs:
            if not cont:
                raise BlagptError("lm-eval asked for the log-likelihood of an empty continuation")
            if len(cont) > L:
                raise BlagptError(f"lm-eval asked to score a continuation of {len(cont)} tokens; this model's context is {L} (train.seq_len)")
            if not ctx:
                raise BlagptError("lm-eval gave a request without context ids")
            whole = (list(ctx) + list(cont))[-(L + 1):]  # truncated on the left to what the model can see
            windows.append((whole[:-1], list(cont)))
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        out: list[tuple[float, bool] | None] = [None] * len(windows)
        autocast = torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self.run.autocast_bf16)
        self.model.eval()
        bar = tqdm(total=len(windows), desc=what, unit="seq", disable=quiet or None, leave=False)  # None: only on a terminal
        for b in range(0, len(order), self._batch_size):
            idx = order[b : b + self._batch_size]
            width = len(windows[idx[0]][0])
            x = torch.full((len(idx), width), self.tok.eot, dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, : len(windows[i][0])] = torch.tensor(windows[i][0], dtype=torch.long)
            with torch.no_grad(), autocast:
                logits = self.model(x.to(self._device))
            if logits.dim() != 3 or logits.shape[:2] != x.shape or logits.shape[-1] < V:
                raise BlagptError(f"model returned logits of shape {tuple(logits.shape)}; expected ({len(idx)}, {width}, >= {V})")
            for r, i in enumerate(idx):
                inp, cont = windows[i]
                n, k = len(inp), len(cont)
                logp = torch.log_softmax(logits[r, n - k : n].float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                ll = float(logp.gather(-1, target[:, None]).sum())
                if not math.isfinite(ll):
                    raise BlagptError("model returned non-finite log-probabilities")
                out[i] = (ll, bool((logp[:, :V].argmax(-1) == target).all()))
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        per_doc, pairs = [], []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
            per_doc.append(len(windows))
            pairs += windows
        scores = self.score(pairs, "loglikelihood_rolling", disable_tqdm)
        out, at = [], 0
        for n in per_doc:
            out.append(sum(ll for ll, _ in scores[at : at + n]))
            at += n
        return out

    # -- generation --------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        from .sample import StreamDecoder, generate

        out = []
        gen = torch.Generator(device=self._device).manual_seed(self.seed)
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm or None, leave=False):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            for k in set(kwargs) - GEN_KWARGS - self._ignored:
                log.warning("lm-eval generation option %r is not supported by blagpt; ignored", k)
                self._ignored.add(k)
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self._max_gen_toks))
            sample = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 1.0)) > 0
            ids = (self.tok_encode(context) if context else [self.tok.eot])[-self.max_length :]
            decoder, text = StreamDecoder(self.tok), ""
            for nxt in generate(self.model, ids, max_new, context=self.max_length, vocab_size=self.tok.vocab_size,
                                eot=self.tok.eot, temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
                                top_k=kwargs.get("top_k") if sample else None, generator=gen, device=self._device,
                                autocast_bf16=self.run.autocast_bf16):
                text += decoder.feed([nxt])
                if any(s and s in text for s in until):
                    break
            text += decoder.flush()
            cuts = [text.index(s) for s in until if s and s in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def run_tasks(lm: BlagptLM, tasks: list[str], num_fewshot: int | None = None, limit: float | None = None,
              include_path: str | None = None, bootstrap_iters: int = 100000, seed: int = 0,
              log_samples: bool = False) -> dict[str, Any]:
    """Evaluate ``lm`` on the harness's ``tasks`` (names or globs; ``include_path``: a folder of
    more task YAML files); returns the harness's results dict."""
    from lm_eval import simple_evaluate

    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path: {include_path} is not a folder of lm-eval task YAML files")
    manager = task_manager(str(Path(include_path).resolve()) if include_path is not None else None)
    names: list[str] = []
    for t in tasks:
        found = manager.match_tasks([t])
        if not found:
            raise ConfigError(f"--tasks: no lm-eval task, group or tag named {t!r} (list them with: lm-eval ls tasks)")
        names += [n for n in found if n not in names]
    return simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           bootstrap_iters=bootstrap_iters, log_samples=log_samples, random_seed=seed,
                           numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """The harness's index of its tasks (and those under ``include_path``): built once per process
    (it reads every task YAML the harness ships, seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The harness's numeric results as metric names ``lm_eval/<task>/<metric>`` (a filter other than
    ``none`` becomes a suffix: ``exact_match_strict-match``)."""
    out = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, comma, filt = key.partition(",")  # "acc,none": a metric and its filter; "alias", "sample_len": not metrics
            if not comma or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            out[f"lm_eval/{_clean(task)}/{_clean(name)}"] = float(value)
    return out


def _clean(part: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in part)


def version() -> str:
    return getattr(lm_eval, "__version__", "?")
