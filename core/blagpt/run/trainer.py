"""The trainer: one code path for a single process and for ``torchrun`` ranks (DDP or FSDP2).

The trainer knows a model only through its hooks (``build_model``, ``build_optimizer``,
``compute_loss``). Under ``torchrun`` every rank runs the same :class:`Trainer`: the global batch
is fixed by the config and gradient accumulation absorbs the world size. Validation reports nats
per token and bits per byte on a fixed slice of the validation split (:mod:`.evaluator`).
``train.parallel`` picks how ranks share the model (:mod:`.parallel`): a full copy each (DDP), or
sharded by block (FSDP2, with sharded checkpoints).

:meth:`Trainer.train` reads as the loop it runs: claim the run folder, build data, build model and
optimizer, restore, then per step ``train_step`` -> ``maybe_evaluate`` -> ``maybe_log`` ->
``maybe_checkpoint``. Each phase reads and writes the trainer's state explicitly (``self.step``,
``self.elapsed``, the parts built), so a test can run one phase without a whole run.

Host syncs: on a GPU the loss, the gradient norm and their finiteness stay on the device except
at steps that log, evaluate or checkpoint (and every step under a wall-clock budget, which needs
the time of each step). A non-finite loss or gradient norm is recorded on the device at the step it
happens and raised at the next such step, always before a checkpoint could save poisoned weights.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import BUDGETS, RunConfig
from ..data.loader import Layout, TaskLoader, TokenStream, TrainLoader, check_task_sequences, check_token_ids, val_slice
from ..data import manifest
from ..data.prepare import embedded_dataset
from ..data.tokenizers import get_tokenizer
from ..errors import BlagptError, ConfigError
from ..plugin.registry import Registry, get_registry
from ..plugin.specs import Batch, BuildContext
from . import checkpoint as ckpt
from . import parallel
from .distributed import Dist, device_peak_flops, peak_memory_mb, setup_distributed
from .divergence import FiniteWatch, TrainingDiverged  # noqa: F401 - TrainingDiverged is raised from here
from .evaluator import Evaluator, TaskEvaluator, describe, task_loss
from .progress import Progress
from .resume import Resume
from .rundir import RunDir
from .schedule import Budget, budget_for, lr_factor, lr_factor_time
from .stop import StopFlag
from .recorder import Recorder


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
    resumed_from: int | None = None
    final_step: int | None = None  # the step ``final`` (the last evaluation) was made at
    signalled: bool = False  # stopped by Ctrl-C / SIGTERM (not by ``until_step``)


@dataclass
class StepStats:
    """One optimizer step as ``train_step`` leaves it: tensors stay on the device."""

    step: int  # the step just finished, counted from 1
    loss: torch.Tensor  # this rank's mean over its micro-batches
    grad_norm: torch.Tensor | None
    extra: dict[str, Any]
    seconds: float


class Trainer:
    """Trains ``cfg`` (or continues ``resume``) to its budget.

    ``until_step`` stops early (checkpointed, resumable). ``restart`` starts a run of this name again
    from step 0, discarding its checkpoint and metrics (and replacing its MLflow run).
    """

    def __init__(self, cfg: RunConfig, registry: Registry | None = None, resume: str | Resume | None = None,
                 until_step: int | None = None, progress: bool | None = None, echo=print, restart: bool = False) -> None:
        self.cfg, self.registry = cfg, registry or get_registry()
        if isinstance(resume, str):
            resume = Resume.open(resume, cfg.train.out_dir)
        self.resume, self.until_step, self.progress, self.echo, self.restart = resume, until_step, progress, echo, restart
        self.step, self.elapsed = 0, 0.0  # steps done; seconds spent in training steps, over resumes
        self.out = Progress(echo, int(os.environ.get("RANK", "0")) == 0, progress)
        self.recorder: Recorder | None = None

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Build, restore, then step until the budget is spent or a stop is asked for."""
        self.dist = setup_distributed(self.cfg.train.device, group_of_one=self.cfg.train.parallel == "fsdp")
        with self.owned_run():
            self.build_data()
            self.build_model_and_optimizer()
            self.restore()
            self.wrap_model()
            self.start_tracking()
            with StopFlag(announce=self.dist.main) as stop, self.out.bar_for(self.budget.steps, self.step, self.run.name):
                while not self.budget.done(self.step, self.elapsed):
                    stats = self.train_step()
                    evals = self.maybe_evaluate(stats)
                    self.maybe_log(stats, evals)
                    stopping = self.should_stop(stop)
                    self.maybe_checkpoint(stats, force=stopping)
                    if stopping:
                        self.result.interrupted, self.result.signalled = True, stop.set
                        break
        return self.result

    def train_step(self) -> StepStats:
        """One optimizer step over ``accum`` micro-batches; no host sync unless this step needs one."""
        t, layout, model = self.cfg.train, self.layout, self.train_model
        t0 = time.perf_counter()
        self.set_lr(self.step)
        loss = torch.zeros((), device=self.dist.device)
        extra: dict[str, Any] = {}
        for micro in range(layout.accum):
            tokens = self.loader.micro_batch(micro)
            mask = self.loader.micro_mask(micro) if self.cfg.on_task else None  # a task's answer positions
            if self.dist.device.type == "cuda":  # a copy from pageable memory would wait for the device
                tokens, mask = tokens.pin_memory(), mask if mask is None else mask.pin_memory()
            batch = Batch(tokens.to(self.dist.device, non_blocking=True),
                          mask=None if mask is None else mask.to(self.dist.device, non_blocking=True))
            sync_grads = micro == layout.accum - 1 or self.dist.world == 1
            with parallel.gradient_sync(model, sync_grads), self.autocast:
                if batch.mask is None:
                    out = self.registry.compute_loss(model, batch, self.cfg.model)
                else:  # a task trains its answers only: the masked next-token cross-entropy of the logits
                    out = task_loss(model, batch, self.tokenizer.vocab_size)
            (out.loss / layout.accum).backward()
            loss += out.loss.detach() / layout.accum
            for k, v in out.metrics.items():
                extra[k] = extra.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v) / layout.accum
        grad_norm = parallel.local(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)) if t.grad_clip is not None else None
        self.finite.see(self.step + 1, loss, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loader.advance()
        done = self.step + 1
        if self.host_step(done) and self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)  # the step's device time belongs to the step
        seconds = time.perf_counter() - t0
        if self.budget.time_s is not None and self.dist.world > 1:  # every rank follows rank 0's clock
            seconds = float(self.dist.broadcast_tensor(torch.tensor([seconds], dtype=torch.float64, device=self.dist.device)))
        self.step, self.elapsed = done, self.elapsed + seconds
        self.result.step = done
        self.out.stepped()
        return StepStats(done, loss, grad_norm, extra, seconds)

    def maybe_evaluate(self, stats: StepStats) -> dict[str, float]:
        t = self.cfg.train
        if not ((t.eval_interval and stats.step % t.eval_interval == 0) or self.last_step()):
            return {}
        self.raise_if_diverged()
        ev = self.evaluator(self.eval_model)
        self.result.final, self.result.final_step = ev, stats.step
        return ev

    def maybe_log(self, stats: StepStats, evals: dict[str, float]) -> None:
        """Training metrics at logging steps, the evaluation at evaluation steps: one row per step."""
        t, done = self.cfg.train, stats.step
        log_now = done % t.log_interval == 0 or self.last_step()
        if log_now:
            self.raise_if_diverged()  # before a non-finite loss is logged
        if done > self.start_step + 1 or log_now:  # a process's first step warms up: not timed
            self.window = (self.window[0] + stats.seconds, self.window[1] + self.tokens_per_step, self.window[2] + 1)
        row: dict[str, float] = self.train_row(stats) if log_now else {}
        if evals:
            p = self.cfg.train.eval_on
            self.say(f"eval step {done} | {describe(evals, p)}")
        row.update(evals)
        if not row:
            return
        row["train/tokens"] = float(done * self.tokens_per_step)
        if self.flops_per_token:
            row["train/flops"] = self.flops_per_token * row["train/tokens"]
        row["train/elapsed_s"] = self.elapsed
        self.result.history.append({"step": done, **row})
        if self.recorder is not None:
            self.recorder.log(done, row)

    def maybe_checkpoint(self, stats: StepStats, force: bool = False) -> None:
        t = self.cfg.train
        if not (force or self.last_step() or (t.checkpoint_interval and stats.step % t.checkpoint_interval == 0)):
            return
        self.raise_if_diverged()
        rngs = self.dist.gather(ckpt.rng_state())
        payload = {"step": self.step, "loader": self.loader.state_dict(), "rng": rngs, "elapsed_s": self.elapsed,
                   "config": self.cfg.model_dump(mode="json"), "world_size": self.dist.world}
        if t.parallel == "fsdp":  # every rank writes its shards
            ckpt.save_sharded(self.run, self.model, self.optimizer, payload, self.dist)
        elif self.dist.main:
            self.run.save_checkpoint({**payload, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})
        if self.dist.main:
            self.recorder.checkpointed()  # MLflow receives it in the background
        self.dist.barrier()

    # -- phases before the loop --------------------------------------------------------------

    @contextmanager
    def owned_run(self) -> Iterator[None]:
        """Claim the run folder (rank 0 holds its lock), and record how the run ended."""
        self.recorder = Recorder(self.cfg, self.say) if self.dist.main else None
        path = self.dist.on_main(lambda: str(self.recorder.claim(self.resume, self.restart).path))
        self.run = self.recorder.run if self.dist.main else RunDir(path)
        self.result = TrainResult(run_dir=self.run.path, run_name=self.run.name, step=self.resume.step if self.resume else 0)
        status = "FAILED"
        try:
            yield
            status = "KILLED" if self.result.interrupted else "FINISHED"
        except KeyboardInterrupt:
            status, self.result.interrupted = "KILLED", True
            raise
        except Exception as e:
            if self.recorder is not None:
                self.recorder.fail(e)
            raise
        finally:
            if self.recorder is not None:
                self.recorder.close(status, self.result)

    def build_data(self) -> None:
        """The tokenizer, both splits (checked against it: a manifest, else the id range), the
        loader and the validation slice."""
        cfg, d, t = self.cfg, self.dist, self.cfg.train
        if cfg.on_task:
            return self.build_task_data()
        self.tok_name = cfg.tokenizer_name(self.registry)
        self.tokenizer = get_tokenizer(self.tok_name, self.registry)
        if cfg.data.train is None:
            d.on_main(embedded_dataset, self.tok_name, self.registry)  # rank 0 prepares it once; every rank finds it cached
            train_glob, val_glob = embedded_dataset(self.tok_name, self.registry)
        else:
            train_glob, val_glob = cfg.data.train, cfg.data.val
        train_stream = TokenStream(train_glob, "training", field="data.train")
        val_stream = TokenStream(val_glob, "validation", field="data.val")
        self.datasets = []
        for stream, field_, context in ((train_stream, "data.train", "training"), (val_stream, "data.val", "validation")):
            found = manifest.check(stream.paths, self.tokenizer, field_, stream.pattern)
            if found is None:
                check_token_ids(stream, self.tokenizer, field_)
            self.datasets.append(manifest.dataset_input(stream, found, context))
        self.layout = layout_for(cfg, d)
        self.loader = TrainLoader(train_stream, t.seq_len, self.layout, t.seed)
        self.val = val_slice(val_stream, t.seq_len, d.rank, d.world, self.tokenizer, t.eval_tokens, t.eval_bytes, t.eval_on)
        self.tokens_per_step = self.layout.global_batch * t.seq_len

    def build_task_data(self) -> None:
        """A generated task (``task.name`` other than ``lm``): its vocabulary, its training
        sequences in memory (visited in the loader's seeded order) and the fixed test sequences,
        or its tuning sequences under ``train.eval_on=tune``, that every evaluation scores."""
        cfg, d, t = self.cfg, self.dist, self.cfg.train
        task = self.registry.build_task(cfg.task)
        self.tok_name = cfg.tokenizer_name(self.registry)
        self.tokenizer = TaskVocabulary(self.tok_name, int(task.vocab_size))
        held = "tune" if t.eval_on == "tune" else "test"
        splits = {}
        for split in ("train", held):
            try:
                splits[split] = task.sequences(split, t.seq_len)
            except ValueError as e:  # the task does not fit this run (sequence length): the task says which field
                raise ConfigError(str(e)) from None
            check_task_sequences(splits[split], t.seq_len, self.tokenizer.vocab_size, f"task {cfg.task.name} ({split} split)")
        self.layout = layout_for(cfg, d)
        self.loader = TaskLoader(splits["train"].tokens, splits["train"].mask, self.layout, t.seed, f"task {cfg.task.name}")
        self.val = splits[held]
        self.datasets = [task_dataset(cfg, split, seqs, self.tokenizer.vocab_size) for split, seqs in splits.items()]
        self.tokens_per_step = self.layout.global_batch * t.seq_len

    def build_model_and_optimizer(self) -> None:
        """The model (seeded, so every rank builds the same weights), its budget (a FLOP budget needs
        the built model's FLOPs per token) and the optimizer."""
        t, d = self.cfg.train, self.dist
        budget = None if t.budget_kind == "flops" else budget_for(t, self.tokens_per_step, None)
        ctx = BuildContext(self.tokenizer.vocab_size, t.seq_len, self.tok_name, t.compile, str(d.device),
                           total_steps=budget and budget.steps)
        torch.manual_seed(t.seed)
        self.model = self.registry.build_model(self.cfg.model, ctx).to(d.device)
        self.flops_per_token = self.model.flops_per_token(t.seq_len) if hasattr(self.model, "flops_per_token") else None
        self.state_size_bytes = self.model.state_size_bytes(t.seq_len) if hasattr(self.model, "state_size_bytes") else None
        self.budget: Budget = budget or budget_for(t, self.tokens_per_step, self.flops_per_token)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.n_params_non_embedding = self.n_params - embedding_params(self.model, self.tokenizer.vocab_size, t.seq_len)
        self.shard_model()
        self.optimizer = self.registry.build_optimizer(self.model, self.cfg.optimizer, replace(ctx, total_steps=self.budget.steps))
        self.peak_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def shard_model(self) -> None:
        """Activation checkpointing of the blocks, and FSDP2 sharding over several ranks: both before
        the optimizer is built (sharding replaces the parameters with DTensors)."""
        t, d = self.cfg.train, self.dist
        shard = t.parallel == "fsdp" and (d.world > 1 or torch.distributed.is_initialized())  # torchrun: even 1 rank
        if not shard and t.activation_checkpointing == "none":
            return
        blocks = parallel.find_blocks(self.model)
        if t.activation_checkpointing == "blocks":
            parallel.checkpoint_blocks(blocks, self.cfg.model.name)
        if shard:
            if not blocks:
                self.say(f"note: model {self.cfg.model.name!r} names no blocks (no nn.ModuleList, no parallel_blocks()): "
                         "FSDP shards it as one unit")
            parallel.shard(self.model, blocks, d.device)

    def restore(self) -> None:
        """Resume from the checkpoint (every rank its own RNG state), or start at step 0."""
        t, d = self.cfg.train, self.dist
        state = self.resume.state if self.resume is not None else None
        self.start_step = 0
        if state is None:
            if t.init_from is not None:
                self.load_init_weights()
            torch.manual_seed(t.seed + d.rank)  # distinct dropout per rank, same weights (built above)
            return
        if "shards" in state:  # resharded to this run's ranks
            ckpt.load_sharded(state, self.model, self.optimizer)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        self.start_step = self.result.resumed_from = self.step
        rngs = state["rng"]
        if len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank])
        else:
            self.say(f"warning: checkpoint has RNG states of {len(rngs)} ranks, this run has {d.world}; each rank's RNG is "
                     "re-seeded from train.seed, the step and its rank, so dropout draws will differ (the data order, "
                     "which follows the global step, does not)")
            torch.manual_seed(t.seed + self.step + d.rank)
        if self.budget.done(self.step, self.elapsed):
            saved = state["config"]["train"]
            if self.run.status == "FINISHED" or any(saved.get(k) != getattr(t, k) for k in BUDGETS):
                self.refuse_spent_budget()
            # killed after its last checkpoint, before it could say so: nothing left but to finish
            self.result.final = {r["key"]: r["value"] for r in self.run.metrics.read()
                                 if r["step"] == self.step and r["key"].startswith(f"{t.eval_on}/")}
            self.result.final_step = self.step if self.result.final else None

    def refuse_spent_budget(self) -> None:
        t = self.cfg.train
        field_, value = next(((f"train.{k}", getattr(t, k)) for k in ("tokens", "flops", "time_s") if getattr(t, k) is not None),
                             ("train.steps", t.steps))
        spent = f"{self.elapsed:.0f} s of training" if self.budget.time_s is not None else f"step {self.step}"
        done = "finished" if self.run.status == "FINISHED" else "reached"
        raise ConfigError(f"{field_}={value:g}: the run has already {done} {spent}; set a larger budget to train further")

    def load_init_weights(self) -> None:
        path = self.cfg.train.init_from
        try:
            weights = ckpt.load_weights(path)
            if parallel.is_sharded(self.model):  # every rank holds the full weights; each keeps its shards
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True))
            else:
                self.model.load_state_dict(weights)
        except RuntimeError as e:
            first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise BlagptError(f"train.init_from: {path}: weights do not fit model {self.cfg.model.name!r}: {first}") from None
        self.say(f"initialised model weights from {path}")

    def wrap_model(self) -> None:
        """DDP over ranks (fsdp sharded the model before the optimizer was built), torch.compile if
        asked, bf16 autocast; the evaluator on the unwrapped model."""
        t, d = self.cfg.train, self.dist
        self.train_model = self.eval_model = self.model
        if d.world > 1 and t.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if t.compile:
            self.train_model, self.eval_model = torch.compile(self.train_model), torch.compile(self.model)
        self.bf16 = t.precision == "bf16" or (t.precision == "auto" and d.device.type == "cuda")
        self.autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        lockstep = parallel.is_sharded(self.model)
        if self.cfg.on_task:
            self.evaluator = TaskEvaluator(self.val.tokens, self.val.mask, self.tokenizer.vocab_size, self.layout.micro_batch, d,
                                           self.autocast, self.registry.compute_loss, self.cfg.model, prefix=t.eval_on,
                                           lockstep=lockstep)
        else:
            self.evaluator = Evaluator(self.val, self.tokenizer.token_bytes, self.layout.micro_batch, t.seq_len, d,
                                       self.autocast, self.registry.compute_loss, self.cfg.model, prefix=t.eval_on,
                                       lockstep=lockstep)
        self.finite = FiniteWatch(d)
        self.window = (0.0, 0, 0)  # seconds, tokens, steps since the last logged throughput
        self.peak_flops = device_peak_flops(d.device, self.bf16, t.peak_flops)
        if self.peak_flops is None and d.device.type == "cuda" and self.flops_per_token:
            self.say(f"note: no peak FLOP/s known for {torch.cuda.get_device_name(d.device)!r} in {'bf16' if self.bf16 else 'fp32'}; "
                     "set train.peak_flops to log train/mfu")

    def start_tracking(self) -> None:
        """Rank 0: the run's record (run.json, config.yaml, metrics kept up to the resumed step) and
        its MLflow mirror; then the one line that says what is trained."""
        cfg, t, d = self.cfg, self.cfg.train, self.dist
        if self.recorder is not None:
            params = {**cfg.flat(), "n_params": self.n_params, "n_params_non_embedding": self.n_params_non_embedding, "world_size": d.world, "grad_accum": self.layout.accum,
                      "total_steps": self.budget.steps if self.budget.steps is not None else "time budget",
                      "tokenizer": self.tok_name, "tokens_per_step": self.tokens_per_step,
                      "flops_per_token": self.flops_per_token if self.flops_per_token is not None else "not reported",
                      "state_size_bytes": self.state_size_bytes}
        shape = f"{self.budget.describe()} x {self.layout.global_batch} seqs x {t.seq_len} tokens"
        if self.recorder is not None:
            self.recorder.start(self.step, self.result.resumed_from, self.budget, params, self.registry, self.datasets,
                                tokenizer=self.tok_name, budget_text=shape)
        resumed = f", resumed at step {self.step}" if self.result.resumed_from is not None else ""
        self.say(
            f"run {self.run.name}: model {cfg.model.name} ({self.n_params / 1e6:.2f}M params), optimizer {cfg.optimizer.name}, "
            f"{shape}, {d.world} rank(s) on {d.device.type}{f' ({t.parallel})' if d.world > 1 else ''}, "
            f"{'bf16' if self.bf16 else 'fp32'}{', compiled' if t.compile else ''}{resumed}"
        )

    # -- pieces of the phases ----------------------------------------------------------------

    def set_lr(self, step: int) -> None:
        t = self.cfg.train
        if self.budget.steps is not None:
            factor = lr_factor(step, self.budget.steps, t)
        else:  # wall-clock budget: the fraction used by the end of this step, estimated
            factor = lr_factor_time(step, (self.elapsed + (self.elapsed / step if step else 0.0)) / self.budget.time_s, t)
        for g, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            g["lr"] = peak * factor

    def host_step(self, done: int) -> bool:
        """Whether step ``done`` reads anything back to the host (log, eval, checkpoint, the end)."""
        t = self.cfg.train
        return (self.budget.steps is None or done % t.log_interval == 0 or done >= self.budget.steps
                or bool(t.eval_interval and done % t.eval_interval == 0)
                or bool(t.checkpoint_interval and done % t.checkpoint_interval == 0)
                or (self.until_step is not None and done >= self.until_step))

    def last_step(self) -> bool:
        return self.budget.done(self.step, self.elapsed)

    def should_stop(self, stop: StopFlag) -> bool:
        """A stop asked for (signal, ``until_step``). Ranks agree at host steps: one process checks
        every step, several ranks at their next host step (a collective per step would sync)."""
        asked = self.until_step is not None and self.step >= self.until_step
        if self.dist.world == 1:
            return asked or stop.set
        if not self.host_step(self.step):
            return asked
        flag = torch.tensor([float(stop.set)], device=self.dist.device)
        return asked or bool(self.dist.all_max(flag).item())

    def raise_if_diverged(self) -> None:
        kept = self.run.checkpoint_step if self.dist.main else None
        self.finite.check(f"last good checkpoint (step {kept}) kept in {self.run.path}" if kept is not None
                          else "no checkpoint was written before it")

    def train_row(self, stats: StepStats) -> dict[str, float]:
        """The logged training metrics of a logging step (reads the loss back: a host sync)."""
        seconds, tokens, steps = self.window
        tps = tokens / seconds if seconds else 0.0
        row = {"train/loss": float(self.dist.all_mean(stats.loss.clone())), "train/lr": self.optimizer.param_groups[0]["lr"],
               "train/tokens_per_s": tps, "train/step_ms": 1000 * seconds / max(steps, 1),
               "train/peak_mem_mb": peak_memory_mb(self.dist.device)}
        if stats.grad_norm is not None:
            row["train/grad_norm"] = float(stats.grad_norm)
        if self.flops_per_token and self.peak_flops:
            row["train/mfu"] = self.flops_per_token * tps / (self.peak_flops * self.dist.world)
        for k, v in stats.extra.items():
            row[f"train/{k}"] = float(self.dist.all_mean(torch.as_tensor(v, dtype=torch.float32, device=self.dist.device).clone()))
        self.window = (0.0, 0, 0)
        steps = self.budget.steps
        self.out.logged(stats.step, row, f"/{steps}" if steps is not None else f" ({self.elapsed:.0f}/{self.budget.time_s:g} s)")
        return row

    def say(self, msg: str) -> None:
        self.out.say(msg)


