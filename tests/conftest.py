"""Shared helpers for the core's tests: run the real CLI in a subprocess, fabricate plugins.

Fabricated plugins are real distributions (a ``*.dist-info`` folder with ``entry_points.txt``)
on a temporary ``PYTHONPATH`` entry, found by importlib.metadata exactly like pip-installed ones;
nothing patches the registry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

# Small, fast defaults for training runs in tests: the tiny test model on bytes.
TINY = [
    "model.name=tinylm",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "data.tokenizer=bytes",
    "train.seq_len=32",
    "train.micro_batch_size=4",
    "train.eval_tokens=2048",
    "train.log_interval=2",
]

# The same settings as flags of `blagpt bench` / `blagpt ablate` (tinylm's default size).
BENCH_BASE = [
    "--set", "data.tokenizer=bytes", "--set", "train.seq_len=32", "--set", "train.micro_batch_size=4",
    "--set", "train.eval_bytes=2048", "--set", "train.eval_interval=3", "--set", "train.log_interval=1",
    "--set", "optimizer.lr=3e-3",
]


def run_cli(args, cwd=None, env=None, timeout=300, check=None, plugins=("tinylm",)):
    """Run ``python -m blagpt ARGS``; returns CompletedProcess with text output.

    ``plugins`` limits discovery (BLAGPT_LOAD_PLUGINS) so the core's tests do not import every
    installed architecture; ``None`` loads all.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "BLAGPT_STRICT_PLUGINS": "0"}
    if plugins is not None:
        full_env["BLAGPT_LOAD_PLUGINS"] = ",".join(plugins)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "blagpt", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check is not None and proc.returncode != check:
        raise AssertionError(f"exit {proc.returncode} (wanted {check}) for {args}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc


def fake_plugin(site: Path, dist: str, module: str, source: str, ep_name: str | None = None, version: str = "0.1") -> None:
    """Write a one-module distribution ``dist`` exposing ``module`` under the entry-point group."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[blagpt]\n{ep_name or module} = {module}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def hanging_server():
    """A server on 127.0.0.1 that accepts connections and never answers; yields (URI, the
    connections it accepted)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list = []
    stop = threading.Event()

    def accept_and_ignore():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept_and_ignore, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", held
    finally:
        stop.set()
        sock.close()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A clean working directory (MLflow's default store and runs/ land here)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train_bpe(path: Path, vocab_size: int = 600, n_docs: int = 4) -> Path:
    """A GPT-2-style byte-level BPE trained here, with the tokenizers library's own trainer, on
    the start of the embedded corpus; saved as a tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from blagpt.data.prepare import embedded_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(embedded_documents()[:n_docs], trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def hf_bpe(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json")
