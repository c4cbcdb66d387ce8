"""Structure of BlaGPT: registration, causality, loss at init, attention paths, parameter count,
state-dict and checkpoint round-trips, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BYTES_VOCAB, SEQ, build, config

from blagpt_plugin_blagpt import BlaGPT, BlaGPTConfig, parameter_count
from blagpt_plugin_blagpt.model import Attention, Rotary, flex_softcap_attention, math_softcap_attention

# Each technique switched on over the plain gpt2+tiny baseline (tiny: 4 heads, d 64, 2 layers).
TECHNIQUES = {
    "mtp": {"n_predict": 3},
    "untied": {"tie_embeddings": False},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "logit_softcap": {"logit_softcap": 2.0},
    "attn_softcap": {"attn_softcap": 0.5},
    "qkv_bias": {"bias": False, "qkv_bias": True},
    "zero_init": {"zero_init_output": True},
    "post_norm": {"norm_position": "post"},
    "sandwich_norm": {"norm_position": "sandwich"},
    "sandwich_zero_init": {"norm_position": "sandwich", "zero_init_output": True},
    "post_zero_init": {"norm_position": "post", "zero_init_output": True},
    "rmsnorm": {"norm_type": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "rope": {"pos_encoding": "rope"},
    "rope_base": {"pos_encoding": "rope", "rope_base": 100.0},
    "pattention_attn": {"pattention_attn": True, "attn_param_tokens": 48},
    "pattention_mlp": {"pattention_mlp": True, "mlp_param_tokens": 96},
    "swiglu": {"activation": "swiglu"},
    "geglu": {"activation": "geglu"},
    "relu2": {"activation": "relu2"},
    "relu": {"activation": "relu"},
    "silu": {"activation": "silu"},
    "no_bias": {"bias": False},
    "dropout": {"dropout": 0.1},
}
PRESET_NAMES = ["blagpt", "gpt2", "tokenformer"]


def _perturb(model: BlaGPT, seed: int = 1) -> BlaGPT:
    """Add noise to every parameter so zero-initialised branches mix tokens too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _all_logits(model: BlaGPT, idx: torch.Tensor) -> torch.Tensor:
    return torch.stack(model(idx, all_heads=True))


def _check_causal(model: BlaGPT, T: int) -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, BYTES_VOCAB, (2, T), generator=g)
    t = T // 2
    idx2 = idx.clone()
    idx2[:, t] = (idx[:, t] + 1) % BYTES_VOCAB
    with torch.no_grad():
        a, b = _all_logits(model, idx), _all_logits(model, idx2)
    assert torch.allclose(a[:, :, :t], b[:, :, :t], atol=1e-5), "an output before t changed"
    assert not torch.allclose(a[:, :, t], b[:, :, t], atol=1e-4), "the output at t ignores token t"
    assert not torch.allclose(a[:, :, t + 1 :], b[:, :, t + 1 :], atol=1e-4), "later positions ignore token t"


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_causal_with_each_technique(name):
    model = _perturb(build("gpt2+tiny", **TECHNIQUES[name]))
    for T in (SEQ, 11):  # the maximum length and a shorter one
        _check_causal(model, T)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_causal_every_preset(preset):
    model = _perturb(build(f"{preset}+tiny", n_predict=2))
    for T in (SEQ, 5):
        _check_causal(model, T)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_loss_at_init_is_ln_vocab(preset):
    g = torch.Generator().manual_seed(0)
    # gpt2 vocabulary: 50257 padded to 50304 rows; the uniform prediction's loss is ln(50304).
    model = build(f"{preset}+tiny", vocab=50257).eval()
    idx = torch.randint(0, 50257, (2, 17), generator=g)
    with torch.no_grad():
        nll = model(idx[:, :-1], targets=idx[:, 1:])[1][0]
    assert abs(nll.mean().item() - math.log(50304)) < 0.05
    # bytes without padding: ln(257)
    model = build(f"{preset}+tiny", vocab_multiple=1).eval()
    idx = torch.randint(0, BYTES_VOCAB, (4, 17), generator=g)
    with torch.no_grad():
        nll = model(idx[:, :-1], targets=idx[:, 1:])[1][0]
    assert abs(nll.mean().item() - math.log(BYTES_VOCAB)) < 0.05


def test_forward_shapes_and_vocab_padding():
    model = build("blagpt+tiny", vocab=50257)
    assert model.wte.weight.shape[0] == 50304
    assert model(torch.zeros(1, 7, dtype=torch.long)).shape == (1, 7, 50304)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, SEQ + 1, dtype=torch.long))


