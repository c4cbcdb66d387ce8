"""blagpt plugin: the BlaGPT transformer (see ``model.py`` for the model and its papers).

Registers the model ``blagpt`` with presets: ``blagpt`` (the original BlaGPT's best combination),
``gpt2`` (plain GPT-2, every technique off, the ablation baseline), ``tokenformer`` (Pattention
projections and MLP); sizes ``tiny``, ``mini``, ``small``, ``124m``, ``350m``. Combine them with
``+``: ``model.preset=gpt2+tiny``. Its ``compute_loss`` trains every multi-token-prediction head
and reports the next-token head's NLL, so runs with and without MTP compare.
"""

from __future__ import annotations

from blagpt import ConfigError, LossOutput, ModelSpec, hookimpl

from .model import BlaGPT, BlaGPTConfig, Pattention, grow_parameter_tokens, parameter_count

__all__ = ["BlaGPT", "BlaGPTConfig", "Pattention", "grow_parameter_tokens", "parameter_count", "PRESETS"]

NAME = "blagpt"

TECHNIQUES_OFF = {
    "n_kv_heads": None,
    "activation": "gelu",
    "mlp_ratio": 4.0,
    "mlp_hidden": None,
    "bias": True,
    "qkv_bias": False,
    "norm_type": "layernorm",
    "norm_position": "pre",
    "qk_norm": False,
    "pos_encoding": "learned",
    "tie_embeddings": True,
    "logit_softcap": None,
    "attn_softcap": None,
    "zero_init_output": False,
    "n_predict": 1,
    "mtp_weights": None,
    "pattention_attn": False,
    "pattention_mlp": False,
    "attn_param_tokens": None,
    "mlp_param_tokens": None,
}

PRESETS = {
    # The original BlaGPT's best configuration (erogol/BlaGPT best_model_config.py): RMSNorm pre-norm,
    # RoPE (theta 1e4), GQA with 4 KV heads, QK-norm, SwiGLU, tied embeddings, zero-init output
    # projections, biases on. The MLP is widened (mlp_ratio 4.75) to give back the parameters GQA
    # saves, so that at 124m it matches GPT-2 small's count.
    "blagpt": {
        **TECHNIQUES_OFF,
        "n_kv_heads": 4,
        "activation": "swiglu",
        "mlp_ratio": 4.75,
        "norm_type": "rmsnorm",
        "qk_norm": True,
        "pos_encoding": "rope",
        "zero_init_output": True,
    },
    # GPT-2 small-like: learned positions, LayerNorm pre-norm, GELU MLP 4x, biases, tied embeddings.
    "gpt2": dict(TECHNIQUES_OFF),
    # Tokenformer: every projection and the MLP are Pattention layers, sized (by default) to the
    # parameters of the dense layers they replace.
    "tokenformer": {
        **TECHNIQUES_OFF,
        "bias": False,
        "norm_type": "rmsnorm",
        "pos_encoding": "rope",
        "qk_norm": True,
        "pattention_attn": True,
        "pattention_mlp": True,
    },
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4},
    # Matched-size benches: 150k parameters without embeddings (the core's n_params_non_embedding,
    # bytes, seq_len 256) within 10 % under every technique preset: gpt2+bench 155,840,
    # blagpt+bench 163,384, tokenformer+bench 154,040. 8 heads so that blagpt's 4 KV heads save
    # what its wider SwiGLU MLP adds (4 heads: 176k). The byte vocabulary is padded to 384 rows,
    # not 320: GPT-2's MLP is 320 wide at d_model 80, and the count, which finds output heads by
    # their width, would take it for one.
    "bench": {"n_layers": 2, "d_model": 80, "n_heads": 8, "vocab_multiple": 128},
    "mini": {"n_layers": 4, "d_model": 128, "n_heads": 4},
    "small": {"n_layers": 6, "d_model": 384, "n_heads": 8},
    "124m": {"n_layers": 12, "d_model": 768, "n_heads": 12},
    "350m": {"n_layers": 24, "d_model": 1024, "n_heads": 16},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            NAME,
            BlaGPTConfig,
            "BlaGPT: GPT + MTP, GQA, soft-capping, QK-norm, sandwich norm, Tokenformer (presets blagpt, gpt2, tokenformer)",
            tokenizers=("gpt2", "bytes", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != NAME:
        return None
    if ctx.max_seq_len < config.n_predict:  # the last head would have no target: a NaN loss or a crash
        raise ConfigError(
            f"model.n_predict: predicting {config.n_predict} tokens ahead needs train.seq_len >= {config.n_predict}, "
            f"got train.seq_len={ctx.max_seq_len}"
        )
    return BlaGPT(config, ctx.vocab_size, ctx.max_seq_len)


@hookimpl
def compute_loss(name, model, batch, config):
    """Weighted mean of the heads' mean NLLs (computed by the model, so it compiles with it);
    ``nll`` (validation loss, bpb) is the next-token head's, each head's mean NLL is a metric."""
    if name != NAME:
        return None
    loss, nlls = model(batch.inputs, targets=batch.targets)
    metrics = {f"loss_head{i}": n.mean() for i, n in enumerate(nlls)} if len(nlls) > 1 else {}
    return LossOutput(loss=loss, nll=nlls[0], metrics=metrics)
