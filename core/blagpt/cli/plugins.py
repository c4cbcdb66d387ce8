"""The plugin commands of the ``blagpt`` CLI: ``plugins`` (list, ``install``, ``uninstall``) and
``new-plugin``.

They register on the ``blagpt`` group when :mod:`blagpt.cli` is imported; like the rest of the
CLI, only click is imported at module level.
"""

from __future__ import annotations

import os
import sys

import click

from . import CONTEXT, _table, cli
from ..errors import BlagptError


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--requirements", is_flag=True, help="Print installed plugin distributions as pip requirements.")
@click.pass_context
def plugins(ctx, requirements):
    """List plugin distributions, their versions and load errors; install or uninstall plugins.

    \b
    Examples:
      blagpt plugins
      blagpt plugins --requirements > plugins.txt    # reinstall elsewhere with pip install -r
      blagpt plugins install blagpt-plugin-rene      # pip, in the environment blagpt runs in
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..plugin.registry import get_registry

    reg = get_registry()
    if requirements:
        for dist in sorted({p.dist: p.version for p in reg.plugins.values() if p.dist not in ("blagpt", "?")}.items()):
            click.echo(f"{dist[0]}=={dist[1]}")
        return
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "PROVIDES / ERROR")]
    for info in reg.plugins.values():
        provides = ", ".join([*(f"model {m}" for m in info.models), *(f"optimizer {o}" for o in info.optimizers)])
        rows.append((info.name, info.dist, info.version, provides if info.ok else f"ERROR {info.error}"))
    _table(rows)
    for msg in reg.conflicts.values():
        click.echo(f"CONFLICT {msg}", err=True)


@plugins.command("install", context_settings=CONTEXT)
@click.argument("packages", nargs=-1)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the named packages to their newest versions.")
@click.option("-e", "--editable", "editables", multiple=True, metavar="PATH", help="Install a local plugin folder in editable mode (repeatable).")
@click.option("--find-links", "find_links", multiple=True, metavar="DIR", help="Also look for wheels in DIR (repeatable).")
@click.option("--no-index", is_flag=True, help="Do not use the package index (only --find-links).")
@click.option("--pre", is_flag=True, help="Allow pre-release versions.")
def plugins_install(packages, upgrade, editables, find_links, no_index, pre):
    """Install plugins with pip into the Python environment blagpt runs in, then list the plugins.

    PACKAGES are passed to pip as they are (names, version specifiers, wheel files). pip's exit
    code is blagpt's.

    \b
    Examples:
      blagpt plugins install blagpt-plugin-rene
      blagpt plugins install -U blagpt-plugin-rene blagpt-plugin-rwkv7
      blagpt plugins install -e ./blagpt-plugin-mylm
      blagpt plugins install --no-index --find-links dist/ blagpt-plugin-mylm
    """
    if not packages and not editables:
        raise click.UsageError("name at least one package or -e PATH")
    args = ["install", *(["--upgrade"] if upgrade else []), *(["--pre"] if pre else []), *(["--no-index"] if no_index else [])]
    for d in find_links:
        args += ["--find-links", d]
    for path in editables:
        args += ["--editable", path]
    _pip_then_list([*args, *packages])


@plugins.command("uninstall", context_settings=CONTEXT)
@click.argument("packages", nargs=-1, required=True)
def plugins_uninstall(packages):
    """Uninstall plugin distributions with pip (no confirmation), then list the plugins.

    The core distribution, blagpt, is not uninstalled this way (use pip). pip's exit code is blagpt's.

    \b
    Example:
      blagpt plugins uninstall blagpt-plugin-rene
    """
    import re

    for p in packages:
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", p)
        if m and re.sub(r"[-_.]+", "-", m.group(0)).lower() == "blagpt":
            raise BlagptError(f"plugins uninstall {p}: refusing to uninstall the core distribution 'blagpt' (it runs this command); use pip uninstall blagpt")
    _pip_then_list(["uninstall", "--yes", *packages])


def _pip_then_list(args: list[str]) -> None:
    """Run ``python -m pip ARGS`` with this interpreter; on success list the plugins from a fresh
    process (this one cannot see what was just installed); if pip fails, exit with pip's code."""
    import shlex
    import subprocess

    cmd = [sys.executable, "-m", "pip", *args]
    click.echo(f"running: {shlex.join(cmd)}", err=True)
    what, code = f"pip {args[0]}", subprocess.call(cmd)
    if code == 0:
        # -P: not the working directory on sys.path (a plugin's source folder there would look
        # installed), as for the `blagpt` script.
        what, code = "blagpt plugins", subprocess.call([sys.executable, "-P", "-m", "blagpt", "plugins"])
    if code != 0:
        err = BlagptError(f"{what} failed with exit code {code} (its messages are above)")
        err.exit_code = code
        raise err


@cli.command("new-plugin", context_settings=CONTEXT)
@click.argument("name")
@click.option("--kind", type=click.Choice(["model", "optimizer"]), default="model", show_default=True, help="What the plugin registers.")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False), help="Folder to create blagpt-plugin-NAME/ in.")
def new_plugin(name, kind, parent):
    """Write a complete, working plugin package DIR/blagpt-plugin-NAME/ to start from.

    NAME is the model's (or optimizer's) registered name, a lower-case identifier such as mylm.
    The package has a small causal transformer (or, --kind optimizer, the Lion optimizer), a
    README, and tests that run blagpt's conformance kit.

    \b
    Examples:
      blagpt new-plugin mylm
      blagpt new-plugin mylion --kind optimizer --dir ~/src
    """
    import shlex

    from ..plugin.scaffold import check_name, create_plugin

    try:
        check_name(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    folder, written = create_plugin(name, kind, parent)
    click.echo(f"wrote {folder}{os.sep}")
    for path in written:
        click.echo(f"  {path.relative_to(folder)}")
    where = str(folder) if folder.is_absolute() or str(folder).startswith(".") else f".{os.sep}{folder}"
    train_cmd = f"blagpt train --model {name}" if kind == "model" else f"blagpt train --model blagpt --optimizer {name}   # or any model in blagpt list"
    click.echo("next:")
    click.echo(f"  pip install -e {shlex.quote(where + '[test]')}")
    click.echo(f"  pytest {shlex.quote(where)}")
    click.echo(f"  {train_cmd}")
