"""``blagpt eval``: a trained run scored on other data, or on lm-evaluation-harness tasks."""

from __future__ import annotations

import click

from . import CONTEXT, _table, cli


@cli.command("eval", context_settings=CONTEXT)
@click.option("--run", "run_ref", required=True, metavar="RUN", help="The run: its folder, its name (under --out-dir or a bench folder in it), or its MLflow run id.")
@click.option("--data", "data", metavar="PATTERN", help="Token shards to score (a glob such as 'data/other/val_*.bin' from blagpt data prepare).")
@click.option("--name", help="Name of the --data evaluation in metric names, eval/NAME/loss (default: the data folder's name).")
@click.option("--eval-tokens", type=click.IntRange(min=1), help="Tokens of --data to predict (default: the run's train.eval_tokens).")
@click.option("--eval-bytes", type=click.IntRange(min=1), help="Score --data up to the last line start within this many bytes of text (default: the run's train.eval_bytes).")
@click.option("--tasks", metavar="T1,T2", help="lm-evaluation-harness tasks (names or globs, comma-separated); needs the lm-eval extra.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N examples of each task.")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples in each prompt (default: the task's).")
@click.option("--include-path", type=click.Path(file_okay=False), help="A folder of more lm-eval task YAML files.")
@click.option("--bootstrap-iters", default=100000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples for the stderr of metrics without a closed form (0: none).")
@click.option("--max-gen-toks", default=256, show_default=True, type=click.IntRange(min=1), help="Most tokens a generation task may generate, unless the task says.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Sequences per forward (default: the run's train.micro_batch_size).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of few-shot sampling and of sampled generation.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run the model.")
@click.option("--out-dir", default="runs", show_default=True, help="Folder of run folders (train.out_dir of the run).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the run's own); a run id not here is fetched from it.")
@click.option("--no-track", is_flag=True, help="Record the evaluation in the run folder only, not in MLflow.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), help="Give up on an MLflow server that does not answer within this many seconds (default: the run's tracking.timeout_s).")
def eval_(run_ref, data, name, eval_tokens, eval_bytes, tasks, limit, num_fewshot, include_path, bootstrap_iters,
          max_gen_toks, batch_size, seed, device, out_dir, tracking_uri, no_track, timeout_s):
    """Score a trained run's checkpoint: loss and bits per byte on other data (--data), or
    lm-evaluation-harness tasks (--tasks), and record the result in the run and its MLflow run.

    --data uses the evaluator training validates with, on a slice cut as training cuts it; shards
    of another tokenizer are refused. Metrics: eval/NAME/loss, eval/NAME/bpb, lm_eval/TASK/METRIC,
    at the checkpoint's step.

    \b
    Examples:
      blagpt eval --run blagpt-20261127-120000-000 --data 'data/wiki/val_*.bin'
      blagpt eval --run runs/blagpt-20261127-120000-000 --data 'data/wiki/val_*.bin' --eval-bytes 1000000
      blagpt eval --run <MLflow run id> --tasks hellaswag,lambada_openai --limit 200
      blagpt eval --run blagpt-20261127-120000-000 --tasks my_task --include-path tasks/ --num-fewshot 5
    """
    if not data and not tasks:
        raise click.UsageError("give --data PATTERN (token shards) and/or --tasks T1,T2 (lm-evaluation-harness)")
    if not data and (name or eval_tokens or eval_bytes):
        raise click.UsageError("--name, --eval-tokens and --eval-bytes go with --data")
    if not tasks and (limit or num_fewshot is not None or include_path):
        raise click.UsageError("--limit, --num-fewshot and --include-path go with --tasks")
    task_list = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if tasks is not None and not task_list:
        raise click.UsageError("--tasks: expected task names separated by commas")
    from ..plugin.registry import get_registry
    from ..run.evaluate import check_name, evaluate_data, record_eval, sync_eval, utc_now
    from ..run.rundir import RunDir
    from ..run.sample import load_run

    if name is not None:
        check_name(name)
    if task_list:
        from ..run import harness  # before the model loads: a missing extra is one line at once
    registry = get_registry()
    from ..run.fetch import find_run

    find_run(run_ref, out_dir, tracking_uri)  # an MLflow run id not here: fetched into out_dir
    run = load_run(run_ref, out_dir, device, registry)
    folder = RunDir(run.run_dir)
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    say(f"{run.run_dir.name}: model {run.config.model.name} at step {run.step}, {run.tokenizer.name} tokens, on {run.device.type}")
    with folder.lock:  # a training process holds it: refused in one line rather than racing its record
        if data:
            ev = evaluate_data(run, registry, data, name, eval_tokens, eval_bytes, batch_size)
            record_eval(folder, run.step, ev.metrics, ev.entry(run.step), ev.dataset)
            click.echo(f"eval {ev.name} ({ev.pattern}): loss {ev.loss:.4f} nats/token | bpb {ev.bpb:.4f} | "
                       f"{ev.tokens:,} tokens, {ev.bytes:,} bytes | step {run.step}")
        if task_list:
            lm = harness.BlagptLM(run, batch_size or run.config.train.micro_batch_size, max_gen_toks, seed)
            results = harness.run_tasks(lm, task_list, num_fewshot, limit, include_path, bootstrap_iters, seed)
            metrics = harness.task_metrics(results)
            entry = {"kind": "lm_eval", "tasks": task_list, "limit": limit, "num_fewshot": num_fewshot, "step": run.step,
                     "lm_eval_version": harness.version(), "metrics": metrics, "at": utc_now()}
            record_eval(folder, run.step, metrics, entry)
            _results_table(results)
        if not no_track:
            run_id = sync_eval(folder, tracking_uri, timeout_s, say)
            if run_id:
                click.echo(f"logged to MLflow run {run_id}")
    click.echo(f"recorded in {run.run_dir}")


def _results_table(results: dict) -> None:
    rows = [("TASK", "METRIC", "VALUE", "STDERR")]
    for task, values in sorted(results.get("results", {}).items()):
        for key, value in values.items():
            metric, comma, filt = key.partition(",")
            if not comma or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            err = values.get(f"{metric}_stderr,{filt}")
            shown = metric if filt in ("", "none") else f"{metric} ({filt})"
            rows.append((task, shown, f"{value:.4f}", f"{err:.4f}" if isinstance(err, (int, float)) else "-"))
    _table(rows)
