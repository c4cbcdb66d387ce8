"""Generated tasks (MQAR): the generator, the answer mask, the evaluator at answer positions,
tasks registered by plugins, and training and benching under a task."""

from __future__ import annotations

import csv
import json
import math
import os
from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from blagpt.data.mqar import MQAR, MQARConfig
from blagpt.errors import ConfigError
from blagpt.plugin.specs import Batch, LossOutput
from blagpt.run.distributed import Dist
from blagpt.run.evaluator import TaskEvaluator, masked_mean

from conftest import fake_plugin, run_cli

SEQ = 48
CFG = dict(n_pairs=6, n_queries=4, vocab_size=40, n_train=64, n_test=200, seed=3)


def mqar(**over) -> MQAR:
    return MQAR(MQARConfig(**{**CFG, **over}))


def test_generator_is_deterministic_and_splits_differ():
    a, b = mqar().sequences("test", SEQ), mqar().sequences("test", SEQ)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert a.tokens.shape == (200, SEQ + 1) and a.tokens.dtype == torch.int64 and a.mask.shape == (200, SEQ)
    tune, train = mqar().sequences("tune", SEQ), mqar().sequences("train", SEQ)
    other_seed = mqar(seed=4).sequences("test", SEQ)
    assert not torch.equal(tune.tokens, a.tokens) and not torch.equal(other_seed.tokens, a.tokens)
    assert train.tokens.shape[0] == 64
    assert (a.mask.sum(1) == 4).all()  # n_queries answers per sequence


def test_every_answer_is_the_value_of_its_key_seen_earlier():
    s = mqar().sequences("test", SEQ)
    half = CFG["vocab_size"] // 2
    for row, mask in zip(s.tokens.tolist(), s.mask.tolist()):
        pairs = {row[i]: row[i + 1] for i in range(0, 2 * CFG["n_pairs"], 2)}
        assert len(pairs) == CFG["n_pairs"] and all(0 < k < half <= v < CFG["vocab_size"] for k, v in pairs.items())
        answers = [t for t, m in enumerate(mask) if m]
        for t in answers:
            key, answer = row[t], row[t + 1]
            first = row.index(key)
            assert first < t and first % 2 == 0 and first < 2 * CFG["n_pairs"]  # the key (and its value) come before the query
            assert first + 1 < t + 1 and row[first + 1] == answer == pairs[key]
        assert len({row[t] for t in answers}) == len(answers)  # distinct keys asked


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_queries"):
        MQARConfig(n_pairs=4, n_queries=5)
    with pytest.raises(ValueError, match="vocab_size"):
        MQARConfig(n_pairs=20, vocab_size=32)
    with pytest.raises(ValueError, match="task.n_pairs.*train.seq_len"):
        mqar(n_pairs=20, n_queries=20, vocab_size=64).sequences("test", 40)


class Oracle(nn.Module):
    """Hand-written causal attention that copies: position t attends to every earlier position s
    holding the same token (one-hot query and key) and reads out the token at s + 1 <= t."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = F.one_hot(idx, self.vocab).float()  # (B, T, V)
        nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)  # the token after each position
        scores = 50.0 * (x @ x.transpose(1, 2))  # (B, t, s): same token
        earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # s < t only, so s + 1 <= t: causal
        scores = scores.masked_fill(~earlier, -1e9)
        attn = torch.softmax(scores, dim=-1) * earlier
        return 30.0 * attn @ nxt + self.dummy


class Unigram(nn.Module):
    """The same logits at every position (log frequencies fitted on the training answers)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, -1)


def default_loss(model, batch, config=None):
    logits = model(batch.inputs)
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none").view_as(batch.targets)
    return LossOutput(nll.mean(), nll)


def evaluate(model, seqs) -> dict[str, float]:
    ev = TaskEvaluator(seqs.tokens, seqs.mask, CFG["vocab_size"], 64, Dist(), nullcontext(), default_loss, None)
    return ev(model)


def test_oracle_reaches_full_accuracy_and_unigram_stays_at_chance():
    test = mqar().sequences("test", SEQ)
    ev = evaluate(Oracle(CFG["vocab_size"]), test)
    assert ev["val/accuracy"] == 1.0 and ev["val/answers"] == 200 * 4 and ev["val/loss"] < 1e-3
    train = mqar(n_train=4000).sequences("train", SEQ)
    answers = train.tokens[:, 1:][train.mask]
    counts = torch.bincount(answers, minlength=CFG["vocab_size"]).float()
    ev = evaluate(Unigram(torch.log(counts + 1e-3)), test)
    n_values = CFG["vocab_size"] - CFG["vocab_size"] // 2
    assert ev["val/accuracy"] < 3 / n_values  # chance is 1/20; the test set has 800 answers
    assert abs(ev["val/loss"] - math.log(n_values)) < 0.15


