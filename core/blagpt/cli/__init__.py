"""The ``blagpt`` command line: the group, its entry point and what the commands share.

The commands live in the modules of this package, by what they work on: :mod:`.train` (train,
sample), :mod:`.info` (list, config), :mod:`.data` (data prepare), :mod:`.runs` (runs, runs sync),
:mod:`.compare` (bench, ablate, compare) and :mod:`.plugins` (plugins, new-plugin). Only click is
imported at module level: ``blagpt --help`` must stay fast however many plugins are installed, so
torch, MLflow and the plugins load inside the commands that need them.
"""

from __future__ import annotations

import logging
import sys

import click

from ..errors import BlagptError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _config_options(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one field, e.g. train.steps=100 (repeatable).")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML run config.")(f)
    f = click.option("--optimizer", help="Optimizer name (see `blagpt list`); default adamw.")(f)
    f = click.option("--model", help="Model name (see `blagpt list`).")(f)
    f = click.option("--task", help="Task (task.name): `lm` (default, language modelling on the data) or a generated task such as "
                     "`mqar` (see `blagpt list`).")(f)
    return f


def _resolve(model, optimizer, config_file, sets, extra_sets=(), task=None):
    from ..config import merge_sources, resolve
    from ..plugin.registry import get_registry

    raw = merge_sources(config_file, tuple(extra_sets) + tuple(sets))
    # --model/--optimizer name the plugin; a file may set them too, the flags win.
    for section, value in (("model", model), ("optimizer", optimizer), ("task", task)):
        if value:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raw[section] = {}
            raw[section]["name"] = value
    return resolve(raw, get_registry())


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="blagpt", prog_name="blagpt")
def cli() -> None:
    """Train language-model architectures installed as plugins, and compare them fairly.

    \b
    Examples:
      blagpt list                                   # installed models and optimizers
      blagpt train --model blagpt                   # a short run on the embedded corpus
      blagpt train --model blagpt --set train.steps=500 --set model.preset=gpt2+tiny
      torchrun --nproc_per_node 8 -m blagpt train --model blagpt --config run.yaml
      blagpt runs                                   # recent MLflow runs
    """


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _warn_broken(reg) -> None:
    for plugin in reg.plugins.values():
        if not plugin.ok:
            click.echo(f"warning: plugin {plugin.name} ({plugin.dist} {plugin.version}) not loaded: {plugin.error}", err=True)
    for msg in reg.conflicts.values():
        click.echo(f"warning: {msg}", err=True)


def _setup_logging() -> None:
    """Plugins' and the core's INFO lines (loggers named ``blagpt*``) on stderr; others from WARNING.

    MLflow's own logging setup is turned off (``MLFLOW_CONFIGURE_LOGGING=false``) so that its
    INFO lines ("Creating initial MLflow database tables", alembic's) are filtered here like any
    library's, and warnings (heavyball's notices) become one log line each. Every line is written
    above a progress bar when one is drawn, never through it.
    """
    import os
    import warnings

    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(lambda r: r.name.startswith("blagpt") or r.levelno >= logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    def one_line(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        logging.getLogger("blagpt").warning("warning: %s: %s (%s:%d)", category.__name__, text, os.path.basename(filename), lineno)

    warnings.showwarning = one_line


class _ConsoleHandler(logging.StreamHandler):
    """stderr, but through ``tqdm.write`` while a progress bar is drawn (the bar is redrawn below)."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_mod = sys.modules.get("tqdm")
        if tqdm_mod is None or not getattr(tqdm_mod.tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm_mod.tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - as logging does: a handler never raises
            self.handleError(record)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, not a traceback."""
    _setup_logging()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except BlagptError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


from . import compare, data, eval, export, info, plugins, runs, train  # noqa: E402,F401 - each registers its commands on `cli`

if __name__ == "__main__":
    main()
