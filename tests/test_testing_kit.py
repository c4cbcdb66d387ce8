"""blagpt.testing, the conformance kit: it passes on the test model (tinylm) and the built-in
optimizer (adamw), and each check fails, with a message saying why, on a model or optimizer
broken in exactly the property it checks (fabricated plugins, installed as real distributions).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from blagpt.errors import BlagptError, ConfigError
from blagpt.testing import (
    MODEL_CHECKS,
    OPTIMIZER_CHECKS,
    ModelTarget,
    OptimizerTarget,
    check_causal,
    check_compile,
    check_config_rejects_bad_values,
    check_ddp_matches_single_process,
    check_loss_falls,
    parametrize_with_checks,
)

from conftest import fake_plugin

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0}
TINYLM = ModelTarget("tinylm", config=TINY, tokenizer="bytes")
ADAMW = OptimizerTarget("adamw", config={"lr": 3e-3})


@parametrize_with_checks([TINYLM, ADAMW])
def test_the_kit_passes_on_tinylm_and_adamw(target, check):
    check(target)


# -- fabricated broken plugins --------------------------------------------------------------

BROKEN = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from typing import Any
from pydantic import ConfigDict, Field, field_validator

from blagpt import LossOutput, ModelConfig, ModelSpec, OptimizerConfig, OptimizerSpec, hookimpl

CALLS = [0]  # a process-wide counter (what global_counter makes the forward pass depend on)


class BrokenConfig(ModelConfig):
    name: str = Field(default="brokenlm", description="Registered model name.")
    d_model: int = Field(default=16, gt=0, description="Width.")
    leak_future: bool = Field(default=False, description="Attention sees every position (not causal).")
    init_std: float = Field(default=0.02, gt=0, description="Std of every weight (large: loss at init far from ln V).")
    unused_param: bool = Field(default=False, description="Hold a parameter the loss never uses.")
    hidden_buffer: bool = Field(default=False, description="Add a random non-persistent buffer to the logits.")
    global_counter: bool = Field(default=False, description="Training forwards drift with a process-wide call count.")
    nan_nll: bool = Field(default=False, description="compute_loss reports NaN nll (the loss stays finite).")
    float64: bool = Field(default=False, description="Build the model in float64.")
    differs_compiled: bool = Field(default=False, description="Scale the logits when compiled.")
    forgetful_cache: bool = Field(default=False, description="The decoding cache forgets earlier tokens.")
    no_cache: bool = Field(default=False, description="init_cache says this config cannot decode incrementally.")


class LaxConfig(ModelConfig):
    model_config = ConfigDict(extra="allow")
    name: str = Field(default="brokenlm-lax", description="Registered model name.")
    anything: Any = None  # accepts any value, and has no description


class DriftConfig(BrokenConfig):
    name: str = Field(default="brokenlm-drift", description="Registered model name.")

    @field_validator("init_std")
    @classmethod
    def _halve(cls, v):  # a validator that changes its value on every pass
        return v / 2


class BrokenLM(nn.Module):
    def __init__(self, cfg, vocab, max_seq_len):
        super().__init__()
        self.cfg, d = cfg, cfg.d_model
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(max_seq_len, d)
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, vocab)
        for p in self.parameters():
            nn.init.normal_(p, std=cfg.init_std)
        if cfg.unused_param:
            self.unused = nn.Parameter(torch.ones(3))
        if cfg.hidden_buffer:
            self.register_buffer("noise", torch.randn(vocab), persistent=False)
        if cfg.float64:
            self.double()

    def init_cache(self, batch_size):
        return None if self.cfg.no_cache else {"ids": None}

    def forward(self, idx, cache=None):
        if cache is not None:  # a cache that re-reads every earlier token (correct unless forgetful)
            past = cache["ids"]
            cache["ids"] = idx if past is None or self.cfg.forgetful_cache else torch.cat([past, idx], dim=1)
            return self.forward(cache["ids"])[:, -idx.shape[1]:]
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=not self.cfg.leak_future).squeeze(1)
        logits = self.head(x + y)
        if self.cfg.hidden_buffer:
            logits = logits + self.noise
        if self.cfg.global_counter and self.training:
            CALLS[0] += 1
            logits = logits + 0.01 * CALLS[0] * F.one_hot(torch.tensor(0), logits.shape[-1])
        if self.cfg.differs_compiled and torch.compiler.is_compiling():
            logits = logits * 1.5
        return logits


class SGDConfig(OptimizerConfig):
    name: str = Field(default="brokensgd", description="Registered optimizer name.")
    lr: float = Field(default=0.5, gt=0, description="Learning rate.")
    skip_head: bool = Field(default=False, description="Leave the head out of every param group.")
    foreign: bool = Field(default=False, description="Add a tensor that is not the model's to the param groups.")
    no_lr: bool = Field(default=False, description="Param groups without a learning rate.")
    hidden_state: bool = Field(default=False, description="Keep a step count outside state_dict().")
    compile_scale: float = Field(default=1.0, gt=0, description="Scale the update when the run compiles.")


class SGD(torch.optim.Optimizer):
    def __init__(self, params, lr, hidden_state, scale):
        super().__init__(params, dict(lr=lr))
        self.hidden_state, self.scale, self.count = hidden_state, scale, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.count += 1
        boost = 1 + 0.1 * self.count if self.hidden_state else 1.0
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-g["lr"] * self.scale * boost)


@hookimpl
def register_models(register):
    register(ModelSpec("brokenlm", BrokenConfig, "broken on purpose", tokenizers=("bytes",)))
    register(ModelSpec("brokenlm-lax", LaxConfig, "a config that accepts anything", tokenizers=("bytes",)))
    register(ModelSpec("brokenlm-drift", DriftConfig, "a config that drifts", tokenizers=("bytes",)))
    register(ModelSpec("brokenlm-nocompile", BrokenConfig, "cannot compile", tokenizers=("bytes",), supports_compile=False))


@hookimpl
def register_optimizers(register):
    register(OptimizerSpec("brokensgd", SGDConfig, "SGD, broken on purpose"))
    register(OptimizerSpec("brokensgd-compiles", SGDConfig, "SGD that says it compiles", supports_compile=True))


@hookimpl
def build_model(name, config, ctx):
    if name.startswith("brokenlm"):
        cfg = config if isinstance(config, BrokenConfig) else BrokenConfig()
        return BrokenLM(cfg, ctx.vocab_size, ctx.max_seq_len)


@hookimpl
def build_optimizer(name, model, config, ctx):
    if not name.startswith("brokensgd"):
        return None
    named = dict(model.named_parameters())
    params = [p for n, p in named.items() if not (config.skip_head and n.startswith("head"))]
    groups = [{"params": params}]
    if config.foreign:
        groups.append({"params": [torch.nn.Parameter(torch.zeros(2))]})
    scale = config.compile_scale if ctx.compile else 1.0
    return SGD(groups, None if config.no_lr else config.lr, config.hidden_state, scale)


@hookimpl
def compute_loss(name, model, batch, config):
    if name == "brokenlm" and config.nan_nll:
        logits = model(batch.inputs)
        nll = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none").view_as(batch.targets)
        return LossOutput(loss=nll.mean(), nll=nll * float("nan"))
'''


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    """The fabricated plugin, installed as a distribution on sys.path for this module's tests."""
    site = tmp_path_factory.mktemp("site")
    fake_plugin(site, "blagpt-plugin-kitbroken", "blagpt_kit_broken", BROKEN, ep_name="kitbroken")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("blagpt_kit_broken", None)
    importlib.invalidate_caches()


