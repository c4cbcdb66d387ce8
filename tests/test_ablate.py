"""``blagpt ablate``: deltas against the right reference, the noise band, greedy keeping; the
statistics checked against hand computations."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from blagpt.compare.ablate import Step, parse_try
from blagpt.compare.plan import Entry, parse_budget, parse_models, with_budget
from blagpt.errors import ConfigError
from blagpt.compare.leaderboard import diff_band, welch_p_less, welch_t

from conftest import BENCH_BASE, run_cli


def test_welch_test_against_a_hand_computation():
    # a = [1, 3], b = [2, 4]: variances 2 and 2, se^2 = 2/2 + 2/2 = 2, t = (2 - 3) / sqrt(2),
    # df = 2^2 / (1^2 / 1 + 1^2 / 1) = 2. Student's t with 2 degrees of freedom has the closed-form
    # CDF F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    t, df = welch_t([1.0, 3.0], [2.0, 4.0])
    assert t == pytest.approx(-1 / math.sqrt(2)) and df == pytest.approx(2.0)
    assert welch_p_less([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)
    # unequal variances and sizes: a = [1, 2, 3] (var 1), b = [5, 9] (var 8); se^2 = 1/3 + 4 = 13/3,
    # df = (13/3)^2 / ((1/3)^2 / 2 + 4^2 / 1)
    t, df = welch_t([1.0, 2.0, 3.0], [5.0, 9.0])
    assert t == pytest.approx(-5 / math.sqrt(13 / 3))
    assert df == pytest.approx((13 / 3) ** 2 / ((1 / 9) / 2 + 16))
    # better by far -> p near 0; worse -> p near 1; one seed -> no test
    assert welch_p_less([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) < 1e-3
    assert welch_p_less([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) > 1 - 1e-3
    assert welch_p_less([1.0], [2.0, 2.1]) is None


def test_noise_band_is_the_welch_95_interval_or_the_given_noise():
    # df = 2 (as above): the 97.5% quantile of t(2) is 4.302652729911275
    assert diff_band([1.0, 3.0], [2.0, 4.0]) == pytest.approx(4.302652729911275 * math.sqrt(2))
    e = Entry("x", "m")
    helps = Step("c", e, e, [1.0, 1.01], [2.0, 2.01], None)
    assert helps.delta == pytest.approx(-1.0) and helps.verdict == "helps"
    within = Step("c", e, e, [1.0, 1.5], [1.1, 1.6], None)
    assert within.verdict == "within noise"
    one_seed = Step("c", e, e, [1.0], [1.1], None)
    assert one_seed.band is None and one_seed.verdict == "no noise estimate (1 seed)"
    given = Step("c", e, e, [1.0], [1.1], 0.05)
    assert given.band == 0.05 and given.verdict == "helps"
    assert Step("c", e, e, [1.2], [1.1], 0.05).verdict == "hurts"


def test_argument_parsing():
    assert parse_budget("tokens=2M") == "train.tokens=2000000"
    assert parse_budget("flops=1.5e15") == "train.flops=1500000000000000.0"
    assert parse_budget("time=10m") == "train.time_s=600.0"
    assert parse_budget("time=90") == "train.time_s=90.0"
    assert parse_budget("steps=1k") == "train.steps=1000"
    for bad, msg in (("tokens", "expected tokens=N"), ("epochs=3", "expected tokens=N"), ("tokens=abc", "is not a number"),
                     ("time=-1s", "must be a positive, finite number"), ("time=inf", "must be a positive, finite number")):
        with pytest.raises(ConfigError, match=f"--budget .*{msg}"):
            parse_budget(bad)
    entries = parse_models("blagpt@gpt2+tiny,rene", ["adamw", "soap"])
    assert [e.label for e in entries] == ["blagpt@gpt2+tiny/adamw", "blagpt@gpt2+tiny/soap", "rene/adamw", "rene/soap"]
    assert entries[0].sets == ("model.preset=gpt2+tiny",) and entries[3].optimizer == "soap"
    with pytest.raises(ConfigError, match="listed twice"):
        parse_models("a,a", ["adamw"])
    assert parse_try("model.a=1; train.b=x") == ("model.a=1", "train.b=x")
    with pytest.raises(ConfigError, match="--try 'nonsense'"):
        parse_try("nonsense")
    raw = with_budget({"train": {"steps": 5, "seq_len": 8}}, "train.tokens=100")
    assert raw == {"train": {"seq_len": 8, "tokens": 100}}


def test_greedy_without_a_noise_estimate_is_refused(workdir):
    proc = run_cli(["ablate", "--model", "tinylm", "--greedy", "--try", "model.n_layers=1", "--no-track", *BENCH_BASE], cwd=workdir)
    assert proc.returncode == 2 and "--greedy: needs --seeds 2 or more" in proc.stderr
    assert not (workdir / "runs").exists()


def _bpb(run_dirs):
    out = []
    for d in run_dirs:
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        out.append([r["value"] for r in rows if r["key"] == "val/bpb"][-1])
    return out


@pytest.mark.slow
def test_greedy_keeps_what_helps_beyond_the_noise_and_measures_the_next_on_top(workdir):
    args = ["ablate", "--model", "tinylm", "--greedy", "--seeds", "2", "--budget", "steps=6", "--no-track", "--name", "a1",
            *BENCH_BASE, "--set", "optimizer.lr=1e-5",
            "--try", "optimizer.lr=3e-3",                       # helps a lot
            "--try", "model.n_layers=1;optimizer.lr=1e-6"]      # on top of the kept change: hurts
    proc = run_cli(args, cwd=workdir, check=0)
    assert "kept: optimizer.lr=3e-3" in proc.stdout
    folder = workdir / "runs" / "a1"
    table = (folder / "ablation.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| optimizer") or ln.startswith("| model")]
    assert len(rows) == 2
    first, second = ([c.strip() for c in r.strip("|").split("|")] for r in rows)
    assert first[1] == "base" and first[-2] == "helps" and first[-1] == "yes"
    assert second[1] == "optimizer.lr=3e-3" and second[-2] == "hurts" and second[-1] == "no"

    # the numbers, by hand from the runs' own records: base, the kept change, the change on top
    with open(folder / "leaderboard.csv") as f:
        board = {r["entry"]: r for r in csv.DictReader(f)}
    configs = {p.stem: p.read_text() for p in (folder / "configs").glob("*.yaml")}
    def runs_with(*needles):
        return sorted(folder / n for n, text in configs.items() if all(x in text for x in needles))
    base = _bpb(runs_with("lr: 1.0e-05", "n_layers: 2"))
    kept = _bpb(runs_with("lr: 0.003", "n_layers: 2"))
    on_top = _bpb(runs_with("lr: 1.0e-06", "n_layers: 1"))
    assert len(base) == len(kept) == len(on_top) == 2
    assert float(board["base"]["val_bpb_mean"]) == statistics.fmean(base)
    delta = statistics.fmean(kept) - statistics.fmean(base)
    assert first[4] == f"{delta:+.4f}" and first[5] == f"±{diff_band(kept, base):.4f}"
    delta2 = statistics.fmean(on_top) - statistics.fmean(kept)
    assert second[4] == f"{delta2:+.4f}" and second[5] == f"±{diff_band(on_top, kept):.4f}"
    # 3 configs x 2 seeds were trained, the kept one reused as the next reference
    assert len(configs) == 6
