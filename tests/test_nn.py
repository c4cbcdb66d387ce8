"""blagpt.nn: vocabulary padding, the ``vocab_multiple`` field and its old spelling, rotary embeddings."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from blagpt.nn import Rotary, apply_rotary, padded_vocab, rotary_tables, vocab_multiple_field


@pytest.mark.parametrize(
    "vocab, multiple, expected",
    [(50257, 64, 50304), (257, 64, 320), (256, 64, 256), (1, 64, 64), (50257, 1, 50257), (10, 3, 12), (0, 8, 0)],
)
def test_padded_vocab(vocab, multiple, expected):
    assert padded_vocab(vocab, multiple) == expected


@pytest.mark.parametrize("multiple", [0, -64])
def test_padded_vocab_refuses_a_multiple_below_one(multiple):
    with pytest.raises(ValueError, match="multiple"):
        padded_vocab(257, multiple)


class Cfg(BaseModel):
    """Configured as blagpt.ModelConfig: unknown fields refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    vocab_multiple: int = vocab_multiple_field()
    d_model: int = 8


def test_vocab_multiple_field_accepts_both_spellings_and_dumps_the_new_one():
    assert Cfg().vocab_multiple == 64
    assert Cfg(vocab_multiple=3).vocab_multiple == 3
    assert Cfg(pad_vocab_multiple=3).vocab_multiple == 3
    assert Cfg.model_validate({"pad_vocab_multiple": 3}).model_dump() == {"vocab_multiple": 3, "d_model": 8}
    assert Cfg.model_validate(Cfg(vocab_multiple=5).model_dump()).vocab_multiple == 5  # round trip
    assert vocab_multiple_field(default=8).default == 8


def test_vocab_multiple_field_validates_assignment_and_bounds():
    cfg = Cfg()
    cfg.vocab_multiple = 5
    assert cfg.vocab_multiple == 5
    with pytest.raises(ValidationError, match="greater than 0"):
        cfg.vocab_multiple = 0
    for spelling in ("vocab_multiple", "pad_vocab_multiple"):
        with pytest.raises(ValidationError, match="greater than 0"):
            Cfg(**{spelling: 0})


def test_unknown_fields_are_still_refused():
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        Cfg(vocab_multiples=3)
    with pytest.raises(ValidationError, match="pad_vocab_multiple"):  # both spellings at once: one is extra
        Cfg(vocab_multiple=3, pad_vocab_multiple=5)


def test_json_schema_names_the_field_with_its_description():
    prop = Cfg.model_json_schema()["properties"]["vocab_multiple"]
    assert prop["default"] == 64 and prop["exclusiveMinimum"] == 0
    assert "50304" in prop["description"]
    assert "pad_vocab_multiple" not in Cfg.model_json_schema()["properties"]


# -- rotary -----------------------------------------------------------------------------------

D = 16


def rotate(x: torch.Tensor, pos: int | list[int], base: float = 10000.0) -> torch.Tensor:
    """x (..., T, D) rotated at the given positions."""
    positions = torch.tensor([pos] if isinstance(pos, int) else pos)
    cos, sin = rotary_tables(positions, x.shape[-1], base)
    return apply_rotary(x, cos, sin)


def test_tables_shape_dtype_and_values():
    cos, sin = rotary_tables(torch.arange(5), D, 100.0)
    assert cos.shape == sin.shape == (5, D // 2) and cos.dtype == sin.dtype == torch.float32
    i = torch.arange(D // 2, dtype=torch.float64)
    expected = 3 * 100.0 ** (-2 * i / D)
    torch.testing.assert_close(cos[3], expected.cos().float(), rtol=0, atol=0)
    torch.testing.assert_close(sin[3], expected.sin().float(), rtol=0, atol=0)


def test_scores_depend_only_on_relative_position():
    """<R(m) q, R(n) k> = <q, R(n - m) k>: the same for every (m, n) with the same n - m."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, D, generator=g, dtype=torch.float64).unbind(0)
    for delta in (0, 1, 5, -7):
        scores = []
        for m in (0, 3, 100, 2000):
            n = m + delta
            if n < 0:
                continue
            qm, kn = rotate(q.float()[:, None], m), rotate(k.float()[:, None], n)
            scores.append((qm * kn).sum(-1))
        for s in scores[1:]:
            torch.testing.assert_close(s, scores[0], rtol=1e-4, atol=1e-4)
    # and it does depend on the offset
    assert not torch.allclose((rotate(q.float()[:, None], 0) * rotate(k.float()[:, None], 1)).sum(-1),
                              (rotate(q.float()[:, None], 0) * rotate(k.float()[:, None], 4)).sum(-1))


def test_position_zero_is_the_identity_and_norms_are_kept():
    x = torch.randn(2, 4, 7, D)
    torch.testing.assert_close(rotate(x, [0] * 7), x, rtol=0, atol=0)
    y = rotate(x, list(range(0, 7000, 1000)))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(y, x)


def test_apply_rotary_casts_tables_to_the_input_dtype():
    x = torch.randn(1, 2, 5, D, dtype=torch.bfloat16)
    cos, sin = rotary_tables(torch.arange(5), D, 10000.0)
    y = apply_rotary(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), apply_rotary(x.float(), cos, sin), rtol=2e-2, atol=2e-2)


def test_module_matches_the_functions():
    rot = Rotary(D, 32, 500.0)
    assert not rot.state_dict()  # tables are rebuilt, never saved
    x = torch.randn(2, 3, 9, D)  # (B, H, T, D)
    cos, sin = rotary_tables(torch.arange(9), D, 500.0)
    torch.testing.assert_close(rot(x), apply_rotary(x, cos, sin), rtol=0, atol=0)
    # explicit positions, offset as in cached decoding, also past the cached rows
    for pos in (torch.arange(20, 29), torch.arange(40, 49), torch.tensor([0, 3, 6, 9, 12, 15, 18, 21, 24])):
        cos, sin = rotary_tables(pos, D, 500.0)
        torch.testing.assert_close(rot(x, pos), apply_rotary(x, cos, sin), rtol=0, atol=0)
    torch.testing.assert_close(rot(x, torch.arange(9)), rot(x), rtol=0, atol=0)  # the cache holds the same


def test_module_sequence_dim():
    rot = Rotary(D, 32, 10000.0)
    x = torch.randn(2, 9, 3, D)  # (B, T, H, D)
    torch.testing.assert_close(rot(x, seq_dim=1), rot(x.transpose(1, 2)).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(rot(x, seq_dim=-3), rot(x, seq_dim=1), rtol=0, atol=0)


def test_module_errors():
    with pytest.raises(ValueError, match="even head dimension"):
        Rotary(15, 8)
    with pytest.raises(ValueError, match="even head dimension"):
        rotary_tables(torch.arange(3), 7, 10000.0)
    rot = Rotary(D, 8)
    with pytest.raises(ValueError, match="max_seq_len 8"):
        rot(torch.randn(1, 1, 9, D))
    with pytest.raises(ValueError, match="head dimension 16"):
        rot(torch.randn(1, 1, 4, 8))
    with pytest.raises(ValueError, match="positions must be of shape"):
        rot(torch.randn(1, 1, 4, D), torch.arange(5))
    with pytest.raises(ValueError, match="seq_dim"):
        rot(torch.randn(1, 1, 4, D), seq_dim=-1)
