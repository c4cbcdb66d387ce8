"""``blagpt train`` and ``blagpt sample``: one run, trained or sampled from."""

from __future__ import annotations

import math
import os
import sys

import click

from . import CONTEXT, _config_options, _resolve, cli


@cli.command(context_settings=CONTEXT)
@_config_options
@click.option("--resume", metavar="RUN", help="Continue a run: its folder, its name under train.out_dir (or a bench folder), or its MLflow run id (fetched from the tracking server when it is not here).")
@click.option("--restart", is_flag=True, help="Start a run whose name exists again from step 0, discarding its checkpoint and metrics (and replacing its MLflow run).")
@click.option("--until-step", type=click.IntRange(min=1), help="Stop (checkpointed, resumable) after this step.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow (the run folder still records everything).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def train(model, optimizer, task, config_file, sets, resume, restart, until_step, tracking_uri, no_track, progress):
    """Train a model (single process, or every rank under torchrun).

    A run's name (tracking.run_name) is taken once it has a checkpoint: --resume continues it,
    --restart starts it over. A run stopped before its first checkpoint simply starts again.

    \b
    Examples:
      blagpt train --model blagpt
      blagpt train --model blagpt --optimizer soap --set train.steps=300
      blagpt train --model rene --config run.yaml --tracking-uri http://127.0.0.1:5000
      blagpt train --model tinylm --task mqar --set task.n_pairs=8 --set train.seq_len=64
      blagpt train --resume blagpt-20261127-120000-000 --set train.steps=400
      blagpt train --resume <MLflow run id> --tracking-uri http://mlflow.example:5000   # from another machine
    """
    from ..plugin.registry import get_registry
    from ..run.resume import Resume
    from ..run.trainer import train as run_training

    extra = [f"tracking.uri={tracking_uri}"] if tracking_uri else []
    extra += ["tracking.enabled=false"] if no_track else []
    point = None
    if resume:
        if model or optimizer or task or config_file or restart:
            raise click.UsageError("--resume takes the run's own config; only --set may change it (e.g. train.steps)")
        from ..run.fetch import find_run

        out_dir = next((s.split("=", 1)[1] for s in sets if s.startswith("train.out_dir=")), "runs")
        find_run(resume, out_dir, tracking_uri, option="--resume")  # an MLflow run id not here: fetched into out_dir
        point = Resume.open(resume, out_dir)
        cfg = point.config(tuple(extra) + tuple(sets), get_registry())
    else:
        cfg = _resolve(model, optimizer, config_file, sets, extra, task=task)
    result = run_training(cfg, resume=point, until_step=until_step, progress=progress, echo=click.echo, restart=restart)
    if int(os.environ.get("RANK", "0")) == 0:
        _summary(result, cfg)
    if result.signalled:  # Ctrl-C / SIGTERM: checkpointed, and the shell is told it was interrupted
        sys.exit(130)


def _summary(result, cfg) -> None:
    from ..run.rundir import RunDir

    f = result.final
    click.echo("")
    if result.interrupted:
        click.echo(f"stopped at step {result.step}; continue with: blagpt train --resume {result.run_name}")
    if f:
        p = cfg.train.eval_on
        what = "last evaluation" if result.interrupted else "final"
        at = result.final_step if result.final_step is not None else result.step
        from ..run.evaluator import describe

        click.echo(f"{what}: {describe(f, p)} at step {at}")
    click.echo(f"run folder: {result.run_dir}")
    if result.mlflow_run_id:
        from ..run.tracking import ui_url

        meta = RunDir(result.run_dir).meta
        uri = meta.get("tracking_uri", "")
        click.echo(f"MLflow run: {result.mlflow_run_id} (experiment {cfg.tracking.experiment!r}, tracking URI {uri})")
        url = ui_url(uri, meta.get("mlflow_experiment_id"), result.mlflow_run_id)
        click.echo(f"see it: {url}" if url else f"see it: blagpt runs   or   mlflow ui --backend-store-uri {uri}")


@cli.command(context_settings=CONTEXT)
@click.option("--run", "run_ref", metavar="RUN", help="The run: its folder, its name (under --out-dir or a bench folder in it), or its MLflow run id (fetched from --tracking-uri when it is not here).")
@click.option("--weights", metavar="DIR", help="An export folder (blagpt export) instead of --run.")
@click.option("--prompt", default="", help="Text to continue (default: start a new document after end-of-text).")
@click.option("--tokens", default=256, show_default=True, type=int, help="Most tokens to generate (stops earlier at end-of-text).")
@click.option("--temperature", default=0.8, show_default=True, type=float, help="Softmax temperature; 0 picks the most likely token (greedy).")
@click.option("--top-k", type=int, help="Sample only among the K most likely tokens (default: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sampling generator (same seed, same text).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run the model.")
@click.option("--out-dir", default="runs", show_default=True, help="Folder of run folders (train.out_dir of the run).")
@click.option("--no-cache", is_flag=True, help="Run the full forward for every token, not the model's decoding cache (for comparison).")
@click.option("--tracking-uri", help="MLflow server to fetch a run from by its run id when it is not under --out-dir (default: $MLFLOW_TRACKING_URI).")
def sample(run_ref, weights, prompt, tokens, temperature, top_k, seed, device, out_dir, no_cache, tracking_uri):
    """Generate text from a run's checkpoint, printed as it is generated.

    \b
    Examples:
      blagpt sample --run blagpt-20261127-120000-000 --prompt "ROMEO:"
      blagpt sample --run runs/blagpt-20261127-120000-000 --tokens 500 --temperature 1 --top-k 50 --seed 3
      blagpt sample --run <MLflow run id> --temperature 0        # greedy
      blagpt sample --weights exports/blagpt-mini --prompt "ROMEO:" --no-cache
      blagpt sample --run <MLflow run id> --tracking-uri http://mlflow.example:5000   # fetched into --out-dir
    """
    from ..errors import ConfigError

    if tokens < 1:
        raise ConfigError(f"--tokens: expected an integer >= 1, got {tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature: expected a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k: expected an integer >= 1, got {top_k}")
    import torch

    from ..run.sample import decoding_cache, encode_prompt, generate, load_model, stream_text

    if run_ref is not None and weights is None:
        from ..run.fetch import find_run

        find_run(run_ref, out_dir, tracking_uri)  # an MLflow run id not here: fetched into out_dir
    run = load_model(run_ref, weights, out_dir, device)
    ids, cut = encode_prompt(prompt, run.tokenizer, run.context)
    how = "full forward per token" if no_cache or decoding_cache(run.model) is None else "decoding cache"
    click.echo(
        f"{run.run_dir.name}: model {run.config.model.name} at step {run.step}, {run.tokenizer.name} tokens, on {run.device.type}, {how}",
        err=True,
    )
    if cut:
        click.echo(f"the prompt is {len(ids) + cut} tokens; keeping its last {len(ids)} (the run's train.seq_len)", err=True)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    click.echo(prompt, nl=False)
    stream_text(
        generate(run.model, ids, tokens, context=run.context, vocab_size=run.tokenizer.vocab_size, eot=run.tokenizer.eot,
                 temperature=temperature, top_k=top_k, generator=gen, device=run.device, autocast_bf16=run.autocast_bf16,
                 use_cache=not no_cache),
        run.tokenizer,
        lambda text: click.echo(text, nl=False),
    )
    click.echo("")
