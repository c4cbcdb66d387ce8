"""The comparison commands of the ``blagpt`` CLI: ``bench``, ``ablate``, ``scale`` and ``compare``.

They register on the ``blagpt`` group when :mod:`blagpt.cli` is imported; like the rest of the
CLI, only click is imported at module level.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

import click

from . import CONTEXT, cli

NOTE = (
    "val loss and val bpb: mean ± sample sd over seeds of the final evaluation, every entry on the same "
    "validation text ({what}); 95% CI: Student-t confidence interval of the mean val bpb. p vs baseline: "
    "one-sided Welch t-test that the entry's val bpb is lower than the baseline's (small = better beyond seed "
    "noise; needs 2+ seeds); p (Holm): adjusted for comparing many entries with one baseline (Holm-Bonferroni); "
    "* marks a p from fewer than 3 seeds on a side. params w/o emb.: parameters without embedding tables and "
    "output head; train FLOPs: the model's FLOPs per token x training tokens. tokens/s: median of the logged "
    "windows; peak mem: largest logged peak; wall: training time, evaluation excluded; all means over seeds."
)


def _remember(ctx, param, value):
    ctx.meta[f"blagpt.{param.name}"] = value
    return value


TASK_NOTE = (
    "val loss and val accuracy: mean ± sample sd over seeds of the final evaluation at the answer positions of the task's "
    "fixed test sequences (the same for every entry and seed: the task's own seed generates them); val loss in nats per "
    "answer; accuracy: the share of answers where the argmax of the logits is the answer; 95% CI: Student-t confidence "
    "interval of the mean accuracy. p vs baseline: one-sided Welch t-test that the entry's accuracy is higher than the "
    "baseline's (needs 2+ seeds); p (Holm): adjusted for comparing many entries with one baseline; * marks a p from fewer "
    "than 3 seeds on a side. params w/o emb.: parameters without embedding tables and output head. tokens/s: median of the "
    "logged windows; all means over seeds."
)


def _common(f):
    f = click.option("--address", expose_value=False, callback=_remember, metavar="ADDR",
                     help="With --executor ray: the Ray cluster's address (default: $RAY_ADDRESS, else a local Ray started for the bench).")(f)
    f = click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, expose_value=False,
                     callback=_remember, help="Where runs execute: this machine, or one Ray task per run (pip install 'blagpt[ray]').")(f)
    f = click.option("--parallel", default=1, show_default=True, type=click.IntRange(min=1), expose_value=False, callback=_remember,
                     help="Runs at once on this machine: each on its own GPU(s) (CUDA_VISIBLE_DEVICES), or on CPUs its own share of the cores.")(f)
    f = click.option("--no-track", is_flag=True, help="Do not log to MLflow (the bench folder still records everything).")(f)
    f = click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")(f)
    f = click.option("--retry-failed", is_flag=True, help="Train again the runs that failed in an earlier attempt.")(f)
    f = click.option(
        "--launcher",
        help="Command put before `-m blagpt train` for every run, e.g. 'torchrun --standalone --nproc_per_node 8' "
        "(default: this Python, one process).",
    )(f)
    f = click.option("--name", help="Bench folder and MLflow run name (default: derived from the plan, so re-running resumes).")(f)
    f = click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1), help="Seeds per entry (2+ for noise estimates).")(f)
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a base config field for every run (repeatable).")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Base run config (YAML or TOML) shared by every run.")(f)
    return f


def _base(config_file, sets, budget, tracking_uri, no_track):
    from ..compare.plan import parse_budget, with_budget
    from ..config import merge_sources

    extra = [f"tracking.uri={tracking_uri}"] if tracking_uri else []
    extra += ["tracking.enabled=false"] if no_track else []
    raw = merge_sources(config_file, [*extra, *sets])
    return with_budget(raw, parse_budget(budget)) if budget else raw


def _launcher(text):
    import shlex

    return shlex.split(text) if text else None


def _executor(launcher_text, raw):
    """The executor --parallel / --executor / --address ask for (:mod:`blagpt.compare.executor`)."""
    import atexit
    import os

    from ..compare.executor import RayExecutor, make_executor

    meta = click.get_current_context().meta
    kind, n, address = meta.get("blagpt.executor", "local"), meta.get("blagpt.parallel", 1), meta.get("blagpt.address")
    if kind == "ray" and address is None:
        address = os.environ.get("RAY_ADDRESS")
    if kind == "ray" and n > 1:
        raise click.UsageError("--parallel: not with --executor ray (Ray runs as many at once as the cluster has room for)")
    device = str((raw.get("train") or {}).get("device", "auto"))
    ex = make_executor(kind, n, address, _launcher(launcher_text), device)
    if isinstance(ex, RayExecutor):
        atexit.register(ex.close)
    return ex


def _report(bench, stats, title, note, params, interrupted, budget="", extra_files=None):
    from ..compare.leaderboard import terminal_table, write_leaderboard

    files = write_leaderboard(stats, bench.dir, title, note, budget)
    files.update(extra_files or {})
    if getattr(bench, "choices", None):
        from ..compare.tune import choices_params, write_tuning

        files.update(write_tuning(bench.grid, bench.choices, bench.dir, f"tuning of bench {bench.name}", bench.score))
        params = {**params, **choices_params(bench.choices)}
    click.echo("")
    click.echo(terminal_table(stats))
    scored = {e.label: r.final.get("val/bytes") for e in stats for r in e.ok_runs if r.final.get("val/bytes") is not None}
    if len(set(scored.values())) > 1:
        click.echo(f"note: the entries were not scored on the same validation bytes ({', '.join(f'{k}: {v:,.0f}' for k, v in scored.items())}); "
                   "their tokenizers cut the validation text at different places")
    run_id = bench.finish(files, params, entry_metrics(stats), interrupted)
    click.echo("")
    click.echo(f"leaderboard (every column): {files['md']} and {files['csv']}")
    click.echo(f"plots: {' '.join(str(v) for k, v in files.items() if k.startswith('png'))}")
    if "sweep_md" in files:
        click.echo(f"sweep table: {files['sweep_md']}")
    if run_id:
        click.echo(f"MLflow parent run: {run_id} (experiment {bench.experiment!r}); its runs are nested under it")
    return files


def _eval_text(bench) -> str:
    try:
        n = bench.base_raw["train"]["eval_bytes"]
        return f"{int(n):,} bytes"
    except (KeyError, TypeError, ValueError):
        return "train.eval_tokens tokens"


@cli.command(context_settings=CONTEXT)
@click.option("--models", required=True, help="Comma-separated NAME or NAME@PRESET, e.g. blagpt@gpt2+tiny,rene@tiny.")
@click.option("--optimizers", default="adamw", show_default=True, help="Comma-separated optimizers; every model trains with each.")
@click.option("--tokenizers", help="Comma-separated tokenizers (gpt2, bytes, hf:PATH, ...); every model trains with each, on the same text "
              "(default: each model's own).")
@click.option("--budget", required=True, help="tokens=N | flops=F | time=S | steps=N (suffixes k M G T; s m h).")
@click.option("--baseline", help="Entry the p-values are computed against (default: the first).")
@click.option("--tune", "tunes", multiple=True, metavar="FIELD=V1,V2,...",
              help="Tune FIELD for every entry alike (repeatable: the grid is their product): one trial per value at the first "
              "seed, scored on a tuning slice disjoint from the validation slice, then the seeds at each entry's best.")
@click.option("--task", help="Task of every run (task.name): `lm` (default) or a generated task such as `mqar`, ranked by "
              "accuracy at its answer positions (higher is better); task.* fields go in --set.")
@click.option("--sweep", "sweep_item", metavar="FIELD=V1,V2,...", help="Train every entry at each value of FIELD (e.g. "
              "task.n_pairs=4,8,16,32) and plot the score against it and against the models' state size.")
@_common
def bench(models, optimizers, tokenizers, budget, baseline, tunes, task, sweep_item, config_file, sets, seeds, name, launcher, retry_failed,
          tracking_uri, no_track):
    """Train every model x optimizer x seed on equal terms and print the leaderboard.

    Every run gets the same data, sequence length, global batch, validation text and budget
    (tokens, FLOPs from each model's flops_per_token, or wall-clock seconds of training). One MLflow
    parent run, one child run per training run; a failed run is listed with its reason and the
    others go on. Run the same command again after an interruption: finished runs are kept,
    interrupted ones resume from their checkpoints.

    \b
    Examples:
      blagpt bench --models blagpt@gpt2+tiny,blagpt@blagpt+tiny --budget tokens=2M --seeds 3
      blagpt bench --models blagpt@gpt2+tiny,rene@tiny,rwkv7@tiny --budget flops=5e13 --config base.yaml
      blagpt bench --models blagpt@blagpt+tiny --optimizers adamw,soap,muon --budget time=5m
      blagpt bench --models blagpt@gpt2+tiny --tokenizers gpt2,hf:tok/tokenizer.json --budget flops=5e13
      blagpt bench --models blagpt@gpt2+tiny,rene@tiny --tune optimizer.lr=1e-3,3e-3,1e-2 --budget tokens=1M --seeds 3
      blagpt bench --task mqar --models blagpt@gpt2+tiny,rwkv7@tiny --sweep task.n_pairs=4,8,16,32 --budget steps=500 --seeds 3
    """
    from ..compare.bench import Bench
    from ..compare.leaderboard import summarize
    from ..compare.plan import parse_models
    from ..compare.sweep import Sweep, write_sweep
    from ..compare.tune import Grid
    from ..errors import ConfigError

    opts = [o.strip() for o in optimizers.split(",") if o.strip()]
    toks = [t.strip() for t in tokenizers.split(",") if t.strip()] if tokenizers else None
    entries = parse_models(models, opts, toks)
    model_labels = [e.label for e in entries]
    sweep = Sweep.parse(sweep_item) if sweep_item else None
    where = {}
    if sweep is not None:
        entries, where = sweep.cells(entries)
    labels = [e.label for e in entries]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"--baseline {baseline!r}: not an entry; entries: {', '.join(labels)}")
    grid = Grid.parse(tunes)
    if sweep is not None and sweep.field in dict(grid.fields):
        raise ConfigError(f"--sweep {sweep.field}: also tuned (--tune); a field is either swept or tuned")
    raw = _base(config_file, sets, budget, tracking_uri, no_track)
    if task:
        from ..config import merge_sources

        raw = merge_sources(base=raw, sets=[f"task.name={task}"])
    identity = {"entries": [asdict(e) for e in entries], "launcher": launcher}
    if grid:
        identity["tune"] = [list(f) for f in grid.fields]
    b = Bench("bench", identity, raw, seeds, name, _launcher(launcher), retry_failed, echo=click.echo, executor=_executor(launcher, raw))
    b.grid = grid
    tuned = f", each tuned over {len(grid.points())} point(s) of {' x '.join(f for f, _ in grid.fields)}" if grid else ""
    swept = f" x {len(sweep.values)} value(s) of {sweep.field}" if sweep else ""
    on = f", task {task}" if task and task != "lm" else ""
    click.echo(f"bench {b.name}: {len(model_labels)} entries{swept} x {seeds} seed(s){tuned}{on}, budget {budget}; folder {b.dir}")
    data, interrupted = b.run(entries, grid)
    stats = summarize(data, labels, baseline, b.score)
    params = {"bench.models": models, "bench.optimizers": optimizers, "bench.tokenizers": tokenizers or "each model's own",
              "bench.budget": budget, "bench.seeds": seeds, "bench.baseline": baseline or labels[0], "bench.task": task or "lm"}
    if grid:
        params["bench.tune"] = " ".join(tunes)
    if sweep:
        params["bench.sweep"] = sweep_item
    title = f"bench {b.name}: {', '.join(model_labels)}{swept}{on}; budget {budget}; {seeds} seed(s){tuned}"
    extra = write_sweep(stats, sweep, where, model_labels, b.dir, title, b.score) if sweep else None
    note = NOTE.format(what=_eval_text(b)) if b.score.key == "bpb" else TASK_NOTE
    _report(b, stats, title, note, params, interrupted, budget, extra_files=extra)
    _exit_if(interrupted, data)


@cli.command(context_settings=CONTEXT)
@click.option("--model", required=True, help="NAME or NAME@PRESET of the model to ablate.")
@click.option("--optimizer", default="adamw", show_default=True, help="Optimizer of every run.")
@click.option("--try", "tries", multiple=True, required=True, metavar="FIELD=VALUE[;...]", help="One change (several fields joined by ';'); repeatable.")
@click.option("--greedy", is_flag=True, help="Keep each change that helps by more than the noise and try the next on top.")
@click.option("--noise", type=click.FloatRange(min=0), help="Noise band in bpb to use when seeds cannot estimate it (1 seed).")
@click.option("--budget", help="tokens=N | flops=F | time=S | steps=N (default: the base config's budget).")
@_common
def ablate(model, optimizer, tries, greedy, noise, budget, config_file, sets, seeds, name, launcher, retry_failed, tracking_uri, no_track):
    """Each change on top of a base config, as a delta in val bpb with its noise band.

    \b
    Examples:
      blagpt ablate --model blagpt@gpt2+tiny --try model.qk_norm=true --try model.n_kv_heads=2 --seeds 3
      blagpt ablate --model blagpt@gpt2+tiny --greedy --seeds 3 --budget tokens=2M \\
          --try model.norm_type=rmsnorm --try 'model.activation=swiglu;model.mlp_ratio=2.75' --try model.qk_norm=true
    """
    from ..compare.ablate import COLUMNS, parse_try, run_ablation, table_rows
    from ..compare.bench import Bench
    from ..compare.leaderboard import markdown_table, summarize, text_table
    from ..compare.plan import parse_models

    (base_entry,) = parse_models(model, [optimizer])
    parsed = [(t, parse_try(t)) for t in tries]
    raw = _base(config_file, sets, budget, tracking_uri, no_track)
    identity = {"model": model, "optimizer": optimizer, "tries": list(tries), "greedy": greedy, "noise": noise, "launcher": launcher}
    b = Bench("ablate", identity, raw, seeds, name, _launcher(launcher), retry_failed, echo=click.echo, executor=_executor(launcher, raw))
    click.echo(f"ablation {b.name}: {model} + {len(tries)} change(s){' (greedy)' if greedy else ''} x {seeds} seed(s); folder {b.dir}")
    steps, data, order, kept, interrupted = run_ablation(b, base_entry.model, optimizer, parsed, greedy, noise, base_sets=base_entry.sets)
    rows = table_rows(steps, greedy)
    click.echo("")
    click.echo(text_table(COLUMNS, rows))
    if greedy and not interrupted:
        click.echo(f"kept: {'; '.join(kept) or 'nothing'}")
    table = markdown_table(COLUMNS, rows)
    (b.dir / "ablation.md").write_text(f"# ablation {b.name} of {model}\n\n{table}")
    stats = summarize(data, [e.label for e in order], "base")
    params = {"ablate.model": model, "ablate.tries": " | ".join(tries), "ablate.greedy": greedy, "ablate.seeds": seeds}
    files = _report(b, stats, f"ablation {b.name} of {model}: every run", NOTE.format(what=_eval_text(b)), params, interrupted)
    click.echo(f"ablation table: {b.dir / 'ablation.md'}  (all runs: {files['md']})")
    _exit_if(interrupted, data)


@cli.command(context_settings=CONTEXT)
@click.option("--models", required=True, help="Comma-separated NAME or NAME@PRESET; a size's preset is added to the model's own.")
@click.option("--sizes", help="Comma-separated presets, one size each (e.g. tiny,mini,small).")
@click.option("--size", "size_sets", multiple=True, metavar="LABEL='FIELD=V;...'", help="A size given by overrides (repeatable).")
@click.option("--budget", required=True, help="Budgets of one kind, e.g. flops=1e13,3e13,1e14 or tokens=250k,500k,1M.")
@click.option("--optimizer", default="adamw", show_default=True, help="Optimizer of every run.")
@_common
def scale(models, sizes, size_sets, budget, optimizer, config_file, sets, seeds, name, launcher, retry_failed, tracking_uri, no_track):
    """Train models x sizes x budgets and compare their compute-optimal frontiers.

    Draws val bpb against training FLOPs (log-log) per model with its frontier (the best size at
    each budget), fits L(C) = E + A * C^-alpha to it, with bootstrap 95% intervals of E and alpha
    over seeds, and says where two models' frontiers cross. One MLflow parent run; run the same
    command again to resume.

    \b
    Examples:
      blagpt scale --models blagpt@gpt2,rwkv7 --sizes tiny,mini,small --budget flops=1e13,3e13,1e14 --seeds 2
      blagpt scale --models rene --size s='model.n_layers=2' --size m='model.n_layers=4' --budget tokens=250k,1M
    """
    from ..compare import scale as sc
    from ..compare.bench import Bench
    from ..compare.leaderboard import summarize, write_leaderboard
    from ..compare.plan import parse_models

    model_entries = parse_models(models, [optimizer])
    size_list = sc.parse_sizes(sizes, size_sets)
    budgets = sc.parse_budgets(budget)
    entries, where = sc.cells(model_entries, size_list, budgets)
    raw = _base(config_file, sets, None, tracking_uri, no_track)
    from ..config import replace_budget

    raw = replace_budget(raw, budgets[0][1])  # every cell sets its own budget of this kind
    identity = {"entries": [asdict(e) for e in entries], "launcher": launcher}
    b = Bench("scale", identity, raw, seeds, name, _launcher(launcher), retry_failed, echo=click.echo, executor=_executor(launcher, raw))
    click.echo(f"scale {b.name}: {len(model_entries)} model(s) x {len(size_list)} size(s) x {len(budgets)} budget(s) x "
               f"{seeds} seed(s); folder {b.dir}")
    data, interrupted = b.run(entries)
    scales = sc.analyse_all(data, where, [m.label for m in model_entries])
    title = f"scale {b.name}: {models}; sizes {', '.join(s.label for s in size_list)}; budgets {budget}; {seeds} seed(s)"
    files = sc.write_scale(scales, b.dir, title, budget)
    stats = summarize(data, [e.label for e in entries])
    files.update(write_leaderboard(stats, b.dir, f"{title}: every run", NOTE.format(what=_eval_text(b)), budget))
    click.echo("")
    click.echo(sc.terminal_report(scales))
    metrics = {}
    for ms in scales:
        if ms.fit is not None:
            k = _key(ms.model)
            metrics.update({f"scale_alpha/{k}": ms.fit.alpha, f"scale_E/{k}": ms.fit.E, f"scale_A/{k}": ms.fit.A})
            for what, (lo, hi) in ms.ci.items():
                metrics.update({f"scale_{what}_ci95_lo/{k}": lo, f"scale_{what}_ci95_hi/{k}": hi})
    params = {"scale.models": models, "scale.sizes": ", ".join(s.label for s in size_list), "scale.budget": budget,
              "scale.seeds": seeds, "scale.optimizer": optimizer}
    run_id = b.finish(files, params, metrics, interrupted)
    click.echo("")
    click.echo(f"scale table and fits: {files['scale_md']} ({files['scale_json']}); every run: {files['md']} and {files['csv']}")
    click.echo(f"plots: {' '.join(str(v) for k, v in files.items() if k.startswith('png'))}")
    if run_id:
        click.echo(f"MLflow parent run: {run_id} (experiment {b.experiment!r}); its runs are nested under it")
    _exit_if(interrupted, data)


@cli.command(context_settings=CONTEXT)
@click.argument("refs", nargs=-1, required=True, metavar="RUN_OR_EXPERIMENT...")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--experiment", default="blagpt", show_default=True, help="Experiment that run names are looked up in.")
@click.option("--baseline", help="Entry the p-values are computed against (default: the first, oldest).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for the leaderboard and plots (default: runs/compare-<time>).")
@click.option("--timeout-s", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Give up on a server that does not answer within this many seconds.")
def compare(refs, tracking_uri, experiment, baseline, out_dir, timeout_s):
    """The leaderboard and plots of runs already in MLflow.

    RUN_OR_EXPERIMENT: an MLflow run id, a run name, or an experiment name; a bench's parent run
    stands for its runs. Runs of one entry (the same config but the seed) are pooled over seeds.

    \b
    Examples:
      blagpt compare bench-1a2b3c4d                  # a bench's parent run, by name
      blagpt compare 5f0c... 9ab1...                 # two runs by id
      blagpt compare my-experiment --tracking-uri http://127.0.0.1:5000
    """
    from pathlib import Path

    from ..compare.leaderboard import comparable_groups, score_for, summarize, terminal_table, write_leaderboard
    from ..compare.mlflow_runs import find_runs, is_trial, run_data
    from ..errors import BlagptError
    from ..run.tracking import connect, one_line

    client = connect(tracking_uri, timeout_s, what="compare")
    try:
        runs = find_runs(client, list(refs), experiment)
        trials = [r for r in runs if is_trial(r)]
        data, order = run_data(client, [r for r in runs if not is_trial(r)])
    except BlagptError:
        raise
    except Exception as e:  # noqa: BLE001 - the server failed mid-way: one line, not a traceback
        raise BlagptError(f"compare: MLflow at {client.tracking_uri} failed ({one_line(e)})") from None
    if not data:
        raise BlagptError(f"compare: {' '.join(refs)}: only tuning trials found, no runs scored on the validation slice")
    out = Path(out_dir or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    note = NOTE.format(what="as each run was configured").replace("sd over seeds", "sd over the runs of an entry")
    groups = comparable_groups(data)
    if len(groups) > 1:
        click.echo(f"warning: these runs differ in budget or validation text; {len(groups)} separate leaderboards, one per "
                   f"group ({'; '.join(f'{b}, {v}' for (b, v), _ in groups)})", err=True)
    if trials:
        click.echo(f"{len(trials)} tuning trial run(s) left out (scored on the tuning slice)")
    for i, ((budget, text), runs_i) in enumerate(groups, 1):
        where = out if len(groups) == 1 else out / f"group-{i}"
        labels = [label for label in order if any(r.entry == label for r in runs_i)]
        base = baseline if baseline in labels else None
        if baseline is not None and base is None and len(groups) == 1:
            base = baseline  # summarize names the unknown entry
        score = score_for(str(runs_i[0].params.get("task.name", "lm")))
        stats = summarize(runs_i, labels, base, score)
        files = write_leaderboard(stats, where, f"compare {' '.join(refs)}" + (f" (group {i}: {budget}, {text})" if len(groups) > 1 else ""),
                                  (note if score.key == "bpb" else TASK_NOTE.replace("sd over seeds", "sd over the runs of an entry"))
                                  + f" Budget {budget}; validation text: {text}.", budget)
        if len(groups) > 1:
            click.echo(f"\ngroup {i}: {budget}; validation {text}")
        click.echo(terminal_table(stats))
        click.echo("")
        click.echo(f"{len(runs_i)} run(s) from {client.tracking_uri}; leaderboard: {files['md']} and {files['csv']}")
        click.echo(f"plots: {' '.join(str(v) for k, v in files.items() if k.startswith('png'))}")


def entry_metrics(stats) -> dict[str, float]:
    """Each entry's figures for the parent run: mean, sd and 95% CI of its score (val bpb, or val
    accuracy under a task), raw and Holm p."""
    out = {}
    for e in stats:
        k, m = _key(e.label), f"val_{e.score.key}"
        ci = e.ci
        figures = {f"{m}_mean": e.mean(e.values), f"{m}_sd": e.std(e.values), "p": e.p_value, "p_holm": e.p_holm,
                   f"{m}_ci95_lo": ci and ci[0], f"{m}_ci95_hi": ci and ci[1]}
        out.update({f"{name}/{k}": v for name, v in figures.items() if v is not None})
    return out


def _key(label: str) -> str:
    """An MLflow metric-key-safe form of an entry label."""
    from ..run.tracking import mlflow_key

    return mlflow_key(label)


def _exit_if(interrupted: bool, data=()) -> None:
    """Exit 130 when interrupted, 1 when some run failed (after the table was printed)."""
    if interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    failed = [r for r in data if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(data)} runs failed (see the status column)", err=True)
        sys.exit(1)
