"""``train.parallel: fsdp`` on 2 gloo ranks (FSDP2 runs on the CPU): the same training as one
process, exact resume after a kill, a 2-rank checkpoint resumed on 1 rank, sharded checkpoints
that stay whole on a full disk and load no pickled code; and the peak-FLOP/s lookup of MFU.

Runs go through the real CLI in subprocesses (``torchrun`` for 2 ranks); a run is held at a known
step by the test model's hold hook, so nothing depends on timing.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runs import env, limited_file_size, meta, one_error_line, rows, sets, wait_for
from conftest import TINY, run_cli

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "blagpt"]
# 2 blocks, a global batch of 16 (2 ranks: 2 micro-batches each, so FSDP's gradient sync is skipped
# on the first), a checkpoint every 2 steps, every step logged
FSDP = ("model.n_layers=2", "train.steps=6", "train.global_batch_size=16", "train.checkpoint_interval=2", "train.eval_tokens=512")


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["value"] for r in rows(run_dir) if r["key"] == "train/loss"}


def _val(run_dir: Path) -> float:
    return [r["value"] for r in rows(run_dir) if r["key"] == "val/loss"][-1]


@pytest.fixture(scope="module")
def reg():
    from blagpt.plugin.registry import Registry

    return Registry.load(only=["tinylm"])


def _train_here(reg, *items, **kw):
    """A tinylm run in this process (``train.out_dir`` runs/ under the working directory)."""
    from blagpt.config import merge_sources, resolve
    from blagpt.run.trainer import train

    cfg = resolve(merge_sources(sets=[*TINY, "train.eval_interval=0", "train.log_interval=1", *items]), reg)
    return train(cfg, registry=reg, echo=lambda *a, **k: None, progress=False, **kw)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _torchrun(args, cwd, **kw):
    return subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process (ddp, the default) and 2 fsdp ranks with activation checkpointing, uninterrupted."""
    root = tmp_path_factory.mktemp("fsdp")
    run_cli(["train", "--no-track", *sets(*FSDP, "tracking.run_name=one")], cwd=root, check=0)
    two = _torchrun(["train", "--no-track", *sets(*FSDP, "train.parallel=fsdp", "train.activation_checkpointing=blocks",
                                                   "tracking.run_name=two")], root)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    assert "2 rank(s) on cpu (fsdp)" in two.stdout
    return root


