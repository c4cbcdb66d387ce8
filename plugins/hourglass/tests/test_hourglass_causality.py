"""Causality of the Hourglass model for every shortening, upsampling, factor and nesting.

The original BlaGPT Hourglass grouped positions jk .. jk+k-1 into shortened vector j and gave it
back to the same positions, so position jk saw a summary of up to k-1 later tokens (with its
factors, up to 4x as many). Here, for every configuration and several lengths (shorter than one
factor, not a multiple of the product of factors, longer), changing token t must leave every
output before t bit for bit unchanged, for every t; and the checker itself must catch the
original leak.
"""

import itertools

import pytest
import torch

from blagpt import BuildContext
from blagpt.config import resolve
from blagpt.plugin.registry import Registry

import blagpt_plugin_hourglass.model as hg

VOCAB = 257

HIERARCHIES = [
    "1@1 1@2 1@1",  # one 2x shortening
    "1@1 1@3 1@1",  # the paper's enwik8 factor
    "1@1 1@4 1@1",  # the factor whose naive grouping leaked 3 tokens ahead
    "1@1 1@2 1@6 1@2 1@1",  # nested: 2x then 3x
    "0@1 1@3 1@12 0@3 1@1",  # nested 3x then 4x, empty pre/post layers on some sides
]
METHODS = list(itertools.product(["linear", "avg", "attention"], ["repeat", "linear", "attention"]))


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["hourglass"], strict=True)


def build(registry, **fields):
    cfg = resolve({"model": {"name": "hourglass", "preset": "tiny", **fields}}, registry).model
    torch.manual_seed(0)
    model = registry.build_model(cfg, BuildContext(vocab_size=VOCAB, max_seq_len=64, tokenizer="bytes"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # large random weights: any leak shows up far above rounding
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def leaks(model, T, seed=0):
    """Positions (t, s) with s < t where changing token t changed the output at s.

    One batch: row 0 is the base sequence, row 1 + t has token t changed. Also returns whether
    each changed token did change its own position's output (the model is not blind to it).
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, VOCAB, (1, T), generator=g)
    rows = base.repeat(T + 1, 1)
    for t in range(T):
        rows[1 + t, t] = (rows[1 + t, t] + 1 + torch.randint(0, VOCAB - 1, (1,), generator=g)) % VOCAB
    with torch.no_grad():
        out = model(rows)
    found, sees = [], []
    for t in range(T):
        diff = (out[1 + t] - out[0]).abs().amax(-1)
        found += [(t, s) for s in range(t) if diff[s] > 0]
        sees.append(bool(diff[t] > 0))
    return found, sees


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
@pytest.mark.parametrize("shortening,upsampling", METHODS)
def test_no_output_depends_on_a_later_token(registry, hierarchy, shortening, upsampling):
    model = build(registry, hierarchy=hierarchy, shortening=shortening, upsampling=upsampling)
    product = hg.parse_hierarchy(hierarchy)[len(hierarchy.split()) // 2][1]
    # one token, shorter than the first factor, not a multiple of the product, a multiple, longer
    for T in sorted({1, 2, product - 1, product, product + 1, 2 * product + 3, 29}):
        found, sees = leaks(model, T, seed=T)
        assert not found, f"T={T}: output at s changed with token t, (t, s): {found[:8]}"
        assert all(sees), f"T={T}: some position ignores its own token"


def test_changing_a_token_changes_later_outputs_through_the_shortened_path(registry):
    """No pre/post layers: full-resolution attention cannot carry token t to a later position,
    only the shortening -> middle -> upsampling path can. It must (the path is used), and only
    forward in time."""
    model = build(registry, hierarchy="0@1 1@3 0@1")
    T = 12
    idx = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(3))
    changed = idx.clone()
    changed[0, 2] = (changed[0, 2] + 5) % VOCAB
    with torch.no_grad():
        diff = (model(changed) - model(idx)).abs().amax(-1)[0]
    # token 2 lies in shortened vector 1 (positions 1..3), read from position 3 on
    assert (diff[:2] == 0).all()
    assert (diff[3:] > 0).all()


def naive_group(x, k):
    """The original BlaGPT's grouping: window j = positions jk .. jk+k-1, no shift."""
    B, T, d = x.shape
    n = -(-T // k)
    return torch.cat([x, x.new_zeros(B, n * k - T, d)], dim=1).view(B, n, k, d)


@pytest.mark.parametrize("k", [2, 4])
def test_checker_catches_the_original_leak(registry, monkeypatch, k):
    monkeypatch.setattr(hg, "shift_and_group", naive_group)
    model = build(registry, hierarchy=f"1@1 1@{k} 1@1", shortening="avg", upsampling="repeat")
    found, _ = leaks(model, 2 * k + 1)
    # position jk sees up to k-1 tokens ahead
    assert (1, 0) in found and max(t - s for t, s in found) == k - 1
