"""Short runs through the core trainer on the embedded corpus."""

import pytest

from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import Registry
from blagpt import train

BASE = [
    "model.name=hourglass", "model.preset=tiny", "train.seq_len=64", "train.micro_batch_size=8",
    "train.log_interval=1", "tracking.enabled=false", "optimizer.lr=3e-3", "train.eval_interval=0",
]


@pytest.fixture
def reg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run folders go under the test's tmp folder
    return Registry.load(only=["hourglass"])


def run(reg, *sets):
    cfg = resolve(merge_sources(sets=[*BASE, *sets]), reg)
    return train(cfg, registry=reg, echo=lambda *a: None)


@pytest.mark.parametrize("hierarchy", ["1@1 2@2 1@1", "1@1 1@2 1@6 1@2 1@1"])
def test_loss_falls_on_embedded_corpus(reg, hierarchy):
    res = run(reg, f"model.hierarchy={hierarchy}", "train.steps=60", "train.eval_tokens=4096")
    losses = [h["train/loss"] for h in res.history if "train/loss" in h]
    assert len(losses) == 60
    first = sum(losses[:3]) / 3
    print(f"{hierarchy}: train loss {first:.3f} -> val loss {res.final['val/loss']:.3f}, bpb {res.final['val/bpb']:.3f}")
    assert res.final["val/loss"] < first - 1.0, (first, res.final)


def test_bytes_and_gpt2_variants_evaluate_the_same_text(reg):
    """bpb of the two tokenizers is comparable: given the same byte budget, the core evaluates
    both on the same validation text, so both count the same bytes (here over sequences whose
    last one is partly padding, which a causal model's real positions never see)."""
    finals = [
        run(reg, f"data.tokenizer={tok}", "train.steps=1", "train.eval_bytes=3000", f"tracking.run_name={tok}").final
        for tok in ("bytes", "gpt2")
    ]
    assert 2900 < finals[0]["val/bytes"] == finals[1]["val/bytes"] <= 3000
    assert finals[0]["val/tokens"] == finals[0]["val/bytes"] > 2 * finals[1]["val/tokens"]  # bytes: 1 token/byte