def test_the_mask_excludes_non_answer_positions():
    test = mqar().sequences("test", SEQ)
    fitted = Unigram(torch.randn(CFG["vocab_size"], generator=torch.Generator().manual_seed(0)))
    before = evaluate(fitted, test)
    corrupt = test.tokens.clone()
    targets = corrupt[:, 1:]
    targets[~test.mask] = torch.randint(0, CFG["vocab_size"], (int((~test.mask).sum()),), generator=torch.Generator().manual_seed(1))
    after = evaluate(fitted, type(test)(corrupt, test.mask))
    assert after == before  # the unigram's outputs ignore the inputs: only targets changed
    targets[test.mask] = (targets[test.mask] + 1) % CFG["vocab_size"]  # now the answers themselves
    assert evaluate(fitted, type(test)(corrupt, test.mask))["val/loss"] != before["val/loss"]
    nll = torch.rand(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 2] = True
    changed = nll.clone()
    changed[~mask] = 1e6
    assert torch.equal(masked_mean(changed, mask), masked_mean(nll, mask)) and torch.isclose(masked_mean(nll, mask), nll[:, 2].mean())


TASK_PLUGIN = '''
import torch
from pydantic import Field
from blagpt import Task, TaskConfig, TaskSequences, TaskSpec, hookimpl

class CopyFirstConfig(TaskConfig):
    name: str = "copyfirst"
    vocab_size: int = Field(default=16, ge=3)
    seed: int = 0

class CopyFirst(Task):
    """Repeat the first token at the end: the answer is the last target."""
    def __init__(self, cfg):
        self.cfg, self.vocab_size = cfg, cfg.vocab_size
    def sequences(self, split, seq_len):
        g = torch.Generator().manual_seed(self.cfg.seed * 3 + {"train": 0, "test": 1, "tune": 2}[split])
        n = 256 if split == "train" else 32
        tokens = torch.randint(1, self.vocab_size, (n, seq_len + 1), generator=g)
        tokens[:, -1] = tokens[:, 0]
        mask = torch.zeros(n, seq_len, dtype=torch.bool)
        mask[:, -1] = True
        return TaskSequences(tokens, mask)

@hookimpl
def register_tasks(register):
    register(TaskSpec("copyfirst", CopyFirstConfig, "copy the first token to the end", build=CopyFirst))
'''


def test_a_task_registered_by_a_plugin_trains_end_to_end(workdir):
    fake_plugin(workdir / "site", "copyfirst-task", "copyfirst_task", TASK_PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join([str(workdir / "site"), os.environ.get("PYTHONPATH", "")])}
    plugins = ("tinylm", "copyfirst_task")
    listed = run_cli(["list"], env=env, plugins=plugins, check=0)
    assert "copyfirst" in listed.stdout and "mqar" in listed.stdout
    bad = run_cli(["train", "--model", "tinylm", "--task", "copyfirst", "--set", "task.n_pairs=3", "--no-track"], env=env, plugins=plugins)
    assert bad.returncode != 0 and "task.n_pairs: unknown field" in bad.stderr and "vocab_size" in bad.stderr
    args = ["train", "--model", "tinylm", "--task", "copyfirst", "--set", "model.d_model=32", "--set", "model.n_layers=1",
            "--set", "train.seq_len=8", "--set", "train.steps=6", "--set", "train.checkpoint_interval=3", "--set", "train.eval_interval=3",
            "--set", "tracking.run_name=copy", "--no-track"]
    first = run_cli([*args, "--until-step", "3"], env=env, plugins=plugins, check=0)
    assert "val accuracy" in first.stdout
    resumed = run_cli(["train", "--resume", "copy", "--no-track"], env=env, plugins=plugins, check=0)
    assert "resumed at step 3" in resumed.stdout and "final: val loss" in resumed.stdout and "nats/answer" in resumed.stdout
    rows = [json.loads(ln) for ln in (workdir / "runs" / "copy" / "metrics.jsonl").read_text().splitlines()]
    keys = {r["key"] for r in rows}
    assert {"val/loss", "val/accuracy", "train/loss"} <= keys and "val/bpb" not in keys
    assert sorted(r["step"] for r in rows if r["key"] == "val/accuracy") == [3, 6]
    meta = json.loads((workdir / "runs" / "copy" / "run.json").read_text())
    assert meta["params"]["task.name"] == "copyfirst" and meta["params"]["tokenizer"] == "task:copyfirst"
    assert [d["name"] for d in meta["inputs"]] == ["task-copyfirst/train", "task-copyfirst/test"]
    for cmd in (["sample", "--run", "copy"], ["export", "--run", "copy", "--out", "x"]):  # no text to sample or export
        refused = run_cli(cmd, env=env, plugins=plugins)
        assert refused.returncode == 1 and "trained on task 'copyfirst', not on text" in refused.stderr, refused.stderr


