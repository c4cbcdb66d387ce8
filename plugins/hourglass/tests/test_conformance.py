"""Conformance: blagpt.testing's checks (the kit every model plugin runs) on the hourglass model.

The tiny preset (one 2x shortening), on bytes, dropout off.
One test per check; ``blagpt.testing`` documents what each asserts.
"""

from __future__ import annotations

import torch

from blagpt.testing import ModelTarget, parametrize_with_checks

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

TARGETS = [ModelTarget("hourglass", config={"preset": "tiny", "dropout": 0.0}, tokenizer="bytes")]


@parametrize_with_checks(
    TARGETS,
    expected_failures={"cached_decoding": "no incremental decoding yet: the shortened (pooled) levels would need caches that advance once per pooled group"},
)
def test_conformance(target, check):
    check(target)