@pytest.mark.slow
def test_two_fsdp_ranks_train_like_one_process(reference):
    one, two = reference / "runs" / "one", reference / "runs" / "two"
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4), f"step {s}"
    assert _val(two) == pytest.approx(_val(one), rel=1e-4)
    assert meta(two)["params"]["world_size"] == 2
    # the checkpoint names its folder of shards, and that folder is the only one left
    state = torch.load(two / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and "model" not in state and state["world_size"] == 2
    assert [p.name for p in two.glob("checkpoint-*")] == [state["sharded"]]


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_bit_identically_on_two_ranks_and_on_one(reference, tmp_path):
    hold = tmp_path / "go"
    # forward 9 of each rank is step 5's first micro-batch: the checkpoint of step 4 is written
    args = ["train", "--no-track", *sets(*FSDP, "train.parallel=fsdp", "train.activation_checkpointing=blocks",
                                         "tracking.run_name=killed", "model.hold_at=9", f"model.hold_file={hold}")]
    proc = subprocess.Popen([*TORCHRUN, *args], cwd=tmp_path, env=env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(Path(f"{hold}.waiting"), proc, "the hold of the 2-rank run")
        ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own
        assert len(ranks) == 2, ranks
        for pid in [*ranks, proc.pid]:  # SIGKILL: no handler runs
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = tmp_path / "runs" / "killed"
    assert meta(run_dir)["checkpoint_step"] == 4 and sorted(_losses(run_dir)) == [1, 2, 3, 4]
    copy = tmp_path / "elsewhere" / "killed"
    shutil.copytree(run_dir, copy)
    (run_dir / ".checkpoint-00000006-deadbeef.tmp").mkdir()  # the shards of a write killed before it was published
    (run_dir / ".checkpoint-00000006-deadbeef.tmp" / "__0_0.distcp").write_bytes(b"partial")
    hold.write_text("")

    two = _torchrun(["train", "--resume", "killed", "--no-track"], tmp_path)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    assert "resumed at step 4" in two.stdout
    assert not list(run_dir.glob(".*.tmp"))
    ref = reference / "runs" / "two"
    assert _losses(run_dir) == _losses(ref)  # bit-identical, every step
    assert _val(run_dir) == _val(ref)

    one = run_cli(["train", "--resume", str(copy), "--no-track"], cwd=tmp_path, check=0)
    assert "RNG states of 2 ranks, this run has 1" in one.stdout and "resumed at step 4" in one.stdout
    a, b = _losses(copy), _losses(ref)
    assert sorted(a) == list(range(1, 7))
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-4), f"step {s}"
    assert _val(copy) == pytest.approx(_val(ref), rel=1e-4)
    assert torch.load(copy / "checkpoint.pt", weights_only=True)["world_size"] == 1


@pytest.mark.slow
def test_a_full_disk_during_a_sharded_checkpoint_keeps_the_previous_one(workdir, reg):
    _train_here(reg, *FSDP, "train.parallel=fsdp", "tracking.run_name=full", "tracking.enabled=false", until_step=2)
    run_dir = workdir / "runs" / "full"
    before = (run_dir / "checkpoint.pt").read_bytes()
    (shards,) = run_dir.glob("checkpoint-*")
    files = {p.name: p.read_bytes() for p in shards.iterdir()}
    cmd = [sys.executable, "-m", "blagpt", "train", "--resume", "full", "--no-track"]
    proc = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limited_file_size(60_000))  # the shards of model and AdamW are ~0.5 MB
    line = one_error_line(proc)
    assert "cannot write the sharded checkpoint (rank 0: File too large); the previous checkpoint (step 2) is kept" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == files
    assert not list(run_dir.glob(".*.tmp")) and list(run_dir.glob("checkpoint-*")) == [shards]
    run_cli(["train", "--resume", "full", "--no-track"], cwd=workdir, check=0)  # the disk has room again
    assert sorted(_losses(run_dir)) == list(range(1, 7))
    # the weights of a sharded checkpoint, read in one process (for sample and train.init_from)
    from blagpt.run import checkpoint as ckpt

    weights = ckpt.load_weights(run_dir)
    assert weights.keys() == ckpt.model_weights(ckpt.load(run_dir / "checkpoint.pt")).keys()
    assert weights["blocks.1.qkv.weight"].shape == (96, 32) and all(v.isfinite().all() for v in weights.values())


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_sharded_checkpoint_metadata_runs_no_pickled_code(workdir, reg):
    from blagpt.errors import BlagptError
    from blagpt.run import checkpoint as ckpt

    _train_here(reg, "train.steps=1", "train.parallel=fsdp", "tracking.run_name=evil", "tracking.enabled=false")
    run_dir = workdir / "runs" / "evil"
    (shards,) = run_dir.glob("checkpoint-*")
    assert ckpt.model_weights(ckpt.load(run_dir / "checkpoint.pt"))  # the real metadata reads
    (shards / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(BlagptError, match=r"\.metadata: cannot read the sharded checkpoint's metadata .*posix.system is not allowed"):
        ckpt.model_weights(ckpt.load(run_dir / "checkpoint.pt"))
    proc = run_cli(["sample", "--run", "evil", "--tokens", "2"], cwd=workdir)
    assert "is not allowed in checkpoint metadata" in one_error_line(proc)
    assert not (workdir / "pwned").exists()
    shutil.rmtree(shards)
    with pytest.raises(BlagptError, match=r"its sharded state .* is missing or incomplete"):
        ckpt.load(run_dir / "checkpoint.pt")


def test_train_parallel_is_validated_and_kept_on_resume(workdir, reg):
    from blagpt.config import merge_sources, resolve
    from blagpt.errors import ConfigError
    from blagpt.run.resume import resume_config

    _train_here(reg, "train.steps=2", "tracking.run_name=p", "tracking.enabled=false")
    with pytest.raises(ConfigError, match=r"train.parallel \('ddp' -> 'fsdp'\)"):
        resume_config("p", "runs", ["train.parallel=fsdp"], reg)
    assert resume_config("p", "runs", ["train.activation_checkpointing=blocks"], reg).train.activation_checkpointing == "blocks"
    with pytest.raises(ConfigError, match=r"^train.parallel: expected .*'zero'"):
        resolve(merge_sources(sets=[*TINY, "train.parallel=zero"]), reg)


# -- MFU: the peak FLOP/s of the device the run is on ------------------------------------------


@pytest.mark.parametrize(("name", "bf16", "label", "peak"), [
    ("NVIDIA H100 80GB HBM3", True, "H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", True, "H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", True, "H100 NVL", 835e12),
    ("NVIDIA H100 80GB HBM3", False, "H100 SXM", 67e12),
    ("NVIDIA H200", True, "H200 SXM", 989e12),
    ("NVIDIA H200 NVL", True, "H200 NVL", 835e12),
    ("NVIDIA GH200 480GB", True, "GH200", 989e12),
    ("NVIDIA A100-SXM4-80GB", True, "A100 SXM", 312e12),
    ("NVIDIA A100-PCIE-40GB", True, "A100 PCIe", 312e12),
    ("NVIDIA A100 80GB PCIe", False, "A100 PCIe", 19.5e12),
    ("NVIDIA A10", True, "A10", 125e12),
    ("NVIDIA L4", True, "L4", 121e12),
    ("NVIDIA L40S", True, "L40S", 362e12),
    ("NVIDIA GeForce RTX 4090", True, "RTX 4090", 165.2e12),
    ("NVIDIA GeForce RTX 3090", False, "RTX 3090", 35.6e12),
    ("Tesla V100-SXM2-16GB", False, "V100 SXM2", 15.7e12),
])
def test_peak_flops_tell_device_variants_apart(name, bf16, label, peak):
    from blagpt.run.distributed import lookup_peak_flops

    assert lookup_peak_flops(name, bf16) == (label, peak)


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla V100-SXM2-16GB", "NVIDIA GeForce GTX 1080", "Tesla T4"])
def test_devices_without_a_known_peak_get_none(name):
    from blagpt.run.distributed import lookup_peak_flops

    assert lookup_peak_flops(name, bf16=True) is None  # A10G is not an A10, V100 has no bf16


def test_train_peak_flops_overrides_the_lookup_and_gives_mfu(workdir, reg):
    from blagpt.run.distributed import device_peak_flops

    assert device_peak_flops(torch.device("cpu"), True) is None
    assert device_peak_flops(torch.device("cpu"), True, 1e12) == 1e12
    _train_here(reg, "train.steps=2", "train.peak_flops=1e12", "tracking.run_name=mfu", "tracking.enabled=false")
    run_dir = workdir / "runs" / "mfu"
    fpt = meta(run_dir)["params"]["flops_per_token"]
    by_step = {}
    for r in rows(run_dir):
        by_step.setdefault(r["step"], {})[r["key"]] = r["value"]
    last = by_step[2]
    assert last["train/mfu"] == pytest.approx(fpt * last["train/tokens_per_s"] / 1e12, rel=1e-9)
