"""Tokenformer's headline workflow end to end through the core trainer: train, grow, continue."""

from __future__ import annotations

import os

import torch

from blagpt.run import checkpoint as ckpt
from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import Registry
from blagpt import train
from blagpt_plugin_blagpt import grow_parameter_tokens

BASE = [
    "model.name=blagpt", "model.preset=tokenformer+tiny", "data.tokenizer=bytes", "train.seq_len=32",
    "train.micro_batch_size=4", "train.eval_tokens=1024", "train.log_interval=1", "tracking.enabled=false",
]


def test_train_grow_and_continue_with_init_from(tmp_path):
    os.chdir(tmp_path)
    reg = Registry.load(only=["blagpt"])
    small = resolve(merge_sources(sets=[*BASE, "train.steps=8", "tracking.run_name=small"]), reg)
    first = train(small, registry=reg, echo=lambda *a: None)
    attn, mlp = small.model.attn_tokens, small.model.mlp_tokens
    state = ckpt.load(first.run_dir / "checkpoint.pt")["model"]
    torch.save(grow_parameter_tokens(state, attn_param_tokens=2 * attn, mlp_param_tokens=2 * mlp), tmp_path / "grown.pt")
    grown_sets = [*BASE, f"model.attn_param_tokens={2 * attn}", f"model.mlp_param_tokens={2 * mlp}", "train.init_from=grown.pt"]
    # same data, same step-0 learning rate: the grown run starts where the small one ended
    probe = resolve(merge_sources(sets=[*grown_sets, "train.steps=1", "optimizer.lr=1e-12", "tracking.run_name=probe"]), reg)
    again = train(probe, registry=reg, echo=lambda *a: None)
    same = resolve(merge_sources(sets=[*BASE, "train.steps=1", "optimizer.lr=1e-12", "tracking.run_name=same", "train.init_from=runs/small"]), reg)
    ref = train(same, registry=reg, echo=lambda *a: None)
    assert abs(again.history[0]["train/loss"] - ref.history[0]["train/loss"]) < 1e-4
    more = resolve(merge_sources(sets=[*grown_sets, "train.steps=8", "tracking.run_name=grown"]), reg)
    cont = train(more, registry=reg, echo=lambda *a: None)
    n_grown = sum(v.numel() for v in ckpt.load(cont.run_dir / "checkpoint.pt")["model"].values())
    assert n_grown > sum(v.numel() for v in state.values())
    assert cont.final["val/loss"] < first.history[0]["train/loss"]
