"""Checks of registration and configuration, for model and optimizer targets alike.

Each takes a target, raises ``AssertionError`` saying what was wrong, and returns nothing.
"""

from __future__ import annotations

import copy
import re
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
UNKNOWN_FIELD = "conformance_unknown_field"
# Values no typed field should take, tried in order until one is refused (a field that takes
# mappings is then given a list, and so on); a field that accepts all of them accepts anything.
WRONG_VALUES = ({"bad": 1}, ["bad", 1], "not a valid value \u2639")


def _spec(target, reg):
    from ..plugin.registry import PluginError

    lookup = reg.model_spec if target.kind == "model" else reg.optimizer_spec
    try:
        return lookup(target.name)
    except PluginError as e:
        raise AssertionError(f"{target.kind} {target.name!r} does not resolve through the installed entry points: {e}") from None


def check_entry_point(target) -> None:
    """``name`` resolves through the real entry points (group ``blagpt``), its owner is an
    installed distribution that declares that entry point, the spec is valid (registered name,
    one-line description, defaults that validate, presets of known fields) and every config
    field has a description."""
    from pydantic import ValidationError

    from ..plugin.registry import CORE_DIST, GROUP

    reg = target.registry()
    spec = _spec(target, reg)
    info = reg.owner_of(target.kind, target.name)
    assert info.ok, f"{target.kind} {target.name!r}: its plugin {info.name} failed: {info.error}"
    try:
        dist = distribution(info.dist)
    except PackageNotFoundError:
        raise AssertionError(
            f"{target.kind} {target.name!r} is registered by {info.name!r}, whose distribution {info.dist!r} is not installed"
        ) from None
    if info.dist != CORE_DIST:
        declared = [ep.name for ep in dist.entry_points if ep.group == GROUP]
        assert info.name in declared, (
            f"distribution {info.dist} does not declare the entry point {info.name!r} in group {GROUP!r} (it declares {declared})"
        )
    assert spec.name == target.name, f"registered as {spec.name!r}, looked up as {target.name!r}"
    assert NAME_RE.match(spec.name), f"{target.kind} name {spec.name!r}: expected lower case letters, digits, '.', '_', '-'"
    assert spec.description.strip() and "\n" not in spec.description.strip(), (
        f"{target.kind} {spec.name!r}: description must be one non-empty line, got {spec.description!r}"
    )
    fields = spec.config.model_fields
    undocumented = [f for f, fi in fields.items() if not (fi.description or "").strip()]
    assert not undocumented, f"{spec.config.__name__}: fields without a description: {', '.join(undocumented)}"
    name_default = fields["name"].default if "name" in fields else None
    assert not isinstance(name_default, str) or name_default == spec.name, (
        f"{spec.config.__name__}.name defaults to {name_default!r}, not the registered name {spec.name!r}"
    )
    try:
        spec.config(name=spec.name)
    except ValidationError as e:
        raise AssertionError(f"{spec.config.__name__}: the defaults do not validate: {' '.join(str(e).split())[:300]}") from None
    for preset, values in getattr(spec, "presets", {}).items():
        unknown = sorted(set(values) - set(fields))
        assert not unknown, f"preset {preset!r} sets fields {spec.config.__name__} does not have: {', '.join(unknown)}"
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is not None:
        assert spec.accepts(tokenizer), f"the target's tokenizer {tokenizer!r} is not one the spec accepts ({spec.tokenizers})"


def check_config_yaml_round_trip(target) -> None:
    """The resolved run config, dumped to YAML (as ``config.yaml`` in a run folder), read back
    with ``merge_sources`` and resolved again, is equal, field for field of the target's own
    section too (no validator that changes values on a second pass, no type lost in YAML)."""
    from ..config import merge_sources, resolve

    r = target.resolve()
    text = r.cfg.to_yaml()
    with tempfile.TemporaryDirectory(prefix="blagpt-testing-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        again = resolve(merge_sources(file=path), r.registry)
    one, two = r.cfg.flat(), again.flat()
    diff = [f"{k}: {one.get(k)!r} -> {two.get(k)!r}" for k in sorted(set(one) | set(two)) if one.get(k) != two.get(k)]
    assert not diff, "resolving the dumped config again changed: " + "; ".join(diff[:8])
    a, b = getattr(r.cfg, target.kind), getattr(again, target.kind)
    assert type(a) is type(b), f"{target.kind} section: {type(a).__name__} became {type(b).__name__}"
    changed = [f for f in type(a).model_fields if getattr(a, f) != getattr(b, f)]
    assert not changed, f"{target.kind} fields changed by the round trip: " + ", ".join(
        f"{f}: {getattr(a, f)!r} -> {getattr(b, f)!r}" for f in changed
    )


def _names(path: str, message: str) -> bool:
    """Whether ``message`` names ``path`` (or a sub-path of it, e.g. a union member's)."""
    return re.search(rf"(?:^|[;\s]){re.escape(path)}(?=[:\s\[.]|$)", message) is not None


def check_config_rejects_bad_values(target) -> None:
    """An unknown field in the target's section is a ``ConfigError`` naming ``<section>.<field>``,
    and so is, for every field of the section, a value of a wrong type (a mapping, or for fields
    that take mappings a list, then a string)."""
    from ..config import resolve
    from ..errors import ConfigError

    reg = target.registry()
    spec = _spec(target, reg)
    section = target.kind
    base = target.run_raw()

    def attempt(field: str, value) -> str | None:
        raw = copy.deepcopy(base)
        raw[section][field] = value
        try:
            resolve(raw, reg)
        except ConfigError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - any other exception is the finding
            raise AssertionError(
                f"{section}.{field} = {value!r} raised {type(e).__name__} instead of a ConfigError: {' '.join(str(e).split())[:300]}"
            ) from None
        return None

    msg = attempt(UNKNOWN_FIELD, 1)
    assert msg is not None, f"an unknown field {section}.{UNKNOWN_FIELD} was accepted (the config class must forbid extra fields)"
    assert _names(f"{section}.{UNKNOWN_FIELD}", msg), f"the error for an unknown field does not name {section}.{UNKNOWN_FIELD}: {msg}"
    for field in spec.config.model_fields:
        for value in WRONG_VALUES:
            msg = attempt(field, value)
            if msg is not None:
                assert _names(f"{section}.{field}", msg), f"{section}.{field} = {value!r} is refused, but the error does not name {section}.{field}: {msg}"
                break
        else:
            raise AssertionError(f"{section}.{field} accepted every wrong value tried ({', '.join(map(repr, WRONG_VALUES))}); give it a type")