def test_registered_through_entry_point_and_presets_combine():
    from blagpt.config import resolve
    from blagpt.errors import ConfigError
    from blagpt.plugin.registry import Registry

    reg = Registry.load(only=["blagpt"], strict=True)
    spec = reg.model_spec("blagpt")
    assert {"blagpt", "gpt2", "tokenformer", "tiny", "124m", "350m"} <= set(spec.presets)
    cfg = resolve({"model": {"name": "blagpt", "preset": "gpt2+tiny"}}, reg).model
    assert (cfg.d_model, cfg.activation, cfg.pos_encoding, cfg.n_kv_heads) == (64, "gelu", "learned", None)
    cfg = resolve({"model": {"name": "blagpt", "preset": "gpt2+tiny", "n_predict": 2}}, reg).model
    assert cfg.n_predict == 2
    with pytest.raises(ConfigError, match="n_kv_heads"):
        resolve({"model": {"name": "blagpt", "preset": "tiny", "n_kv_heads": 3}}, reg)
    with pytest.raises(ConfigError, match="mtp_weights"):
        resolve({"model": {"name": "blagpt", "n_predict": 2, "mtp_weights": [1.0]}}, reg)
    # every field is documented in the schema
    assert all(f.description for f in BlaGPTConfig.model_fields.values())
    # the schema defaults are the blagpt preset at 124m
    assert BlaGPTConfig() == config("blagpt+124m")


def test_hooks_build_and_loss_through_registry():
    from blagpt import Batch, BuildContext
    from blagpt.plugin.registry import Registry

    reg = Registry.load(only=["blagpt"], strict=True)
    cfg = config("blagpt+tiny", n_predict=2, mtp_weights=[3.0, 1.0])
    model = reg.build_model(cfg, BuildContext(vocab_size=BYTES_VOCAB, max_seq_len=SEQ, tokenizer="bytes"))
    tokens = torch.randint(0, BYTES_VOCAB, (2, SEQ + 1))
    out = reg.compute_loss(model, Batch(tokens), cfg)
    assert out.nll.shape == (2, SEQ)
    h0, h1 = out.metrics["loss_head0"], out.metrics["loss_head1"]
    assert torch.allclose(out.loss, (3 * h0 + h1) / 4)
    assert torch.allclose(out.nll.mean(), h0)
    # other names are left to other plugins
    from blagpt_plugin_blagpt import build_model, compute_loss

    assert build_model("other", cfg, None) is None and compute_loss("other", model, Batch(tokens), cfg) is None


@pytest.mark.parametrize("seq_len", [1, 3])
def test_n_predict_longer_than_seq_len_is_a_config_error(seq_len):
    """With train.seq_len < n_predict the last head has no target (a NaN loss, or a crash in the
    cross-entropy): the build is refused naming both fields. seq_len == n_predict leaves it one."""
    from blagpt import Batch, BuildContext, ConfigError
    from blagpt.plugin.registry import Registry

    reg = Registry.load(only=["blagpt"], strict=True)
    cfg = config("gpt2+tiny", n_predict=4)
    ctx = lambda T: BuildContext(vocab_size=BYTES_VOCAB, max_seq_len=T, tokenizer="bytes")  # noqa: E731
    msg = f"model.n_predict: predicting 4 tokens ahead needs train.seq_len >= 4, got train.seq_len={seq_len}"
    with pytest.raises(ConfigError) as e:
        reg.build_model(cfg, ctx(seq_len))
    assert str(e.value) == msg
    model = reg.build_model(cfg, ctx(4))
    out = reg.compute_loss(model, Batch(torch.randint(0, BYTES_VOCAB, (2, 5))), cfg)
    assert torch.isfinite(out.loss) and out.metrics["loss_head3"].isfinite()


# -- attention ------------------------------------------------------------------------------


def _reference_attention(q, k, v, cap=None):
    """Multi-head attention written out, K/V heads repeated for their query groups."""
    H, Hkv, T = q.shape[1], k.shape[1], q.shape[2]
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def _attention_reference_output(attn: Attention, x: torch.Tensor, cap=None) -> torch.Tensor:
    B, T, _ = x.shape
    q, k, v = attn.qkv(x).split(attn.splits, dim=-1)
    q = q.view(B, T, attn.n_heads, attn.hd)
    k, v = k.view(B, T, attn.n_kv, attn.hd), v.view(B, T, attn.n_kv, attn.hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = attn.rotary[0](q, seq_dim=1), attn.rotary[0](k, seq_dim=1)
    y = _reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cap)
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("cap", [None, 0.7])
def test_attention_matches_reference_mha(kv, cap):
    """n_kv_heads == n_heads is plain multi-head attention; fewer KV heads share theirs."""
    torch.manual_seed(0)
    cfg = config("blagpt+tiny", n_kv_heads=kv, attn_softcap=cap)
    attn = _perturb_module(Attention(cfg, Rotary(cfg.head_dim, SEQ, cfg.rope_base)))
    x = torch.randn(2, 13, cfg.d_model)
    with torch.no_grad():
        assert torch.allclose(attn(x), _attention_reference_output(attn, x, cap), atol=1e-5)


