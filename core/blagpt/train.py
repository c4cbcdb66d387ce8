"""The training loop: one code path for a single process and for ``torchrun`` (DDP).

The trainer knows a model only through its hooks (``build_model``, ``build_optimizer``,
``compute_loss``). Under ``torchrun`` every rank runs this same function: NCCL on CUDA, gloo on
CPU; the global batch is fixed by the config and gradient accumulation absorbs the world size.
Validation reports nats per token and bits per byte on a fixed slice of the validation split.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import RunConfig, resolve
from .data.loader import Layout, TokenStream, TrainLoader, val_slice
from .data.prepare import embedded_dataset
from .data.tokenizers import get_tokenizer
from .errors import BlagptError, ConfigError
from .plugins import Registry, get_registry
from .schedule import budget_for, lr_factor, lr_factor_time
from .specs import Batch, BuildContext
from .tracking import RunRecord, Tracker, loss_curve_png

# Dense bf16 peak FLOP/s per device, for MFU; override with BLAGPT_PEAK_FLOPS.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


class TrainingDiverged(BlagptError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    run_name: str
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    synced: bool = False
    interrupted: bool = False


# -- distributed setup ----------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= self.world
        return x

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``x`` on every rank."""
        if self.world > 1:
            dist.broadcast(x, src=0)
        return x

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def setup_distributed(device_pref: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but torch sees no CUDA device")
        device = torch.device(f"cuda:{local}") if world > 1 or device_pref == "cuda" else torch.device(device_pref)
        torch.cuda.set_device(device)
    elif device_pref == "cpu":
        device = torch.device("cpu")
    else:
        raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {device_pref!r}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=device)


# -- helpers ---------------------------------------------------------------------------------


def global_batch(cfg: RunConfig, world: int) -> int:
    return cfg.train.global_batch_size or cfg.train.micro_batch_size * world


