"""The ``blagpt`` command line.

Only click is imported at module level: ``blagpt --help`` must stay fast however many plugins
are installed, so torch, MLflow and the plugins load inside the commands that need them.
"""

from __future__ import annotations

import os
import sys

import click

from .errors import BlagptError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _config_options(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one field, e.g. train.steps=100 (repeatable).")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML run config.")(f)
    f = click.option("--optimizer", help="Optimizer name (see `blagpt list`); default adamw.")(f)
    f = click.option("--model", help="Model name (see `blagpt list`).")(f)
    return f


def _resolve(model, optimizer, config_file, sets, extra_sets=()):
    from .config import merge_sources, resolve
    from .plugins import get_registry

    raw = merge_sources(config_file, tuple(extra_sets) + tuple(sets))
    # --model/--optimizer name the plugin; a file may set them too, the flags win.
    for section, value in (("model", model), ("optimizer", optimizer)):
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


@cli.command(context_settings=CONTEXT)
@_config_options
@click.option("--resume", metavar="RUN", help="Continue a run: its folder, its name under train.out_dir, or its MLflow run id.")
@click.option("--until-step", type=click.IntRange(min=1), help="Stop (checkpointed, resumable) after this step.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--no-track", is_flag=True, help="Do not log to MLflow (the run folder still records everything).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def train(model, optimizer, config_file, sets, resume, until_step, tracking_uri, no_track, progress):
    """Train a model (single process, or every rank under torchrun).

    \b
    Examples:
      blagpt train --model blagpt
      blagpt train --model blagpt --optimizer soap --set train.steps=300
      blagpt train --model rene --config run.yaml --tracking-uri http://127.0.0.1:5000
      blagpt train --resume blagpt-20261127-120000-000
    """
    from .plugins import get_registry
    from .train import resume_config
    from .train import train as run_training

    extra = []
    if tracking_uri:
        extra.append(f"tracking.uri={tracking_uri}")
    if no_track:
        extra.append("tracking.enabled=false")
    if resume:
        if model or optimizer or config_file:
            raise click.UsageError("--resume takes the run's own config; only --set may change it (e.g. train.steps)")
        out_dir = next((s.split("=", 1)[1] for s in sets if s.startswith("train.out_dir=")), "runs")
        cfg = resume_config(resume, out_dir, tuple(extra) + tuple(sets), get_registry())
    else:
        cfg = _resolve(model, optimizer, config_file, sets, extra)
    result = run_training(cfg, resume=resume, until_step=until_step, progress=progress, echo=click.echo)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    f = result.final
    click.echo("")
    if result.interrupted:
        click.echo(f"stopped at step {result.step}; continue with: blagpt train --resume {result.run_name}")
    if f:
        click.echo(f"final: val loss {f['val/loss']:.4f} nats/token | val bpb {f['val/bpb']:.4f} | step {result.step}")
    click.echo(f"run folder: {result.run_dir}")
    if result.mlflow_run_id:
        from .tracking import RunRecord

        uri = RunRecord(result.run_dir).meta.get("tracking_uri", "")
        click.echo(f"MLflow run: {result.mlflow_run_id} (experiment {cfg.tracking.experiment!r}, tracking URI {uri})")
        how = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
        click.echo(f"see it: blagpt runs   or   {how}")


@cli.command(context_settings=CONTEXT)
@click.option("--run", "run_ref", required=True, metavar="RUN", help="The run: its folder, its name under --out-dir, or its MLflow run id.")
@click.option("--prompt", default="", help="Text to continue (default: start a new document after end-of-text).")
@click.option("--tokens", default=256, show_default=True, type=int, help="Most tokens to generate (stops earlier at end-of-text).")
@click.option("--temperature", default=0.8, show_default=True, type=float, help="Softmax temperature; 0 picks the most likely token (greedy).")
@click.option("--top-k", type=int, help="Sample only among the K most likely tokens (default: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sampling generator (same seed, same text).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run the model.")
@click.option("--out-dir", default="runs", show_default=True, help="Folder of run folders (train.out_dir of the run).")
def sample(run_ref, prompt, tokens, temperature, top_k, seed, device, out_dir):
    """Generate text from a run's checkpoint, printed as it is generated.

    \b
    Examples:
      blagpt sample --run blagpt-20261127-120000-000 --prompt "ROMEO:"
      blagpt sample --run runs/blagpt-20261127-120000-000 --tokens 500 --temperature 1 --top-k 50 --seed 3
      blagpt sample --run <MLflow run id> --temperature 0        # greedy
    """
    from .errors import ConfigError

    if tokens < 1:
        raise ConfigError(f"--tokens: expected an integer >= 1, got {tokens}")
    if temperature < 0:
        raise ConfigError(f"--temperature: expected a number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k: expected an integer >= 1, got {top_k}")
    import torch

    from .sample import encode_prompt, generate, load_run, stream_text

    run = load_run(run_ref, out_dir, device)
    ids, cut = encode_prompt(prompt, run.tokenizer, run.context)
    click.echo(
        f"{run.run_dir.name}: model {run.config.model.name} at step {run.step}, {run.tokenizer.name} tokens, on {run.device.type}",
        err=True,
    )
    if cut:
        click.echo(f"the prompt is {len(ids) + cut} tokens; keeping its last {len(ids)} (the run's train.seq_len)", err=True)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    click.echo(prompt, nl=False)
    stream_text(
        generate(run.model, ids, tokens, context=run.context, vocab_size=run.tokenizer.vocab_size, eot=run.tokenizer.eot,
                 temperature=temperature, top_k=top_k, generator=gen, device=run.device, autocast_bf16=run.autocast_bf16),
        run.tokenizer,
        lambda text: click.echo(text, nl=False),
    )
    click.echo("")


@cli.command("list", context_settings=CONTEXT)
def list_cmd():
    """List installed models and optimizers (nothing is built).

    \b
    Example:
      blagpt list
    """
    from .plugins import get_registry

    reg = get_registry()
    rows = [("MODEL", "PLUGIN", "TOKENIZERS", "DESCRIPTION")]
    for name, spec in sorted(reg.models.items()):
        rows.append((name, reg.owner_of("model", name).dist, ",".join(spec.tokenizers), spec.description))
    _table(rows)
    click.echo("")
    rows = [("OPTIMIZER", "PLUGIN", "", "DESCRIPTION")]
    for name, spec in sorted(reg.optimizers.items()):
        rows.append((name, reg.owner_of("optimizer", name).dist, "", spec.description))
    _table(rows)
    _warn_broken(reg)


@cli.group(context_settings=CONTEXT)
def config():
    """Show the resolved run config or its JSON Schema."""


@config.command("show", context_settings=CONTEXT)
@_config_options
def config_show(model, optimizer, config_file, sets):
    """Print the resolved config (defaults < presets < --config < --set) as YAML.

    \b
    Examples:
      blagpt config show --model blagpt
      blagpt config show --model blagpt --set model.preset=gpt2+124m > run.yaml
    """
    click.echo(_resolve(model, optimizer, config_file, sets).to_yaml(), nl=False)


@config.command("schema", context_settings=CONTEXT)
@click.option("--model", help="Type the model section by this model's config (default: the generic base).")
@click.option("--optimizer", default="adamw", show_default=True, help="Type the optimizer section by this optimizer's config.")
def config_schema(model, optimizer):
    """Print the run config's JSON Schema.

    \b
    Examples:
      blagpt config schema
      blagpt config schema --model blagpt --optimizer soap
    """
    import json

    from .config import RunConfig, concrete_class
    from .plugins import get_registry

    cls = concrete_class(get_registry(), model, optimizer) if model else RunConfig
    click.echo(json.dumps(cls.model_json_schema(), indent=2))


@cli.group(context_settings=CONTEXT)
def data():
    """Prepare token shards."""


@data.command("prepare", context_settings=CONTEXT)
@click.argument("source")
@click.option("--tokenizer", type=click.Choice(["gpt2", "bytes"]), required=True, help="Tokenizer of the shards.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder for train_*.bin and val_*.bin.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of the text (in bytes) held out for validation.")
@click.option("--split-on", default=None, help="Separator of documents inside a file (e.g. '\\f'); default: one document per file.")
@click.option("--shard-tokens", default=100_000_000, show_default=True, type=click.IntRange(min=1), help="Tokens per shard.")
def data_prepare(source, tokenizer, out_dir, val_fraction, split_on, shard_tokens):
    """Tokenize SOURCE (a text file, a folder of .txt/.md files, or - for stdin) into shards.

    \b
    Examples:
      blagpt data prepare corpus.txt --tokenizer gpt2 --out data/corpus
      blagpt data prepare texts/ --tokenizer bytes --out data/texts-bytes
      cat *.txt | blagpt data prepare - --tokenizer gpt2 --out data/stdin
    Then train on them: blagpt train --model blagpt --set data.train='data/corpus/train_*.bin' --set data.val='data/corpus/val_*.bin'
    """
    from .data.prepare import iter_documents, prepare

    if split_on is not None:
        split_on = split_on.encode().decode("unicode_escape")
    counts = prepare(iter_documents(source, split_on), tokenizer, out_dir, val_fraction, shard_tokens, progress=sys.stderr.isatty())
    click.echo(f"{out_dir}: {counts['train']:,} training and {counts['val']:,} validation tokens ({tokenizer})")


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--experiment", default="blagpt", show_default=True, help="MLflow experiment.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@click.pass_context
def runs(ctx, tracking_uri, experiment, limit):
    """List recent MLflow runs: name, model, steps, val loss, val bpb.

    \b
    Examples:
      blagpt runs
      blagpt runs --tracking-uri http://127.0.0.1:5000 --limit 5
      blagpt runs sync runs/blagpt-20261127-120000-000    # upload a run the server missed
    """
    if ctx.invoked_subcommand is not None:
        return
    from .tracking import configure_mlflow_http, sync_client

    configure_mlflow_http(10)
    client = sync_client(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        found = [] if exp is None else client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
        )
    except Exception as e:  # noqa: BLE001 - unreachable server, bad URI: one line, not a traceback
        raise BlagptError(f"cannot read runs from MLflow at {client.tracking_uri}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if exp is None:
        click.echo(f"no experiment {experiment!r} at {client.tracking_uri}")
        return
    rows = [("RUN", "MODEL", "STEPS", "VAL LOSS", "VAL BPB", "STATUS", "RUN ID")]
    for r in found:
        m, p = r.data.metrics, r.data.params
        fmt = lambda k: f"{m[k]:.4f}" if k in m else "-"  # noqa: E731
        rows.append((r.info.run_name, p.get("model.name", "-"), p.get("total_steps", "-"), fmt("val/loss"), fmt("val/bpb"), r.info.status, r.info.run_id))
    _table(rows)


@runs.command("sync", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--tracking-uri", help="Upload to this URI instead of the one the run was started with.")
def runs_sync(run_dir, tracking_uri):
    """Upload a run folder's params, metrics and artifacts that MLflow did not receive.

    \b
    Example:
      blagpt runs sync runs/blagpt-20261127-120000-000 --tracking-uri http://127.0.0.1:5000
    """
    from .tracking import sync_run_dir

    run_id = sync_run_dir(run_dir, tracking_uri)
    click.echo(f"{run_dir}: synced to MLflow run {run_id}")


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _warn_broken(reg) -> None:
    for info in reg.plugins.values():
        if not info.ok:
            click.echo(f"warning: plugin {info.name} ({info.dist} {info.version}) not loaded: {info.error}", err=True)
    for msg in reg.conflicts.values():
        click.echo(f"warning: {msg}", err=True)


def _setup_logging() -> None:
    """Plugins' and the core's INFO lines (loggers named ``blagpt*``) on stderr; others from WARNING."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(lambda r: r.name.startswith("blagpt") or r.levelno >= logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[handler])


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


from . import cli_bench, cli_plugins  # noqa: E402,F401 - register bench, ablate, compare; plugins, new-plugin

if __name__ == "__main__":
    main()
