"""``blagpt export``: a run's weights as safetensors, with what rebuilding its model needs."""

from __future__ import annotations

import click

from . import CONTEXT, cli


@cli.command(context_settings=CONTEXT)
@click.option("--run", "run_ref", required=True, metavar="RUN", help="The run: its folder, its name (under --out-dir or a bench folder in it), or its MLflow run id.")
@click.option("--out", "out", required=True, metavar="DIR", help="The export folder to write (new or empty).")
@click.option("--force", is_flag=True, help="Replace DIR even if it is not empty (only once the new export is complete).")
@click.option("--out-dir", default="runs", show_default=True, help="Folder of run folders (train.out_dir of the run).")
@click.option("--tracking-uri", help="MLflow server to fetch a run from by its run id when it is not under --out-dir (default: $MLFLOW_TRACKING_URI).")
def export(run_ref, out, force, out_dir, tracking_uri):
    """Export a run's checkpoint: model.safetensors (the weights), config.yaml (the resolved
    config) and export.json (model, plugin and version, tokenizer, context, source run and step).

    The folder is written to a temp folder and renamed into place. Sample from it with
    `blagpt sample --weights DIR` where the same plugin version is installed. Needs the optional
    safetensors package: pip install 'blagpt[export]'.

    \b
    Examples:
      blagpt export --run blagpt-20261127-120000-000 --out exports/blagpt-mini
      blagpt export --run <MLflow run id> --out exports/blagpt-mini --force
      blagpt sample --weights exports/blagpt-mini --prompt "ROMEO:"
    """
    from ..run.export import WEIGHTS_FILE, export_run
    from ..run.fetch import find_run

    find_run(run_ref, out_dir, tracking_uri)  # an MLflow run id not here: fetched into out_dir

    path = export_run(run_ref, out, out_dir, force=force)
    size = (path / WEIGHTS_FILE).stat().st_size
    click.echo(f"exported to {path}/ ({WEIGHTS_FILE} {size / 1e6:.1f} MB, config.yaml, export.json)")