def broken(**flags) -> ModelTarget:
    return ModelTarget("brokenlm", config={"d_model": 16, **flags}, seq_len=16)


# (check, flags that break it, what the message says): the same check passes with no flag set
MODEL_CASES = [
    ("builds_on_cpu", {"float64": True}, r"on the CPU in fp32; these are not: wte.weight \(cpu, torch.float64\)"),
    ("loss_at_init", {"init_std": 1.0}, r"next-token nll at init is \d+\.\d+ nats, expected about ln\(257\) = 5\.549"),
    ("gradients_reach_every_parameter", {"unused_param": True}, r"no gradient reaches: unused"),
    ("causal", {"leak_future": True}, r"not causal: changing token \d+ changed the output at position 0"),
    ("state_dict_round_trip", {"hidden_buffer": True}, r"after loading the state dict, outputs differ.*non-persistent buffer"),
    ("checkpoint_resume", {"global_counter": True}, r"stopping at step 3 and resuming changed the train losses"),
    ("reports_bpb", {"nan_nll": True}, r"non-finite values \{'val/loss': nan, 'val/bpb': nan\}"),
    ("cached_decoding", {"forgetful_cache": True}, r"cached decoding \(prefill 9 then single tokens to 16\) differs from the full forward from position 9 on"),
    ("cached_decoding", {"no_cache": True}, r"BrokenLM.init_cache returned None: this config declares it cannot decode incrementally"),
    ("compile", {"differs_compiled": True}, r"compiled (loss .* != eager|per-token nll differs from eager by up to)"),
]


