"""The process group of a run: one code path for a single process and for ``torchrun`` ranks.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs the same trainer: NCCL on CUDA, gloo on
CPU. :class:`Dist` wraps the few collectives the trainer needs; in a single process they are
no-ops, so the trainer never asks "am I distributed?".
"""

from __future__ import annotations

import os
import re
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


def setup_distributed(device_pref: str, group_of_one: bool = False) -> Dist:
    """This process's rank and device; the process group under ``torchrun`` with several ranks,
    or with one when ``group_of_one`` (fsdp: FSDP2 then shards over that one rank, with its
    mixed-precision policy, as it would over many)."""
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
    if (world > 1 or (group_of_one and "WORLD_SIZE" in os.environ)) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=device)


# Dense peak FLOP/s of one device, for MFU: (pattern of the CUDA device name, label, bf16, fp32).
# First match wins, so a variant comes before its family (H100 NVL and PCIe before H100, which is
# then the SXM part: torch names it "NVIDIA H100 80GB HBM3"). bf16 is the dense tensor-core figure
# with fp32 accumulation (half the sparsity figure of the datasheets); fp32 is plain fp32 (no TF32:
# set train.peak_flops when TF32 matmuls are on). None: the device has no such mode.
PEAK_FLOPS: tuple[tuple[str, str, float | None, float], ...] = (
    (r"\bGH200\b", "GH200", 989e12, 67e12),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", 835e12, 60e12),
    (r"\bH200\b", "H200 SXM", 989e12, 67e12),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 835e12, 60e12),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe", 756e12, 51e12),
    (r"\bH100\b", "H100 SXM", 989e12, 67e12),
    (r"\bH800\b.*\bPCIE\b", "H800 PCIe", 756e12, 51e12),
    (r"\bH800\b", "H800 SXM", 989e12, 67e12),
    (r"\bB200\b", "B200", 2250e12, 75e12),
    (r"\bA100\b.*\bPCIE\b", "A100 PCIe", 312e12, 19.5e12),
    (r"\bA100\b", "A100 SXM", 312e12, 19.5e12),
    (r"\bA800\b", "A800", 312e12, 19.5e12),
    (r"\bL40S\b", "L40S", 362e12, 91.6e12),
    (r"\bL40\b", "L40", 181e12, 90.5e12),
    (r"\bL4\b", "L4", 121e12, 30.3e12),
    (r"\bA10\b", "A10", 125e12, 31.2e12),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe", None, 14e12),
    (r"\bV100\b", "V100 SXM2", None, 15.7e12),
    (r"\bRTX 6000 ADA\b", "RTX 6000 Ada", 364e12, 91.1e12),
    (r"\bRTX A6000\b", "RTX A6000", 155e12, 38.7e12),
    (r"\bRTX 5090\b", "RTX 5090", 209.5e12, 104.8e12),
    (r"\bRTX 4090\b", "RTX 4090", 165.2e12, 82.6e12),
    (r"\bRTX 4080\b", "RTX 4080", 97.5e12, 48.7e12),
    (r"\bRTX 3090\b", "RTX 3090", 71e12, 35.6e12),
    (r"\bRTX 3080\b", "RTX 3080", 59.5e12, 29.8e12),
)


def lookup_peak_flops(device_name: str, bf16: bool) -> tuple[str, float] | None:
    """``(label, peak FLOP/s)`` of the device called ``device_name`` (as ``torch.cuda.get_device_name``
    gives it) in bf16 or fp32, or None for a device (or mode) not in :data:`PEAK_FLOPS`."""
    name = " ".join(device_name.upper().replace("-", " ").replace("_", " ").split())
    for pattern, label, bf16_peak, fp32_peak in PEAK_FLOPS:
        if re.search(pattern, name):
            peak = bf16_peak if bf16 else fp32_peak
            return (label, peak) if peak is not None else None
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator peak, else the resident set's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def device_peak_flops(device: torch.device, bf16: bool, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device for MFU: ``override`` (``train.peak_flops``), else
    ``$BLAGPT_PEAK_FLOPS``, else the CUDA device's entry in :data:`PEAK_FLOPS`; None on the CPU or
    for an unknown device."""
    if override is not None:
        return float(override)
    if os.environ.get("BLAGPT_PEAK_FLOPS"):
        return float(os.environ["BLAGPT_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    found = lookup_peak_flops(torch.cuda.get_device_name(device), bf16)
    return found[1] if found is not None else None