def train(cfg: RunConfig, registry: Registry | None = None, resume: str | Resume | None = None, until_step: int | None = None,
          progress: bool | None = None, echo=print, restart: bool = False) -> TrainResult:
    """Train ``cfg`` (or continue the run ``resume``: a folder, run name or MLflow run id, or a
    :class:`~blagpt.run.resume.Resume`); returns what was logged and the final evaluation."""
    return Trainer(cfg, registry, resume, until_step, progress, echo, restart).train()


def embedding_params(model: torch.nn.Module, vocab_size: int, seq_len: int = 8) -> int:
    """Parameters that scale with the vocabulary or the context rather than the model's depth and
    width: every ``nn.Embedding`` (token and position tables) and the output head, the
    ``nn.Linear`` whose output the logits are (found by one forward pass of ``seq_len`` tokens:
    its output shares storage with the returned logits, sliced or not); shared tensors count once.
    The rest is the parameter count scaling laws use (Kaplan et al. 2020, arXiv 2001.08361)."""
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    outputs: list[tuple[torch.nn.Module, torch.Tensor]] = []  # kept alive, so no storage is reused during the pass
    hooks = [m.register_forward_hook(lambda mod, _i, out: outputs.append((mod, out)))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            logits = model(torch.zeros(1, seq_len, dtype=torch.long, device=device))
        ptr = logits.untyped_storage().data_ptr()
        heads = [mod for mod, out in outputs if out.untyped_storage().data_ptr() == ptr and mod.out_features >= vocab_size]
    except Exception:  # noqa: BLE001 - a model that cannot run this probe: tables only
        heads = []
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        outputs.clear()
    seen: dict[int, int] = {}
    for m in (*tables, *heads):
        for p in m.parameters(recurse=False):
            seen[id(p)] = p.numel()
    return sum(seen.values())


@dataclass(frozen=True)
class TaskVocabulary:
    """What a task run knows of its vocabulary (no tokenizer: the task generates token ids)."""

    name: str
    vocab_size: int


def task_dataset(cfg: RunConfig, split: str, seqs, vocab_size: int) -> dict[str, Any]:
    """A task split as an MLflow dataset input: its digest is the task's config and sequence
    length, which determine the sequences."""
    import hashlib
    import json

    what = json.dumps({"task": cfg.task.model_dump(mode="json"), "seq_len": cfg.train.seq_len, "split": split}, sort_keys=True)
    context = "training" if split == "train" else "validation"
    return {"name": f"task-{cfg.task.name}/{split}", "digest": hashlib.sha256(what.encode()).hexdigest()[:32],
            "source": f"blagpt task {cfg.task.name} ({split} split, generated)", "context": context,
            "profile": {"sequences": int(seqs.tokens.shape[0]), "answers": int(seqs.mask.sum()), "vocab_size": vocab_size}}


def global_batch(cfg: RunConfig, world: int) -> int:
    return cfg.train.global_batch_size or cfg.train.micro_batch_size * world


def layout_for(cfg: RunConfig, d: Dist) -> Layout:
    g, m = global_batch(cfg, d.world), cfg.train.micro_batch_size
    if g % (m * d.world):
        raise ConfigError(
            f"train.global_batch_size: {g} sequences is not a multiple of micro_batch_size x world size = {m} x {d.world}"
        )
    return Layout(micro_batch=m, world=d.world, rank=d.rank, accum=g // (m * d.world))