@pytest.mark.parametrize("name,flags,message", MODEL_CASES, ids=[f"{c[0]}-{next(iter(c[1]))}" for c in MODEL_CASES])
def test_each_model_check_fails_on_a_model_broken_in_its_property(broken_site, name, flags, message):
    MODEL_CHECKS[name](broken())  # the unbroken model passes
    with pytest.raises(AssertionError, match=message):
        MODEL_CHECKS[name](broken(**flags))


def test_config_checks_fail_on_lax_drifting_and_undocumented_configs(broken_site):
    MODEL_CHECKS["config_rejects_bad_values"](broken())
    MODEL_CHECKS["config_yaml_round_trip"](broken())
    MODEL_CHECKS["entry_point"](broken())
    lax = ModelTarget("brokenlm-lax", seq_len=16)
    with pytest.raises(AssertionError, match=r"unknown field model.conformance_unknown_field was accepted"):
        check_config_rejects_bad_values(lax)
    with pytest.raises(AssertionError, match=r"LaxConfig: fields without a description: anything"):
        MODEL_CHECKS["entry_point"](lax)
    with pytest.raises(AssertionError, match=r"model.init_std: 0\.01 -> 0\.005"):
        MODEL_CHECKS["config_yaml_round_trip"](ModelTarget("brokenlm-drift", config={"init_std": 0.02}, seq_len=16))
    with pytest.raises(AssertionError, match=r"model 'no-such-model' does not resolve through the installed entry points"):
        MODEL_CHECKS["entry_point"](ModelTarget("no-such-model"))


def test_a_model_declaring_no_compile_support_is_refused_train_compile(broken_site):
    target = ModelTarget("brokenlm-nocompile", seq_len=16)
    with pytest.raises(ConfigError, match=r"^train.compile: model 'brokenlm-nocompile' declares that it cannot be compiled"):
        target.resolve(compile=True)
    check_compile(target)  # the check verifies exactly that refusal


def test_loss_falls_fails_when_nothing_is_learnt():
    with pytest.raises(AssertionError, match=r"loss did not fall: step 1 train loss 5\.5\d\d, final val loss after 40 steps 5\.5"):
        check_loss_falls(ModelTarget("tinylm", config=TINY, tokenizer="bytes", lr=1e-7))


@pytest.mark.slow
def test_ddp_check_fails_on_a_model_with_dropout():
    with pytest.raises(AssertionError, match=r"2 gloo ranks and one process .* disagree .*Targets must be deterministic"):
        check_ddp_matches_single_process(ModelTarget("tinylm", config={**TINY, "dropout": 0.2}, tokenizer="bytes"))


def sgd(**flags) -> OptimizerTarget:
    return OptimizerTarget("brokensgd", config=flags)


def test_compile_check_of_an_optimizer_declaring_compiled_kernels(broken_site):
    OPTIMIZER_CHECKS["compile"](OptimizerTarget("brokensgd-compiles"))  # same update compiled or not: passes
    with pytest.raises(AssertionError, match=r"compiled kernels give losses .* eager ones .* differ by more than 0.001"):
        OPTIMIZER_CHECKS["compile"](OptimizerTarget("brokensgd-compiles", config={"compile_scale": 3.0}))


OPTIMIZER_CASES = [
    ("param_groups", {"skip_head": True}, r"trainable parameters in no param group: head.weight"),
    ("param_groups", {"foreign": True}, r"1 param-group entries are not trainable parameters of the model"),
    ("param_groups", {"no_lr": True}, r"param group 0 has no positive finite 'lr' \(got None\)"),
    ("state_dict_round_trip", {"hidden_state": True}, r"step 4: parameters differ after loading the optimizer's state dict"),
    ("checkpoint_resume", {"hidden_state": True}, r"stopping at step 3 and resuming changed the train losses"),
    ("compile", {"compile_scale": 1.01}, r"declares supports_compile=False .* yet its losses change with it"),
]


