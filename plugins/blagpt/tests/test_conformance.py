"""Conformance: blagpt.testing's checks (the kit every model plugin runs) on the blagpt model.

Two targets at the tiny size, on bytes: the `blagpt` technique preset, and plain GPT-2 with two
multi-token-prediction heads (the plugin's own compute_loss).
One test per check; ``blagpt.testing`` documents what each asserts.
"""

from __future__ import annotations

import torch

from blagpt.testing import ModelTarget, parametrize_with_checks

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

TARGETS = [
    ModelTarget("blagpt", config={"preset": "blagpt+tiny", "dropout": 0.0}, tokenizer="bytes"),
    ModelTarget("blagpt", config={"preset": "gpt2+tiny", "n_predict": 2, "dropout": 0.0}, tokenizer="bytes", id="blagpt-gpt2+tiny-mtp2"),
]


@parametrize_with_checks(TARGETS)
def test_conformance(target, check):
    check(target)
