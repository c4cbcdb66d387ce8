"""Conformance: blagpt.testing's checks (the kit every model plugin runs) on the zamba2 model.

The tiny preset, on bytes: two shared attention blocks.
One test per check; ``blagpt.testing`` documents what each asserts.
"""

from __future__ import annotations

import torch

from blagpt.testing import ModelTarget, parametrize_with_checks

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

TARGETS = [ModelTarget("zamba2", config={"preset": "tiny"}, tokenizer="bytes")]


@parametrize_with_checks(TARGETS)
def test_conformance(target, check):
    check(target)
