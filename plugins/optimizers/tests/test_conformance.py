"""Conformance: blagpt.testing's optimizer checks on soap, ademamix, adopt and muon, each training
the kit's probe model (embedding, hidden matrices, a 3-D convolution weight, vectors, an untied
head). One test per check; ``blagpt.testing`` documents what each asserts.

SOAP refreshes its eigenbasis every 2 steps and AdEMAMix warms up over 4, so that the steps after
a resume (step 3 of 6) exercise both. All four declare ``supports_compile``: heavyball compiles
their kernels when the run compiles (on a CPU in inductor's ``default`` mode: SOAP's compile check
takes about 70 s cold, and the other three reuse most of its kernels).
"""

from __future__ import annotations

import torch

from blagpt.testing import OptimizerTarget, parametrize_with_checks

torch.set_num_threads(1)  # see test_optimizers_training.py

TARGETS = [
    OptimizerTarget("soap", config={"precondition_frequency": 2}),
    OptimizerTarget("ademamix", config={"alpha_warmup": 4, "beta3_warmup": 4}),
    OptimizerTarget("adopt"),
    OptimizerTarget("muon"),
]


@parametrize_with_checks(TARGETS)
def test_conformance(target, check):
    check(target)