def _perturb_module(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def test_gqa_makes_no_copies_of_k_and_v(monkeypatch):
    from blagpt_plugin_blagpt import model as mod

    assert mod.SDPA_GQA, "torch >= 2.5 has SDPA's enable_gqa"

    def forbidden(*a, **k):
        raise AssertionError("K/V heads were copied")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", forbidden)
    monkeypatch.setattr(torch.Tensor, "expand", forbidden)
    for cap in (None, 0.5):  # the SDPA path and the explicit soft-capped path
        model = build("blagpt+tiny", n_kv_heads=1, attn_softcap=cap)
        model(torch.zeros(1, 9, dtype=torch.long)).sum().backward()


def test_flex_softcap_attention_matches_math_path():
    """The flex_attention path (used on CUDA) computes the same as the explicit one (checked here
    unfused on the CPU, without grad: flex_attention has no CPU backward in torch 2.13)."""
    import warnings

    torch.manual_seed(0)
    q = torch.randn(2, 4, 24, 16)
    k, v = torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = flex_softcap_attention(q, k, v, cap=0.8)
    b = math_softcap_attention(q, k, v, cap=0.8)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(b, _reference_attention(q, k, v, cap=0.8), atol=1e-5)


def test_logit_softcap_bounds_logits():
    model = _perturb(build("gpt2+tiny", logit_softcap=0.3))
    z = model(torch.randint(0, BYTES_VOCAB, (2, 9)))
    assert z.abs().max() < 0.3
    assert z.abs().max() > 0.25  # and it is a cap, not a rescale


# -- parameters -----------------------------------------------------------------------------


FORMULA_CASES = [
    ("gpt2+tiny", {}),
    ("blagpt+tiny", {}),
    ("tokenformer+tiny", {}),
    ("gpt2+tiny", {"tie_embeddings": False, "n_predict": 3, "norm_position": "sandwich"}),
    ("blagpt+mini", {"n_kv_heads": 2, "qkv_bias": True, "bias": False, "qk_norm": False, "activation": "relu2"}),
    ("tokenformer+tiny", {"n_kv_heads": 2, "attn_param_tokens": 10, "mlp_param_tokens": 7, "norm_type": "layernorm"}),
    ("gpt2+mini", {"pattention_mlp": True, "mlp_hidden": 100, "norm_position": "post", "bias": False}),
]


@pytest.mark.parametrize("preset,over", FORMULA_CASES)
def test_parameter_count_equals_formula(preset, over):
    model = build(preset, **over)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(model.cfg, BYTES_VOCAB, SEQ)


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("size,target", [("124m", 124_475_904), ("350m", 354_871_296)])
def test_large_presets_match_gpt2_parameter_count(preset, size, target):
    """124m and 350m of every preset are within 1% of GPT-2 small / medium (vocab 50304, tied)."""
    cfg = config(f"{preset}+{size}")
    with torch.device("meta"):
        model = BlaGPT(cfg, 50257, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert n == parameter_count(cfg, 50257, 1024)
    assert abs(n / target - 1) < 0.01, n


def test_flops_per_token():
    m = build("gpt2+tiny")
    f = m.flops_per_token(SEQ)
    n_block = sum(p.numel() for n, p in m.blocks.named_parameters() if p.dim() == 2)
    assert f == 6 * (n_block + m.wte.weight.numel()) + 12 * 2 * SEQ * 64
    assert build("gpt2+tiny", n_predict=2).flops_per_token(SEQ) > f


# -- initialisation -------------------------------------------------------------------------


def test_zero_init_makes_every_block_the_identity():
    model = build("blagpt+tiny").eval()
    idx = torch.randint(0, BYTES_VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(model.trunk(idx), model.wte(idx))
        assert all(torch.all(b.attn.o_proj.weight == 0) and torch.all(b.mlp.down.weight == 0) for b in model.blocks)
    for pos in ("post", "sandwich"):
        model = build("blagpt+tiny", norm_position=pos).eval()
        with torch.no_grad():
            assert torch.equal(model.trunk(idx), model.wte(idx))
        assert all(torch.all(b.attn_norm_out.weight == 0) for b in model.blocks)


@pytest.mark.parametrize("pos", ["post", "sandwich"])
def test_post_norm_with_zero_init_keeps_step0_gradients_sane(pos, corpus):
    """A norm after a zero branch would scale its gradient by 1/sqrt(eps) (1e6 at eps 1e-12); the
    zero goes into the norm's gain instead, so step-0 gradients stay at the pre-norm scale."""
    from conftest import batches

    from blagpt import Batch

    from blagpt_plugin_blagpt import compute_loss

    tokens = batches(corpus, 1)[0]

    def grad_norm(**over):
        m = build("blagpt+tiny", **over)
        compute_loss("blagpt", m, Batch(tokens), m.cfg).loss.backward()
        return torch.norm(torch.stack([p.grad.norm() for p in m.parameters() if p.grad is not None])).item()

    base = grad_norm()
    for eps in (1e-5, 1e-12):
        g = grad_norm(norm_position=pos, norm_eps=eps)
        assert math.isfinite(g) and g < 5 * base, (eps, g, base)


# -- round trips ----------------------------------------------------------------------------


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    from blagpt.run.checkpoint import load, save

    model = _perturb(build("blagpt+tiny", n_predict=2, pattention_mlp=True, mlp_param_tokens=32))
    idx = torch.randint(0, BYTES_VOCAB, (2, 11))
    save(tmp_path / "checkpoint.pt", {"model": model.state_dict(), "config": {"model": model.cfg.model_dump(mode="json")}})
    state = load(tmp_path / "checkpoint.pt")
    cfg = BlaGPTConfig.model_validate(state["config"]["model"])
    assert cfg == model.cfg
    torch.manual_seed(123)
    fresh = BlaGPT(cfg, BYTES_VOCAB, SEQ).eval()
    assert set(fresh.state_dict()) == set(state["model"])
    fresh.load_state_dict(state["model"])
    with torch.no_grad():
        assert torch.equal(_all_logits(fresh, idx), _all_logits(model, idx))
    # rotary tables are not saved (rebuilt from the config), tied weights are saved once
    assert not any(k.endswith((".cos", ".sin")) for k in state["model"])
    assert "lm_head.weight" not in state["model"]


def test_dropout_only_in_training():
    model = build("gpt2+tiny", dropout=0.3)
    idx = torch.randint(0, BYTES_VOCAB, (2, 9))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_generation_without_targets_uses_next_token_head():
    model = _perturb(build("blagpt+tiny", n_predict=3))
    idx = torch.randint(0, BYTES_VOCAB, (1, 4))
    with torch.no_grad():
        heads = model(idx, all_heads=True)
        assert torch.equal(model(idx), heads[0]) and len(heads) == 3
        for _ in range(5):  # greedy decoding
            nxt = model(idx)[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    assert idx.shape == (1, 9)


@pytest.mark.parametrize("name", [*TECHNIQUES, *PRESET_NAMES])
def test_cached_decoding_equals_the_full_forward_with_each_technique(name):
    """The KV cache (prefill, a chunk, then one token at a time, to the maximum length) gives the
    full forward's logits with every technique and preset; the conformance kit checks the
    `blagpt` preset and MTP only."""
    from blagpt.testing.model_checks import CACHE_TOL, cached_logits

    model = _perturb(build(f"{name}+tiny") if name in PRESET_NAMES else build("gpt2+tiny", **TECHNIQUES[name]))
    idx = torch.randint(0, BYTES_VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(idx)
        for pieces in ([13] + [1] * (SEQ - 13), [1] * 5 + [6] + [1] * (SEQ - 11)):
            got = cached_logits(model, idx, pieces)
            assert torch.allclose(got, full, rtol=CACHE_TOL, atol=CACHE_TOL), float((got - full).abs().max())
        cache = model.init_cache(2)
        model(idx, cache=cache)
        with pytest.raises(ValueError, match=f"sequence length {SEQ + 1} exceeds max_seq_len {SEQ}"):
            model(idx[:, :1], cache=cache)


def test_state_size_bytes_is_the_filled_decoding_cache():
    model = build("gpt2+tiny", n_kv_heads=2).eval()
    cache = model.init_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, SEQ, dtype=torch.long), cache=cache)
    filled = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.k, layer.v))
    assert model.state_size_bytes(SEQ) == filled and model.state_size_bytes(2 * SEQ) == 2 * filled