def layout_for(cfg: RunConfig, d: Dist) -> Layout:
    g, m = global_batch(cfg, d.world), cfg.train.micro_batch_size
    if g % (m * d.world):
        raise ConfigError(
            f"train.global_batch_size: {g} sequences is not a multiple of micro_batch_size x world size "
            f"= {m} x {d.world}"
        )
    return Layout(micro_batch=m, world=d.world, rank=d.rank, accum=g // (m * d.world))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def device_peak_flops(device: torch.device) -> float | None:
    if os.environ.get("BLAGPT_PEAK_FLOPS"):
        return float(os.environ["BLAGPT_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def new_run_name(cfg: RunConfig) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    return f"{cfg.model.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"


def find_run_dir(ref: str, out_dir: str, option: str = "--resume") -> Path:
    """A run folder from a path, a run name under ``out_dir``, or an MLflow run id.

    ``option`` is the command-line option ``ref`` came from; the error message names it.
    """
    for cand in (Path(ref), Path(out_dir) / ref):
        if (cand / "run.json").is_file():
            return cand
    import json

    for meta in Path(out_dir).glob("*/run.json"):
        if json.loads(meta.read_text()).get("mlflow_run_id") == ref:
            return meta.parent
    raise BlagptError(f"{option} {ref}: no run folder, run name under {out_dir}/ or MLflow run id matches")


# -- the loop --------------------------------------------------------------------------------


class _StopFlag:
    """Set by SIGINT/SIGTERM: the loop checkpoints at the end of the current step and exits."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # second signal: give up at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    cfg: RunConfig,
    registry: Registry | None = None,
    resume: str | None = None,
    until_step: int | None = None,
    progress: bool | None = None,
    echo=print,
) -> TrainResult:
    """Train ``cfg`` (or resume the run ``resume``); returns what was logged and the final eval.

    ``until_step`` stops early (after checkpointing) so the run can be resumed later.
    """
    registry = registry or get_registry()
    d = setup_distributed(cfg.train.device)
    say = echo if d.main else (lambda *a, **k: None)
    t = cfg.train
    state = None
    if resume is not None:
        run_dir = find_run_dir(resume, t.out_dir)
        state = ckpt.load(run_dir / ckpt.CHECKPOINT)
        run_name = run_dir.name
    else:
        run_name = d.broadcast(new_run_name(cfg))
        run_dir = Path(t.out_dir) / run_name
        if (run_dir / "run.json").exists():
            raise BlagptError(f"{run_dir}: a run of this name exists; resume it with --resume {run_name} or pick another tracking.run_name")

    # data
    tok_name = cfg.tokenizer_name(registry)
    tokenizer = get_tokenizer(tok_name)
    if cfg.data.train is None:
        if d.main:
            embedded_dataset(tok_name)
        if d.world > 1:
            dist.barrier()
        train_glob, val_glob = embedded_dataset(tok_name)
    else:
        train_glob, val_glob = cfg.data.train, cfg.data.val
    train_stream, val_stream = TokenStream(train_glob, "training"), TokenStream(val_glob, "validation")
    _check_vocab(train_stream, tokenizer.vocab_size, train_glob)
    layout = layout_for(cfg, d)
    loader = TrainLoader(train_stream, t.seq_len, layout, t.seed)
    token_bytes = tokenizer.token_bytes
    val = val_slice(val_stream, t.seq_len, d.rank, d.world, tokenizer, t.eval_tokens, t.eval_bytes)

    # model, budget and optimizer (a FLOP budget needs the built model's FLOPs per token)
    tokens_per_step = layout.global_batch * t.seq_len
    budget = None if t.budget_kind == "flops" else budget_for(t, tokens_per_step, None)
    ctx = BuildContext(tokenizer.vocab_size, t.seq_len, tok_name, t.compile, str(d.device), total_steps=budget and budget.steps)
    torch.manual_seed(t.seed)
    model = registry.build_model(cfg.model, ctx).to(d.device)
    fpt = model.flops_per_token(t.seq_len) if hasattr(model, "flops_per_token") else None
    budget = budget or budget_for(t, tokens_per_step, fpt)
    steps = budget.steps  # None under a wall-clock budget
    optimizer = registry.build_optimizer(model, cfg.optimizer, replace(ctx, total_steps=steps))
    peak_lrs = [g["lr"] for g in optimizer.param_groups]
    start, elapsed = 0, 0.0  # elapsed: seconds spent in training steps, over resumes
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        start = int(state["step"])
        elapsed = float(state.get("elapsed_s", 0.0))
        rngs = state["rng"]
        if len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank])
        else:
            say(f"warning: checkpoint has RNG states of {len(rngs)} ranks, this run has {d.world}; dropout draws will differ")
            torch.manual_seed(t.seed + start + d.rank)
    else:
        if t.init_from is not None:
            try:
                model.load_state_dict(ckpt.load_weights(t.init_from))
            except RuntimeError as e:
                first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
                raise BlagptError(f"train.init_from: {t.init_from}: weights do not fit model {cfg.model.name!r}: {first}") from None
            say(f"initialised model weights from {t.init_from}")
        torch.manual_seed(t.seed + d.rank)  # distinct dropout per rank, same weights (built above)
    n_params = sum(p.numel() for p in model.parameters())
    peak_flops = device_peak_flops(d.device)

    train_model: torch.nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    eval_model: torch.nn.Module = model
    if t.compile:
        train_model = torch.compile(train_model)
        eval_model = torch.compile(model)
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and d.device.type == "cuda")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # tracking (rank 0 owns the run folder)
    tracker = None
    if d.main:
        record = RunRecord(run_dir)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        if state is not None:
            record.truncate_metrics_after(start)
        record.update(
            run_name=run_name,
            experiment=cfg.tracking.experiment,
            requested_tracking_uri=cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"),
            model=cfg.model.name,
            status="RUNNING",
            steps_planned=steps,
            budget=budget.describe(),
        )
        tracker = Tracker(record, cfg.tracking.uri, cfg.tracking.experiment, run_name, cfg.tracking.timeout_s, cfg.tracking.enabled)
        tracker.log_params(
            {**cfg.flat(), "n_params": n_params, "world_size": d.world, "total_steps": steps if steps is not None else "time budget",
             "grad_accum": layout.accum, "tokenizer": tok_name, "tokens_per_step": tokens_per_step,
             "flops_per_token": fpt if fpt is not None else "not reported"},
            _provenance_tags(registry, cfg),
        )
        tracker.log_artifact(run_dir / "config.yaml")

    say(
        f"run {run_name}: model {cfg.model.name} ({n_params / 1e6:.2f}M params), optimizer {cfg.optimizer.name}, "
        f"{budget.describe()} x {layout.global_batch} seqs x {t.seq_len} tokens, {d.world} rank(s) on {d.device.type}, "
        f"{'bf16' if use_bf16 else 'fp32'}{', compiled' if t.compile else ''}"
    )

    def evaluate() -> dict[str, float]:
        eval_model.eval()
        nll_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        counts = torch.zeros(2, dtype=torch.float64, device=d.device)  # tokens, bytes
        tb = torch.from_numpy(token_bytes).to(d.device)
        with torch.no_grad(), autocast:
            for i in range(0, len(val.rows), layout.micro_batch):
                batch = Batch(val.rows[i : i + layout.micro_batch].to(d.device))
                valid = val.valid[i : i + layout.micro_batch].to(d.device)
                real = torch.arange(t.seq_len, device=d.device)[None, :] < valid[:, None]
                out = registry.compute_loss(eval_model, batch, cfg.model)
                nll_sum += out.nll.double()[real].sum()
                counts[0] += real.sum()
                counts[1] += tb[batch.targets][real].sum()
        d.all_sum(nll_sum)
        d.all_sum(counts)
        eval_model.train()
        return {
            "val/loss": float(nll_sum / counts[0]),
            "val/bpb": float(nll_sum / (math.log(2) * counts[1])),
            "val/tokens": float(counts[0]),
            "val/bytes": float(counts[1]),
        }

    def save_checkpoint(step: int) -> None:
        rngs = d.gather(ckpt.rng_state())
        if d.main:
            ckpt.save(
                run_dir / ckpt.CHECKPOINT,
                {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "loader": loader.state_dict(),
                    "rng": rngs,
                    "elapsed_s": elapsed,
                    "config": cfg.model_dump(mode="json"),
                    "world_size": d.world,
                },
            )
        if d.world > 1:
            dist.barrier()

    result = TrainResult(run_dir=run_dir, run_name=run_name, step=start)
    show_bar = progress if progress is not None else (d.main and sys.stderr.isatty())
    bar = None
    if show_bar and d.main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=run_name, unit="step", file=sys.stderr, dynamic_ncols=True)

    model.train()
    window_time, window_tokens, window_steps = 0.0, 0, 0
    status = "FAILED"
    try:
        with _StopFlag() as stop:
            step = start
            while not budget.done(step, elapsed):
                step_t0 = time.perf_counter()
                if steps is not None:
                    factor = lr_factor(step, steps, t)
                else:  # wall-clock budget: the fraction used by the end of this step, estimated
                    factor = lr_factor_time(step, (elapsed + (elapsed / step if step else 0.0)) / budget.time_s, t)
                for g, peak in zip(optimizer.param_groups, peak_lrs):
                    g["lr"] = peak * factor
                loss_acc = torch.zeros((), device=d.device)
                extra: dict[str, torch.Tensor | float] = {}
                for micro in range(layout.accum):
                    batch = Batch(loader.micro_batch(micro).to(d.device, non_blocking=True))
                    sync = micro == layout.accum - 1 or d.world == 1
                    with _no_sync(train_model, not sync), autocast:
                        out = registry.compute_loss(train_model, batch, cfg.model)
                    (out.loss / layout.accum).backward()
                    loss_acc += out.loss.detach() / layout.accum
                    for k, v in out.metrics.items():
                        extra[k] = extra.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v) / layout.accum
                grad_norm = None
                if t.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                loss_val = float(d.all_mean(loss_acc))
                gn_val = float(grad_norm) if grad_norm is not None else 0.0
                if not (math.isfinite(loss_val) and math.isfinite(gn_val)):
                    what = "loss" if not math.isfinite(loss_val) else "gradient norm"
                    last = ckpt.load(run_dir / ckpt.CHECKPOINT)["step"] if (run_dir / ckpt.CHECKPOINT).exists() else None
                    kept = f"last good checkpoint (step {last}) kept in {run_dir}" if last is not None else "no checkpoint was written before it"
                    raise TrainingDiverged(f"{what} is {loss_val if what == 'loss' else gn_val} at step {step + 1}; stopped, {kept}")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loader.advance()
                done = step + 1
                # The loss read above synced the device. A process's first step (lazy imports,
                # allocator and kernel warm-up) is left out of throughput unless it is all there is.
                step_time = time.perf_counter() - step_t0
                if steps is None and d.world > 1:  # every rank follows rank 0's clock (same lr, same end)
                    step_time = float(d.broadcast_tensor(torch.tensor([step_time], dtype=torch.float64, device=d.device)))
                elapsed += step_time
                last = budget.done(done, elapsed)
                log_now = done % t.log_interval == 0 or last
                if done > start + 1 or log_now:
                    window_time += step_time
                    window_tokens += tokens_per_step
                    window_steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_val:.4f}")
                row: dict[str, float] = {}
                if log_now:
                    tps = window_tokens / window_time
                    row = {
                        "train/loss": loss_val,
                        "train/lr": optimizer.param_groups[0]["lr"],
                        "train/tokens_per_s": tps,
                        "train/step_ms": 1000 * window_time / window_steps,
                        "train/peak_mem_mb": peak_memory_mb(d.device),
                    }
                    if grad_norm is not None:
                        row["train/grad_norm"] = gn_val
                    if fpt and peak_flops:
                        row["train/mfu"] = fpt * tps / (peak_flops * d.world)
                    for k, v in extra.items():
                        row[f"train/{k}"] = float(d.all_mean(torch.as_tensor(v, dtype=torch.float32, device=d.device).clone()))
                    if bar is None:
                        of = f"/{steps}" if steps is not None else f" ({elapsed:.0f}/{budget.time_s:g} s)"
                        say(
                            f"step {done}{of} | loss {loss_val:.4f} | lr {row['train/lr']:.2e} | "
                            f"{tps:,.0f} tok/s | {row['train/step_ms']:.0f} ms/step"
                        )
                    window_time, window_tokens, window_steps = 0.0, 0, 0
                stopping = stop.set or (until_step is not None and done >= until_step)
                if (t.eval_interval and done % t.eval_interval == 0) or last:
                    ev = evaluate()
                    row.update(ev)
                    result.final = ev
                    msg = f"eval step {done} | val loss {ev['val/loss']:.4f} nats/token | val bpb {ev['val/bpb']:.4f}"
                    bar.write(msg) if bar is not None else say(msg)
                if row:  # one row per step: tokens and training time seen so far ride along
                    row["train/tokens"] = float(done * tokens_per_step)
                    row["train/elapsed_s"] = elapsed
                    _log(tracker, result, done, row)
                if (t.checkpoint_interval and done % t.checkpoint_interval == 0) or last or stopping:
                    save_checkpoint(done)
                result.step = done
                step = done
                if stopping:
                    result.interrupted = True
                    break
        status = "KILLED" if result.interrupted else "FINISHED"
    except Exception as e:
        if tracker is not None:  # why the run failed, for `blagpt compare` and the MLflow UI
            tracker.log_params({}, {"blagpt.error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]})
        raise
    finally:
        if bar is not None:
            bar.close()
        if d.main and tracker is not None:
            try:
                png = loss_curve_png(tracker.record, run_dir / "loss_curve.png")
                tracker.log_artifact(png)
            except Exception as e:  # noqa: BLE001 - a plot must not hide the real outcome
                say(f"warning: loss curve not drawn ({type(e).__name__}: {e})")
            result.synced = tracker.close(status)
            result.mlflow_run_id = tracker.run_id
            if tracker.enabled and not result.synced:
                why = f" ({tracker.error})" if tracker.error else ""
                say(
                    f"warning: MLflow did not receive everything{why}; the run is kept in {run_dir}; "
                    f"upload it with: blagpt runs sync {run_dir}"
                )
    return result


def resume_config(ref: str, out_dir: str, sets: list[str] | tuple[str, ...], registry: Registry) -> RunConfig:
    """The config a run was started with (from its checkpoint), with ``--set`` items on top.

    Resuming is exact only when nothing but the budget (``train.steps``/``train.tokens``) or
    logging fields change.
    """
    from .config import merge_sources

    run_dir = find_run_dir(ref, out_dir)
    saved = ckpt.load(run_dir / ckpt.CHECKPOINT)["config"]
    return resolve(merge_sources(sets=sets, base=saved), registry)


def _no_sync(model: torch.nn.Module, skip: bool):
    import contextlib

    inner = getattr(model, "_orig_mod", model)
    if skip and hasattr(inner, "no_sync"):
        return inner.no_sync()
    return contextlib.nullcontext()


def _log(tracker: Tracker | None, result: TrainResult, step: int, row: dict[str, float]) -> None:
    result.history.append({"step": step, **row})
    if tracker is not None:
        tracker.log(step, row)


def _check_vocab(stream: TokenStream, vocab: int, pattern: str) -> None:
    sample = stream.read(0, min(len(stream), 1 << 20))
    top = int(sample.max()) if len(sample) else 0
    if top >= vocab:
        raise BlagptError(f"{pattern}: token id {top} is outside the tokenizer's vocabulary of {vocab}; were these shards made with another tokenizer?")


def _provenance_tags(registry: Registry, cfg: RunConfig) -> dict[str, str]:
    tags = {"blagpt.model": cfg.model.name, "blagpt.optimizer": cfg.optimizer.name}
    for info in registry.plugins.values():
        if info.ok:
            tags[f"blagpt.plugin.{info.dist}"] = info.version
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **cfg.tracking.tags}


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