@pytest.mark.parametrize("name,flags,message", OPTIMIZER_CASES, ids=[f"{c[0]}-{next(iter(c[1]))}" for c in OPTIMIZER_CASES])
def test_each_optimizer_check_fails_on_an_optimizer_broken_in_its_property(broken_site, name, flags, message):
    OPTIMIZER_CHECKS[name](sgd())  # the unbroken optimizer passes
    with pytest.raises(AssertionError, match=message):
        OPTIMIZER_CHECKS[name](sgd(**flags))


# -- parametrize_with_checks -----------------------------------------------------------------


def params_of(mark):
    assert mark.name == "parametrize" and mark.args[0] == ("target", "check")
    return {p.id: p for p in mark.args[1]}


def test_one_test_per_check_with_target_and_check_ids():
    params = params_of(parametrize_with_checks([TINYLM, ADAMW, ModelTarget("rene", config={"preset": "tiny"})]))
    assert list(params) == (
        [f"tinylm-{n}" for n in MODEL_CHECKS] + [f"adamw-{n}" for n in OPTIMIZER_CHECKS] + [f"rene-tiny-{n}" for n in MODEL_CHECKS]
    )
    target, check = params["rene-tiny-causal"].values
    assert (target.name, target.config, check) == ("rene", {"preset": "tiny"}, MODEL_CHECKS["causal"])
    assert params["adamw-state_dict_round_trip"].values[1] is OPTIMIZER_CHECKS["state_dict_round_trip"]
    assert not any(p.marks for p in params.values())


def test_expected_failures_are_strict_xfails_and_the_target_reason_wins():
    target = ModelTarget("tinylm", config=TINY, expected_failures={"causal": "target's reason"})
    params = params_of(parametrize_with_checks(
        [target, ADAMW], expected_failures={"compile": "shared reason", "causal": "overridden", "param_groups": "opt only"}
    ))
    marks = {i: p.marks[0] for i, p in params.items() if p.marks}
    assert sorted(marks) == ["adamw-compile", "adamw-param_groups", "tinylm-causal", "tinylm-compile"]
    assert all(m.name == "xfail" and m.kwargs["strict"] is True for m in marks.values())
    assert marks["tinylm-causal"].kwargs["reason"] == "target's reason"
    assert marks["tinylm-compile"].kwargs["reason"] == marks["adamw-compile"].kwargs["reason"] == "shared reason"


def test_unknown_check_names_and_bad_targets_are_refused():
    with pytest.raises(BlagptError, match=r"expected_failures: unknown check 'casual'; known checks: entry_point, "):
        parametrize_with_checks([TINYLM], expected_failures={"casual": "typo"})
    with pytest.raises(BlagptError, match=r"unknown check 'param_groups'"):  # an optimizer check, model targets only
        parametrize_with_checks([TINYLM], expected_failures={"param_groups": "wrong kind"})
    with pytest.raises(BlagptError, match=r"^ModelTarget.expected_failures: unknown check 'causl'"):
        ModelTarget("tinylm", expected_failures={"causl": "typo"})
    with pytest.raises(BlagptError, match=r"check 'causal' needs a reason"):
        ModelTarget("tinylm", expected_failures={"causal": ""})
    with pytest.raises(BlagptError, match=r"several targets have the id 'tinylm'"):
        parametrize_with_checks([TINYLM, ModelTarget("tinylm")])
    with pytest.raises(BlagptError, match=r"^ModelTarget.tokenizer: expected None or a tokenizer reference such as 'bytes', got 7"):
        ModelTarget("tinylm", tokenizer=7)
    with pytest.raises(BlagptError, match=r"^ModelTarget.seq_len: expected an int >= 4, got 2"):
        ModelTarget("tinylm", seq_len=2)


def test_a_strict_xfail_that_passes_fails_the_suite(tmp_path):
    (tmp_path / "test_plugin_conformance.py").write_text(textwrap.dedent("""
        from blagpt.testing import ModelTarget, parametrize_with_checks

        @parametrize_with_checks([
            ModelTarget("tinylm", tokenizer="bytes", expected_failures={"entry_point": "said to fail, but passes"}),
            ModelTarget("no-such-model", id="ghost", expected_failures={"entry_point": "not installed"}),
        ])
        def test_conformance(target, check):
            check(target)
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "entry_point", "-rxX", "test_plugin_conformance.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    assert all(f in out for f in ("1 failed", "1 xfailed", "28 deselected")), out
    assert "[XPASS(strict)] said to fail, but passes" in out and "test_conformance[ghost-entry_point] - not installed" in out, out
