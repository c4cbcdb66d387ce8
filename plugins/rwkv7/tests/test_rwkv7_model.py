"""The RWKV-7 model through blagpt's plugin contract."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blagpt import BuildContext, ConfigError
from blagpt.config import resolve
from blagpt.plugin.registry import Registry

from blagpt_plugin_rwkv7 import PRESETS
from blagpt_plugin_rwkv7.model import RWKV7, RWKV7Config


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["rwkv7"], strict=True)


def build(registry, tokenizer="bytes", max_seq_len=64, **fields):
    cfg = resolve({"model": {"name": "rwkv7", "preset": "tiny", **fields}}, registry).model
    vocab = 257 if tokenizer == "bytes" else 50257
    ctx = BuildContext(vocab_size=vocab, max_seq_len=max_seq_len, tokenizer=tokenizer)
    torch.manual_seed(0)
    return registry.build_model(cfg, ctx)


def randomise(model):
    """Small random values in every parameter: the paper's init zeroes several projections
    (W_o, channel-mix W_v, LoRA A's), which blocks some gradients at step 0 by design."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_registered_with_presets(registry):
    spec = registry.model_spec("rwkv7")
    assert {"tiny", "small", "124m"} <= set(spec.presets)
    assert spec.tokenizers == ("gpt2", "bytes", "any")
    for name, field in RWKV7Config.model_fields.items():
        assert field.description, name


def test_124m_preset_matches_gpt2_small(registry):
    cfg = resolve({"model": {"name": "rwkv7", "preset": "124m"}}, registry).model
    with torch.device("meta"):
        model = RWKV7(cfg, 50257, 1024)
    n = sum(p.numel() for p in model.parameters())
    gpt2_small = 12 * (12 * 768 * 768 + 13 * 768) + 50304 * 768 + 1024 * 768 + 2 * 768  # ~124.5M
    assert abs(n - gpt2_small) / gpt2_small < 0.01, n


def test_config_errors(registry):
    with pytest.raises(ConfigError, match="head_size"):
        resolve({"model": {"name": "rwkv7", "d_model": 100, "head_size": 16}}, registry)
    with pytest.raises(ConfigError, match="chunk_size"):
        resolve({"model": {"name": "rwkv7", "chunk_size": 500}}, registry)


def test_fla_kernel_without_fla_is_a_clear_error(registry):
    pytest.importorskip("torch")  # always there; fla is what we test the absence of
    try:
        import fla.ops.rwkv7  # noqa: F401
    except Exception:  # noqa: BLE001
        with pytest.raises(ConfigError, match="flash-linear-attention"):
            build(registry, kernel="fla")
    else:
        model = build(registry, kernel="fla")  # installed: building works, CPU forward refuses
        with pytest.raises(RuntimeError, match="CUDA"):
            model(torch.zeros(1, 4, dtype=torch.long))


def _fla_importable() -> bool:
    from blagpt_plugin_rwkv7.wkv import fla_available

    return fla_available()


@pytest.mark.skipif(not (torch.cuda.is_available() and _fla_importable()), reason="needs CUDA and flash-linear-attention")
def test_fla_kernel_matches_chunked_on_cuda():
    from blagpt_plugin_rwkv7.wkv import wkv7_chunked, wkv7_fla

    from test_rwkv7_kernel import rel, rwkv7_inputs

    x = [t.cuda() for t in rwkv7_inputs(2, 300, 4, 64, seed=11)]
    s0 = torch.randn(2, 4, 64, 64, device="cuda")
    y_ref, h_ref = wkv7_chunked(*x, state=s0, chunk_size=64)
    y, h = wkv7_fla(*x, state=s0)
    assert rel(y, y_ref) < 1e-3 and rel(h, h_ref) < 1e-3


@pytest.mark.parametrize("fields", [{}, {"token_shift_lora": 8}, {"value_residual": False, "n_layers": 3}])
def test_causal_also_for_shorter_sequences(registry, fields):
    model = randomise(build(registry, **fields)).eval()
    g = torch.Generator().manual_seed(2)
    for T in (40, 13, 1):  # full chunk + tail, shorter than a chunk, one token
        idx = torch.randint(0, 257, (2, T), generator=g)
        base = model(idx)
        assert base.shape == (2, T, 320)
        t = T // 2
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 257
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        if T > 1:
            assert not torch.allclose(out[:, t:], base[:, t:])


def test_chunked_model_equals_recurrent_model(registry):
    """Whole model, kernel=chunked vs kernel=recurrent: logits and every parameter's gradient."""
    model = randomise(build(registry, token_shift_lora=4, chunk_size=16))
    idx = torch.randint(0, 257, (2, 37), generator=torch.Generator().manual_seed(3))
    results = []
    for kernel in ("chunked", "recurrent"):
        for block in model.blocks:
            block.att.kernel = kernel
        model.zero_grad()
        out = model(idx)
        F.cross_entropy(out[:, :-1].flatten(0, 1), idx[:, 1:].flatten()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_c, grads_c), (out_r, grads_r) = results
    assert ((out_c - out_r).abs().max() / out_r.abs().max()).item() < 1e-4
    for name, g in grads_r.items():
        assert ((grads_c[name] - g).abs().max() / g.abs().max()).item() < 1e-4, name


def test_recomputed_kernel_gives_the_same_gradients(registry):
    idx = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(9))
    grads = []
    for recompute in (False, True):
        model = randomise(build(registry, recompute_kernel=recompute))
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_forward(registry):
    model = randomise(build(registry))
    idx = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(10))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx)
        loss = F.cross_entropy(out.float().flatten(0, 1), idx.flatten())
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(loss)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 5e-2


