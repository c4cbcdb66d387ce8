"""Conformance: blagpt.testing's checks (the kit every model plugin runs) on the megabyte model.

The tiny preset (patches of 4 bytes), dropout off.
One test per check; ``blagpt.testing`` documents what each asserts.
"""

from __future__ import annotations

import torch

from blagpt.testing import ModelTarget, parametrize_with_checks

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

TARGETS = [ModelTarget("megabyte", config={"preset": "tiny", "dropout": 0.0}, tokenizer="bytes")]


@parametrize_with_checks(
    TARGETS,
    expected_failures={"cached_decoding": "no incremental decoding yet: a new byte would need the global model's patch cache and the local model's per-patch state"},
)
def test_conformance(target, check):
    check(target)
