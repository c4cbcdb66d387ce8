"""How long a run trains (its budget) and the learning-rate factor at each step.

A run's budget is one of four, all set in ``train``:

- ``steps``: that many optimizer steps;
- ``tokens``: steps = ceil(tokens / tokens per step);
- ``flops``: steps = ceil(flops / (model FLOPs per token x tokens per step)), from the model's
  ``flops_per_token(seq_len)`` (forward + backward), so models of different cost train on equal
  compute;
- ``time_s``: wall-clock seconds of training steps (evaluation and checkpointing do not count).
  The step count is not known in advance, so the schedule runs on the elapsed fraction of the
  budget instead of the step fraction, as Cramming (Geiping and Goldstein 2022, arXiv 2212.14034)
  does for its one-day budget.

The factor multiplies every param group's peak learning rate: a linear warmup, then cosine,
warmup-stable-decay (linear tail) or constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_WARMUP_FRAC = 0.05


@dataclass(frozen=True)
class Budget:
    """``steps`` when the step count is fixed in advance, else ``time_s`` (a wall-clock budget)."""

    steps: int | None = None
    time_s: float | None = None

    def done(self, step: int, elapsed_s: float) -> bool:
        """Whether a run that has finished ``step`` steps in ``elapsed_s`` seconds is over."""
        if self.steps is not None:
            return step >= self.steps
        return elapsed_s >= float(self.time_s)

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.time_s:g} s of training"


def budget_for(train_cfg, tokens_per_step: int, flops_per_token: float | None) -> Budget:
    """The budget ``train_cfg`` asks for; ``flops_per_token`` is needed only by a FLOP budget."""
    t = train_cfg
    if t.time_s is not None:
        return Budget(time_s=float(t.time_s))
    if t.tokens is not None:
        return Budget(steps=max(1, math.ceil(t.tokens / tokens_per_step)))
    if t.flops is not None:
        if not flops_per_token:
            raise ConfigError(
                "train.flops: this model does not report flops_per_token(seq_len), so a FLOP budget "
                "cannot be turned into steps; use train.steps, train.tokens or train.time_s"
            )
        return Budget(steps=max(1, math.ceil(t.flops / (flops_per_token * tokens_per_step))))
    return Budget(steps=int(t.steps))


def lr_factor(step: int, total: int, cfg) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``: warmup, then decay."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(DEFAULT_WARMUP_FRAC * total)
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(round(cfg.decay_frac * total)))
        start = total - decay_steps
        if step < start:
            return 1.0
        lo = cfg.min_lr_ratio
        return lo + (1 - lo) * (1 - (step - start + 1) / decay_steps)
    return _decay(cfg, min(1.0, (step + 1 - warmup) / span))


def lr_factor_time(step: int, frac: float, cfg) -> float:
    """The factor under a wall-clock budget, ``frac`` being the fraction of it used by the end of
    this step (estimated). Warmup: ``warmup_steps`` steps if set, else the first 5% of the time;
    the decay then runs over the rest of the budget."""
    frac = min(1.0, max(0.0, frac))
    if cfg.warmup_steps is not None:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        warm = 0.0
    else:
        warm = DEFAULT_WARMUP_FRAC
        if frac < warm:
            return frac / warm
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_frac
        if frac < start:
            return 1.0
        lo = cfg.min_lr_ratio
        return lo + (1 - lo) * (1 - (frac - start) / cfg.decay_frac)
    return _decay(cfg, (frac - warm) / (1.0 - warm))


def _decay(cfg, progress: float) -> float:
    """Cosine from 1 to ``min_lr_ratio`` over ``progress`` in [0, 1], or constant 1."""
    if cfg.schedule == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))