def test_loss_at_init_is_ln_vocab(registry):
    for tokenizer, vocab in (("bytes", 257), ("gpt2", 50257)):
        model = build(registry, tokenizer=tokenizer)
        idx = torch.randint(0, vocab, (4, 33), generator=torch.Generator().manual_seed(4))
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        assert abs(loss.item() - math.log(vocab)) < 0.3, (tokenizer, loss.item())


def test_gradients_reach_every_parameter(registry):
    model = randomise(build(registry, token_shift_lora=4, tie_embeddings=False))
    idx = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(5))
    F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip(registry):
    model = randomise(build(registry))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = build(registry)
    other.load_state_dict(torch.load(buf))
    assert other.head.weight is other.emb.weight  # tying survives loading
    idx = torch.randint(0, 257, (1, 24), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(other(idx), model(idx), rtol=0, atol=0)


def test_generation_through_state_matches_full_forward(registry):
    """Prefill a prompt (chunked), then feed tokens one by one through the constant-size
    recurrent state: each step's logits equal the full-sequence forward's at that position."""
    model = randomise(build(registry)).eval()
    idx = torch.randint(0, 257, (2, 30), generator=torch.Generator().manual_seed(7))
    full = model(idx)
    with torch.no_grad():
        logits, state = model.forward_with_state(idx[:, :11])
        steps = [logits[:, -1]]
        for t in range(11, 30):
            for block in model.blocks:
                block.att.kernel = "recurrent"
            logits, state = model.forward_with_state(idx[:, t : t + 1], state)
            steps.append(logits[:, -1])
    stepped = torch.stack(steps, 1)  # logits at positions 10 .. 29
    assert ((stepped - full[:, 10:]).abs().max() / full.abs().max()).item() < 1e-4
    assert state[0][1].shape == (2, 4, 16, 16)  # (B, H, N, N), whatever the length

    for block in model.blocks:
        block.att.kernel = "chunked"
    out = model.generate(idx[:, :5], max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11)
    # greedy continuation agrees with argmax of full forwards
    assert torch.equal(out[:, 5], model(idx[:, :5])[:, -1, :257].argmax(-1))


def test_loss_falls_on_embedded_corpus(registry):
    from blagpt.data.prepare import embedded_dataset
    from blagpt.data.shards import read_shard
    import glob

    train_glob, _ = embedded_dataset("bytes")
    tokens = torch.from_numpy(np.asarray(read_shard(sorted(glob.glob(train_glob))[0])[:200_000], dtype=np.int64))
    model = build(registry, max_seq_len=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(8)
    losses = []
    for _ in range(40):
        starts = torch.randint(0, len(tokens) - 65, (8,), generator=g)
        batch = torch.stack([tokens[s : s + 65] for s in starts])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < first - 1.0, (first, last)


def test_low_rank_factors_take_no_weight_decay():
    from blagpt import param_groups

    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(**PRESETS["tiny"], token_shift_lora=2), 257, 64)
    decayed = {id(p) for g in param_groups(model, 0.1) if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    assert decayed_names and all(n.endswith(".weight") for n in decayed_names)
    assert any(n.endswith("A_w") for n in model.no_weight_decay())
    assert any(n.endswith("shift_B") for n in model.no_weight_decay())


def test_state_size_bytes_is_the_recurrent_state():
    from blagpt_plugin_rwkv7.model import RWKV7, RWKV7Config

    model = RWKV7(RWKV7Config(**PRESETS["tiny"]), 257, 64).eval()
    with torch.no_grad():
        _, state = model.forward_with_state(torch.zeros(1, 16, dtype=torch.long))
    tensors = [t for layer in state for t in layer if torch.is_tensor(t)]
    assert model.state_size_bytes(16) == sum(t.numel() * 4 for t in tensors) == model.state_size_bytes(64)
