"""The FTP model through blagpt's plugin contract: causality (encoder and the decoder's
teacher-forced future targets), the gamma-discounted loss, init loss, gradients, round trip."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from blagpt import Batch, BuildContext, ConfigError
from blagpt.config import resolve
from blagpt.plugin.registry import Registry

from blagpt_plugin_ftp import FTP, compute_loss, discounted_loss
from blagpt_plugin_ftp import build_model as plugin_build_model

BYTES = 257
MAX_T = 24
OPTIONS = [
    {},
    {"n_future": 1},
    {"n_future": 6, "n_decoder_layers": 2, "pseudo_len": 3, "bias": False},
    {"n_future": 3, "pseudo_len": 1, "mlp_ratio": 2.0, "gamma": 1.0},
]


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["ftp"], strict=True)


def config(registry, **fields):
    return resolve({"model": {"name": "ftp", "preset": "tiny", **fields}}, registry).model


def build(registry, tokenizer="bytes", max_seq_len=MAX_T, seed=0, **fields):
    vocab = BYTES if tokenizer == "bytes" else 50257
    ctx = BuildContext(vocab_size=vocab, max_seq_len=max_seq_len, tokenizer=tokenizer)
    torch.manual_seed(seed)
    return registry.build_model(config(registry, **fields), ctx)


def randomise(model, scale=0.1):
    """Random values in every parameter, so no output is independent of an input by accident
    of initialisation (e.g. LayerNorm gains of exactly 1, zero biases)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def tokens(B, T, seed=2, vocab=BYTES):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_registered_with_presets_and_documented_fields(registry):
    spec = registry.model_spec("ftp")
    assert {"tiny", "small", "124m"} <= set(spec.presets)
    assert spec.tokenizers == ("gpt2", "bytes", "any")
    for name, field in spec.config.model_fields.items():
        assert field.description, name


def test_124m_preset_matches_blagpt_gpt2_124m(registry):
    cfg = config(registry, preset="124m")
    with torch.device("meta"):
        model = FTP(cfg, 50257, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 124_475_904) / 124_475_904 < 0.02, n


def test_config_errors(registry):
    with pytest.raises(ConfigError, match="n_heads"):
        config(registry, d_model=100, n_heads=16)
    with pytest.raises(ConfigError, match="gamma"):
        config(registry, gamma=1.5)


def test_other_names_are_not_answered(registry):
    model = build(registry)
    ctx = BuildContext(vocab_size=BYTES, max_seq_len=8, tokenizer="bytes")
    assert plugin_build_model("blagpt", model.cfg, ctx) is None
    assert compute_loss("blagpt", model, Batch(tokens(1, 9)), model.cfg) is None


