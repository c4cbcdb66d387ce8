"""blagpt's conformance kit: the checks every model, optimizer and tokenizer plugin should pass, run from
the plugin's own pytest suite, one test per check (in the style of scikit-learn's
``parametrize_with_checks``)::

    from blagpt.testing import ModelTarget, parametrize_with_checks

    @parametrize_with_checks(
        [ModelTarget("mymodel", config={"preset": "tiny"}, tokenizer="bytes", seq_len=24)],
        expected_failures={"compile": "its custom autograd kernel does not trace (issue 12)"},
    )
    def test_conformance(target, check):
        check(target)

``MODEL_CHECKS``, ``OPTIMIZER_CHECKS`` and ``TOKENIZER_CHECKS`` (for a ``TokenizerTarget``, by
its reference) map check names to check functions, in the order they run; each takes a target and raises ``AssertionError`` saying what was wrong. Every check is also
importable as ``check_<name>`` (``check_state_dict_round_trip`` and ``check_compile`` dispatch on
the target's kind). Checks run on the CPU in fp32, offline; optimizer targets train the kit's
probe model (:mod:`blagpt.testing.probe`). Targets must be deterministic (dropout off).

pytest is imported only by :func:`parametrize_with_checks`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from . import model_checks, optimizer_checks
from .config_checks import check_config_rejects_bad_values, check_config_yaml_round_trip, check_entry_point
from .model_checks import (
    check_builds_on_cpu,
    check_cached_decoding,
    check_causal,
    check_gradients_reach_every_parameter,
    check_loss_at_init,
    non_embedding_params,
)
from .optimizer_checks import check_param_groups
from .run_checks import (
    check_checkpoint_resume,
    check_ddp_matches_single_process,
    check_fsdp_matches_single_process,
    check_loss_falls,
    check_reports_bpb,
)
from .targets import ModelTarget, OptimizerTarget, validate_expected_failures
from .tokenizer_checks import TokenizerTarget, check_byte_counts, check_prepare_is_exact, check_round_trip, check_tokenizer_loads

Check = Callable[[Any], Any]

MODEL_CHECKS: dict[str, Check] = {
    "entry_point": check_entry_point,
    "config_yaml_round_trip": check_config_yaml_round_trip,
    "config_rejects_bad_values": check_config_rejects_bad_values,
    "builds_on_cpu": check_builds_on_cpu,
    "loss_at_init": check_loss_at_init,
    "gradients_reach_every_parameter": check_gradients_reach_every_parameter,
    "causal": check_causal,
    "cached_decoding": check_cached_decoding,
    "state_dict_round_trip": model_checks.check_state_dict_round_trip,
    "checkpoint_resume": check_checkpoint_resume,
    "ddp_matches_single_process": check_ddp_matches_single_process,
    "fsdp_matches_single_process": check_fsdp_matches_single_process,
    "reports_bpb": check_reports_bpb,
    "loss_falls": check_loss_falls,
    "compile": model_checks.check_compile,
}

OPTIMIZER_CHECKS: dict[str, Check] = {
    "entry_point": check_entry_point,
    "config_yaml_round_trip": check_config_yaml_round_trip,
    "config_rejects_bad_values": check_config_rejects_bad_values,
    "param_groups": check_param_groups,
    "loss_falls": check_loss_falls,
    "state_dict_round_trip": optimizer_checks.check_state_dict_round_trip,
    "checkpoint_resume": check_checkpoint_resume,
    "ddp_matches_single_process": check_ddp_matches_single_process,
    "fsdp_matches_single_process": check_fsdp_matches_single_process,
    "compile": optimizer_checks.check_compile,
}


TOKENIZER_CHECKS: dict[str, Check] = {
    "tokenizer_loads": check_tokenizer_loads,
    "round_trip": check_round_trip,
    "byte_counts": check_byte_counts,
    "prepare_is_exact": check_prepare_is_exact,
}


def checks_for(kind: str) -> dict[str, Check]:
    """``MODEL_CHECKS``, ``OPTIMIZER_CHECKS`` or ``TOKENIZER_CHECKS`` by the target's kind."""
    return {"model": MODEL_CHECKS, "optimizer": OPTIMIZER_CHECKS, "tokenizer": TOKENIZER_CHECKS}[kind]


def _by_kind(name: str) -> Check:
    def check(target):
        return checks_for(target.kind)[name](target)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = (
        f"The ``{name}`` check of the target's kind: ``model_checks.check_{name}`` for a ModelTarget, "
        f"``optimizer_checks.check_{name}`` for an OptimizerTarget."
    )
    return check


check_state_dict_round_trip = _by_kind("state_dict_round_trip")
check_compile = _by_kind("compile")


def parametrize_with_checks(
    targets: Iterable[ModelTarget | OptimizerTarget | TokenizerTarget], expected_failures: Mapping[str, str] | None = None
):
    """A ``pytest.mark.parametrize`` over ``(target, check)``: every check of every target's kind,
    with ids ``"<target id>-<check name>"``.

    ``expected_failures`` (check name -> reason) applies to every target whose kind has that
    check, merged with each target's own ``expected_failures`` (the target's reason wins). Such a
    check is marked ``xfail(strict=True, reason=...)``, so a check that starts passing fails the
    suite until the entry is removed. An unknown check name is an error (typo protection), and so
    are two targets with the same id.
    """
    import pytest

    from ..errors import BlagptError

    targets = list(targets)
    if not targets:
        raise BlagptError("parametrize_with_checks: expected at least one ModelTarget or OptimizerTarget, got none")
    for t in targets:
        if not isinstance(t, (ModelTarget, OptimizerTarget, TokenizerTarget)):
            raise BlagptError(f"parametrize_with_checks: expected ModelTarget, OptimizerTarget or TokenizerTarget objects, got {t!r}")
    known = {name: None for t in targets for name in checks_for(t.kind)}
    common = validate_expected_failures(expected_failures, known, "parametrize_with_checks: expected_failures")
    ids = [t.target_id for t in targets]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise BlagptError(f"parametrize_with_checks: several targets have the id {dupes[0]!r}; give them distinct id=")
    params = []
    for t in targets:
        checks = checks_for(t.kind)
        failures = {**{k: v for k, v in common.items() if k in checks}, **t.expected_failures}
        for name, fn in checks.items():
            marks = [pytest.mark.xfail(strict=True, reason=failures[name])] if name in failures else []
            params.append(pytest.param(t, fn, id=f"{t.target_id}-{name}", marks=marks))
    return pytest.mark.parametrize(("target", "check"), params)


__all__ = [
    "non_embedding_params",
    "MODEL_CHECKS",
    "OPTIMIZER_CHECKS",
    "TOKENIZER_CHECKS",
    "ModelTarget",
    "OptimizerTarget",
    "TokenizerTarget",
    "checks_for",
    "parametrize_with_checks",
    *sorted({f"check_{n}" for n in (*MODEL_CHECKS, *OPTIMIZER_CHECKS, *TOKENIZER_CHECKS)}),
]
