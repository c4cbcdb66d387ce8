"""Continuing a run: its folder, its checkpoint (loaded once) and the config it may continue with.

A resumed run keeps its config. Only what does not change what is being trained may differ: the
budget (``train.steps``/``tokens``/``flops``/``time_s``; a new budget replaces the old one), the
evaluation, logging and checkpoint intervals, ``train.device``, ``train.compile``,
``train.out_dir``, ``train.activation_checkpointing``, ``train.peak_flops`` and ``tracking.*``. Anything else (``--set model.n_layers=3``) is refused in one
line naming every field that differs. A run killed before its first checkpoint has no state to
resume: it starts again from step 0 with the config saved in its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ..config import BUDGETS, RunConfig, merge_sources, replace_budget, resolve
from ..errors import BlagptError, ConfigError
from .rundir import RunDir

if TYPE_CHECKING:
    from ..plugin.registry import Registry

RESUMABLE = (
    "train.steps", "train.tokens", "train.flops", "train.time_s", "train.eval_interval", "train.log_interval",
    "train.checkpoint_interval", "train.compile", "train.device", "train.out_dir", "train.activation_checkpointing",
    "train.peak_flops", "tracking.",
)


@dataclass
class Resume:
    """A run to continue.

    Attributes:
        run: its folder.
        state: its checkpoint, or ``None`` when it stopped before writing one.
        saved: the config it trained with (the checkpoint's, else the folder's ``config.yaml``).
    """

    run: RunDir
    state: dict[str, Any] | None
    saved: dict[str, Any]

    @classmethod
    def open(cls, ref: str, out_dir: str, option: str = "--resume") -> "Resume":
        run = RunDir.find(ref, out_dir, option)
        if run.kind != "train":
            raise BlagptError(f"{option} {ref}: {run.path} is a {run.kind}'s folder, not a training run; rerun the {run.kind} command to resume it")
        if run.has_checkpoint:
            state = run.load_checkpoint()
            return cls(run, state, state["config"])
        if run.config_file.is_file():
            return cls(run, None, yaml.safe_load(run.config_file.read_text()) or {})
        raise BlagptError(f"{option} {ref}: {run.path} holds neither a checkpoint nor a config.yaml to start it again from")

    @property
    def step(self) -> int:
        return int(self.state["step"]) if self.state is not None else 0

    def config(self, sets: list[str] | tuple[str, ...], registry: "Registry") -> RunConfig:
        """The saved config with ``sets`` on top; a change outside :data:`RESUMABLE` is a ConfigError."""
        where = f"--resume {self.run.name}"
        try:
            saved = resolve(self.saved, registry)
        except ConfigError as e:
            raise ConfigError(f"{where}: the run's saved config does not resolve with the installed plugins: {e}") from None
        raw = self.saved
        for item in sets:
            if item.split("=", 1)[0].strip() in {f"train.{b}" for b in BUDGETS}:
                raw = replace_budget(raw, item)
        cfg = resolve(merge_sources(sets=sets, base=raw), registry)
        before, after = saved.flat(), cfg.flat()
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k) and not k.startswith(RESUMABLE)]
        if changed:
            diffs = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:8])
            raise ConfigError(
                f"{where}: a resumed run keeps its config, but {diffs} differ; only the budget, the eval/log/checkpoint "
                "intervals, train.device, train.compile, train.activation_checkpointing, train.peak_flops and tracking.* may change (start a new run for the rest)"
            )
        return cfg


def resume_config(ref: str, out_dir: str, sets: list[str] | tuple[str, ...], registry: "Registry") -> RunConfig:
    """The config run ``ref`` continues with (see :meth:`Resume.config`)."""
    return Resume.open(ref, out_dir).config(sets, registry)