@pytest.mark.parametrize("fields", OPTIONS)
def test_forward_is_causal_also_for_shorter_sequences(registry, fields):
    model = randomise(build(registry, **fields)).eval()
    for T in (MAX_T, 13, 1):
        idx = tokens(2, T, seed=T)
        with torch.no_grad():
            base = model(idx)
            assert base.shape == (2, T, 320)
            for t in sorted({0, T // 2, T - 1}):
                changed = idx.clone()
                changed[:, t] = (changed[:, t] + 1) % BYTES
                out = model(changed)
                torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
                assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("fields", OPTIONS)
def test_future_predictions_see_only_their_teacher_forced_prefix(registry, fields):
    """The decoder's step j at position t predicts x_{t+1+j} from x_0 .. x_{t+j}: changing
    token s changes no prediction with t + j < s (the original BlaGPT's FTP let the first
    chunk's predictions see tokens 0..7), and does change those with t + j >= s."""
    model = randomise(build(registry, **fields)).eval()
    N = model.cfg.n_future
    for T in (MAX_T, 11, 3, 1):  # 3 and 1: shorter than some n_future
        seq = tokens(2, T + 1, seed=10 + T)
        with torch.no_grad():
            base = model.future_logits(seq[:, :-1], seq[:, 1:])
            _, base_nlls = model(seq[:, :-1], targets=seq[:, 1:])
            assert base.shape == (2, T, N, 320)
            for s in range(T + 1):
                changed = seq.clone()
                changed[:, s] = (changed[:, s] + 1) % BYTES
                out = model.future_logits(changed[:, :-1], changed[:, 1:])
                _, nlls = model(changed[:, :-1], targets=changed[:, 1:])
                for t in range(T):
                    for j in range(N):
                        if t + j >= T:
                            continue  # no target: x_{t+1+j} is outside the batch
                        same = torch.equal(out[:, t, j], base[:, t, j])
                        assert same == (t + j < s), (T, s, t, j)
                        # the NLL of x_{t+1+j} also depends on that target itself
                        assert torch.equal(nlls[j][:, t], base_nlls[j][:, t]) == (t + j + 1 < s), (T, s, t, j)


def test_first_positions_do_not_see_later_tokens(registry):
    """The original BlaGPT's bug, stated directly: predictions made at position 0 of x_1 .. x_N
    must not move when everything after their own prefix is replaced."""
    model = randomise(build(registry, n_future=8)).eval()
    seq = tokens(2, 17, seed=3)
    with torch.no_grad():
        base = model.future_logits(seq[:, :-1], seq[:, 1:])
        for j in range(8):
            changed = seq.clone()
            changed[:, j + 1 :] = tokens(2, 16 - j, seed=4 + j)
            out = model.future_logits(changed[:, :-1], changed[:, 1:])
            torch.testing.assert_close(out[:, 0, : j + 1], base[:, 0, : j + 1], rtol=0, atol=0)
            assert not torch.allclose(out[:, 0, j + 1 :], base[:, 0, j + 1 :]) or j == 7


def test_longer_than_max_seq_len_is_an_error(registry):
    with pytest.raises(ValueError, match="max_seq_len"):
        build(registry)(tokens(1, MAX_T + 1))


@pytest.mark.parametrize("fields", OPTIONS)
def test_nlls_are_each_offsets_cross_entropy_and_nll_is_the_next_token_one(registry, fields):
    model = randomise(build(registry, **fields), 0.05)
    seq = tokens(2, MAX_T + 1, seed=5)
    idx, tgt = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        logits = model.future_logits(idx, tgt)
        out = compute_loss("ftp", model, Batch(seq), model.cfg)
        _, nlls = model(idx, targets=tgt)
        plain = model(idx)
    for j, nll in enumerate(nlls):
        assert nll.shape == (2, MAX_T - j)
        ref = F.cross_entropy(logits[:, : MAX_T - j, j].transpose(1, 2), seq[:, 1 + j :], reduction="none")
        torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    # nll (validation, bpb) is the plain next-token cross-entropy of forward(idx)
    torch.testing.assert_close(out.nll, F.cross_entropy(plain.transpose(1, 2), tgt, reduction="none"), rtol=1e-5, atol=1e-5)
    assert out.nll.shape == tgt.shape


def test_gamma_discount_is_applied_as_the_formula_says(registry):
    """Same weights, different gamma / normalisation: the loss is
    sum_i gamma^(i-1) L_i (/ sum_i gamma^(i-1)), L_i the mean NLL of x_{t+i}."""
    seq = tokens(3, MAX_T + 1, seed=6)
    state = randomise(build(registry, n_future=4), 0.05).state_dict()
    per_offset = None
    losses = {}
    for gamma in (1.0, 0.9, 0.5, 0.1):
        for normalize in (True, False):
            model = build(registry, n_future=4, gamma=gamma, normalize_discount=normalize)
            model.load_state_dict(state)
            with torch.no_grad():
                out = compute_loss("ftp", model, Batch(seq), model.cfg)
            L = [out.metrics[f"loss_ahead{i}"].item() for i in range(1, 5)]
            per_offset = per_offset or L
            assert L == pytest.approx(per_offset, abs=1e-6)  # gamma weights, it does not change L_i
            w = [gamma**i for i in range(4)]
            expect = sum(wi * li for wi, li in zip(w, L)) / (sum(w) if normalize else 1.0)
            assert out.loss.item() == pytest.approx(expect, rel=1e-5)
            losses[gamma, normalize] = out.loss.item()
    assert len(set(per_offset)) == 4  # the offsets' losses differ, so the weights matter
    assert len({round(v, 6) for v in losses.values()}) == len(losses)
    # gamma = 1, normalised: the plain mean of the offsets' losses
    assert losses[1.0, True] == pytest.approx(sum(per_offset) / 4, rel=1e-5)


def test_short_sequences_weight_only_offsets_with_targets():
    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0]])
    empty = torch.zeros(1, 0)
    assert discounted_loss([a, b, empty], 0.5, True).item() == pytest.approx((2.0 + 0.5 * 5.0) / 1.5)
    assert discounted_loss([a, b, empty], 0.5, False).item() == pytest.approx(2.0 + 0.5 * 5.0)


def test_one_future_token_is_plain_next_token_training(registry):
    model = randomise(build(registry, n_future=1), 0.05)
    seq = tokens(2, MAX_T + 1, seed=7)
    out = compute_loss("ftp", model, Batch(seq), model.cfg)
    ref = F.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokenizer,vocab", [("bytes", BYTES), ("gpt2", 50257)])
def test_loss_at_init_is_ln_vocab(registry, tokenizer, vocab):
    model = build(registry, tokenizer=tokenizer)
    seq = tokens(4, MAX_T + 1, seed=8, vocab=vocab)
    with torch.no_grad():
        out = compute_loss("ftp", model, Batch(seq), model.cfg)
    assert abs(out.loss.item() - math.log(vocab)) < 0.3, out.loss.item()
    assert abs(out.nll.mean().item() - math.log(vocab)) < 0.3


@pytest.mark.parametrize("fields", OPTIONS)
def test_gradients_reach_every_parameter(registry, fields):
    model = build(registry, **fields)
    compute_loss("ftp", model, Batch(tokens(2, MAX_T + 1, seed=9)), model.cfg).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead


def test_state_dict_round_trip(registry):
    model = randomise(build(registry)).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = build(registry, seed=123).eval()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.head.weight is other.tok_emb.weight  # tying survives loading
    seq = tokens(2, MAX_T + 1, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(other(seq[:, :-1]), model(seq[:, :-1]), rtol=0, atol=0)
        a = compute_loss("ftp", model, Batch(seq), model.cfg)
        b = compute_loss("ftp", other, Batch(seq), other.cfg)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


def test_greedy_generation_follows_forward(registry):
    model = randomise(build(registry)).eval()
    idx = tokens(2, 5, seed=12)
    out = model.generate(idx, max_new_tokens=4, temperature=0)
    assert out.shape == (2, 9)
    with torch.no_grad():
        assert torch.equal(out[:, 5], model(idx)[:, -1, :BYTES].argmax(-1))
        assert torch.equal(out[:, 8], model(out[:, :8])[:, -1, :BYTES].argmax(-1))