def test_task_runs_refuse_shard_data(workdir):
    from blagpt.config import merge_sources, resolve
    from blagpt.plugin.registry import Registry

    reg = Registry.load(only=["tinylm"])
    with pytest.raises(ConfigError, match="data.tokenizer: task 'mqar' generates"):
        resolve(merge_sources(sets=["model.name=tinylm", "task.name=mqar", "data.tokenizer=bytes"]), reg)
    with pytest.raises(ConfigError, match="task.name: unknown task 'nope'"):
        resolve(merge_sources(sets=["model.name=tinylm", "task.name=nope"]), reg)
    cfg = resolve(merge_sources(sets=["model.name=tinylm", "task.name=mqar", "task.n_pairs=4"]), reg)
    assert cfg.task.n_pairs == 4 and cfg.task.queries == 4 and cfg.on_task
    assert resolve(merge_sources(sets=["model.name=tinylm"]), reg).task.name == "lm"


def test_accuracy_ranks_and_tunes_higher_is_better():
    from blagpt.compare.leaderboard import ACCURACY, RunData, columns, summarize, terminal_table
    from blagpt.compare.tune import Grid, choose

    def run(entry, seed, acc, slice_name="val"):
        return RunData(name=f"{entry}.s{seed}", entry=entry, seed=seed, status="FINISHED", params={"task.name": "mqar", "state_size_bytes": "64"},
                       evals=[{"step": 10, f"{slice_name}/accuracy": acc, f"{slice_name}/loss": 1.0}])

    runs = [run("weak", s, 0.2 + 0.01 * s) for s in range(3)] + [run("strong", s, 0.9 + 0.01 * s) for s in range(3)]
    stats = summarize(runs, ["weak", "strong"], score=ACCURACY)
    assert [e.label for e in stats] == ["strong", "weak"] and stats[0].p_value < 0.01  # better = higher, and significant
    assert stats[0].state_size_bytes == 64
    table = terminal_table(stats)
    assert "val accuracy" in table and "val bpb" not in table and "val accuracy" in columns(ACCURACY)
    grid = Grid.parse(["optimizer.lr=1e-3,3e-3"])
    (p1,), (p2,) = grid.points()
    c = choose("e", grid, {(p1,): run("e", 0, 0.4, "tune"), (p2,): run("e", 0, 0.7, "tune")}, ACCURACY)
    assert c.best == (p2,)  # the highest tuning accuracy; val accuracy is never read


def test_bench_on_a_task_with_a_sweep(workdir):
    base = ["--set", "train.seq_len=16", "--set", "train.micro_batch_size=8", "--set", "train.eval_interval=2", "--set", "task.vocab_size=24",
            "--set", "task.n_train=64", "--set", "task.n_test=16", "--set", "model.n_layers=1", "--no-track"]
    proc = run_cli(["bench", "--task", "mqar", "--models", "tinylm,tinylm@wide", "--budget", "steps=2", "--sweep", "task.n_pairs=2,3",
                    "--name", "b", *base], check=0)
    assert "val accuracy" in proc.stdout and "val bpb" not in proc.stdout
    rows = list(csv.DictReader((workdir / "runs" / "b" / "leaderboard.csv").open()))
    assert sorted(r["entry"] for r in rows) == ["tinylm n_pairs=2", "tinylm n_pairs=3", "tinylm@wide n_pairs=2", "tinylm@wide n_pairs=3"]
    assert all(0.0 <= float(r["val_accuracy_mean"]) <= 1.0 and r["seeds_ok"] == "1" for r in rows)
    state = {r["entry"]: float(r["state_size_bytes"]) for r in rows}
    assert state["tinylm n_pairs=2"] == 2 * 1 * 16 * 64 * 4 and state["tinylm@wide n_pairs=3"] == 2 * 1 * 16 * 128 * 4  # KV caches
    sweep = (workdir / "runs" / "b" / "sweep.md").read_text()
    assert "| tinylm | " in sweep and "n_pairs=3" in sweep
    for png in ("sweep_task.n_pairs.png", "sweep_state.png", "accuracy_vs_tokens.png"):
        assert (workdir / "runs" / "b" / png).stat().st_size > 1000
    configs = sorted((workdir / "runs" / "b" / "configs").glob("*.yaml"))
    assert len(configs) == 4 and all("n_pairs" in c.read_text() for c in configs)
