"""The process group of a run: one code path for a single process and for ``torchrun`` ranks.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs the same trainer: NCCL on CUDA, gloo on
CPU. :class:`Dist` wraps the few collectives the trainer needs; in a single process they are
no-ops, so the trainer never asks "am I distributed?".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


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

    def all_max(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return x

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
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

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def on_main(self, fn, *args, **kwargs) -> Any:
        """Run ``fn`` on rank 0 only and give every rank its result; an exception raised there is
        raised on every rank (as a :class:`~blagpt.errors.BlagptError` when it was one), so no rank
        waits forever for one that failed."""
        result, error = None, None
        if self.main:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - handed to every rank below
                error = e
        if self.world > 1:
            result, error = self.broadcast((result if error is None else None, error))
        if error is not None:
            raise error
        return result


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


# Dense bf16 peak FLOP/s per device, for MFU; override with BLAGPT_PEAK_FLOPS.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator peak, else the resident set's peak."""
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
