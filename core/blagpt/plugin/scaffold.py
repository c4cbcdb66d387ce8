"""``blagpt new-plugin``: write a complete, working plugin package from the core's templates.

The templates are package data under ``blagpt/templates/`` with a ``.tmpl`` suffix (so no tool
imports or collects them): ``common/`` is shared by both kinds, ``model/`` and ``optimizer/`` hold
each kind's package and tests. A template path maps to the output path by dropping ``.tmpl``,
renaming the folder ``package`` to the import package and ``gitignore`` to ``.gitignore``.
Placeholders are ``{{key}}`` with the keys of :func:`names`; an unknown key is an error, so a
template cannot ship with a placeholder left in it.

Only the standard library is imported: the command must stay as fast as ``blagpt --help``.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

from .. import __version__
from ..errors import BlagptError

KINDS = ("model", "optimizer")
NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def check_name(name: str) -> None:
    """Raise ``ValueError`` (its message names NAME and what is expected) unless ``name`` is usable.

    A usable name is a lower-case Python identifier (``[a-z][a-z0-9_]*``), not a keyword and not
    ``blagpt``: it is the registered model/optimizer name, the entry-point name and the suffix of
    the import package ``blagpt_plugin_<name>``.
    """
    if not NAME_RE.fullmatch(name or ""):
        raise ValueError(f"{name!r}: expected a lower-case identifier matching [a-z][a-z0-9_]*, e.g. mylm")
    if keyword.iskeyword(name):
        raise ValueError(f"{name!r} is a Python keyword; expected a lower-case identifier that is not one")
    if name == "blagpt":
        raise ValueError("'blagpt' is the core's own name; expected another name")


def names(name: str) -> dict[str, str]:
    """The placeholder values for plugin ``name`` (assumed valid: see :func:`check_name`)."""
    return {
        "name": name,
        "package": f"blagpt_plugin_{name}",
        "dist": f"blagpt-plugin-{name.replace('_', '-')}",
        "Class": "".join(part.capitalize() for part in name.split("_")),
        "blagpt_version": __version__,
    }


def _templates(kind: str) -> list[tuple[str, str]]:
    """(relative template path, text) of the ``common`` templates and those of ``kind``."""
    root = resources.files("blagpt") / "templates"
    found: list[tuple[str, str]] = []

    def walk(node, rel: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            path = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir():
                walk(child, path)
            elif child.name.endswith(".tmpl"):
                found.append((path, child.read_text(encoding="utf-8")))

    for part in ("common", kind):
        if not (root / part).is_dir():
            raise BlagptError(f"{root / part}: blagpt's plugin templates are missing from this installation; reinstall blagpt")
        walk(root / part, "")
    return found


def render(text: str, values: dict[str, str], where: str = "template") -> str:
    """Replace every ``{{key}}``; an unknown key is an error naming the template."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise BlagptError(f"{where}: unknown placeholder {{{{{m.group(1)}}}}}")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, text)


def output_path(template_path: str, values: dict[str, str]) -> str:
    """Where a template lands inside the plugin folder."""
    parts = template_path.removesuffix(".tmpl").split("/")
    parts = [values["package"] if p == "package" else ".gitignore" if p == "gitignore" else p for p in parts]
    return "/".join(parts)


def create_plugin(name: str, kind: str = "model", parent: str | Path = ".") -> tuple[Path, list[Path]]:
    """Write the plugin package ``parent/blagpt-plugin-<name>/``; returns (folder, files written).

    Refuses (``BlagptError`` naming the folder) when the folder exists and is not empty, or is a
    file; nothing is written then. ``name`` must pass :func:`check_name` (``ValueError``).
    """
    check_name(name)
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    values = names(name)
    folder = Path(parent) / values["dist"]
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "exists and is not empty"
        raise BlagptError(f"{folder}: {what}; choose another --dir or NAME (nothing was written)")
    planned = [(output_path(p, values), render(text, values, p)) for p, text in _templates(kind)]
    written = []
    for rel, text in planned:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return folder, written
