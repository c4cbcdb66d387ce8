"""Memory-mapped loaders: training sequences in a seeded order, a fixed validation slice.

The training stream (all shards of the split, concatenated) is cut into sequences of
``seq_len + 1`` tokens with stride ``seq_len``. Each epoch visits them in a permutation seeded by
``(seed, epoch)``. One optimizer step consumes ``global_batch`` consecutive entries of that order:
rank ``r`` reads, for micro-step ``m``, entries ``position + (m * world + r) * micro + [0, micro)``,
so ranks read disjoint sequences and the whole state of every rank is the single ``position``
(sequences consumed), which checkpoints store.
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from .shards import read_shard


class TokenStream:
    """Shards of one split, read as one memory-mapped sequence of tokens."""

    def __init__(self, pattern: str, what: str) -> None:
        paths = sorted(globlib.glob(pattern))
        if not paths:
            raise DataError(f"{pattern}: no {what} shards match this pattern")
        self.paths = paths
        self.arrays = [read_shard(p) for p in paths]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])
        self.pattern = pattern

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the concatenated stream (may span shards)."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while filled < length:
            a = self.arrays[i]
            lo = start + filled - int(self.starts[i])
            take = min(length - filled, len(a) - lo)
            out[filled : filled + take] = a[lo : lo + take]
            filled += take
            i += 1
        return out


@dataclass
class Layout:
    """How one optimizer step's sequences are spread over ranks and micro-steps."""

    micro_batch: int
    world: int
    rank: int
    accum: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.world * self.accum


class TrainLoader:
    def __init__(self, stream: TokenStream, seq_len: int, layout: Layout, seed: int, position: int = 0) -> None:
        self.stream, self.seq_len, self.layout, self.seed = stream, seq_len, layout, seed
        self.n_seqs = (len(stream) - 1) // seq_len
        if self.n_seqs < layout.global_batch:
            raise DataError(
                f"{stream.pattern}: {len(stream)} tokens make {self.n_seqs} sequences of {seq_len + 1}, "
                f"fewer than one global batch ({layout.global_batch}); use less data per step or more data"
            )
        self.position = position
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n_seqs, generator=g), epoch
        return self._perm

    def micro_batch(self, micro_step: int) -> torch.Tensor:
        """(micro_batch, seq_len + 1) int64 tokens of this rank for ``micro_step`` of the current step."""
        L = self.layout
        first = self.position + (micro_step * L.world + L.rank) * L.micro_batch
        rows = []
        for k in range(first, first + L.micro_batch):
            idx = int(self._order(k // self.n_seqs)[k % self.n_seqs])
            rows.append(self.stream.read(idx * self.seq_len, self.seq_len + 1))
        return torch.from_numpy(np.stack(rows))

    def advance(self) -> None:
        """Move past the current step's global batch."""
        self.position += self.layout.global_batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "n_seqs": self.n_seqs, "global_batch": self.layout.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_seqs"] != self.n_seqs:
            raise DataError(
                f"{self.stream.pattern}: the checkpoint was made on data of {state['n_seqs']} sequences, "
                f"this data has {self.n_seqs}; resume on the same data"
            )
        self.position = int(state["position"])


def val_sequences(stream: TokenStream, seq_len: int, max_tokens: int, rank: int, world: int, token_bytes: np.ndarray | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """This rank's share of the fixed validation slice: (n, seq_len + 1) int64.

    The slice is the start of the validation stream: ``max_tokens`` tokens, or, with
    ``max_bytes``, as many tokens as stand for that many UTF-8 bytes (so models with different
    tokenizers are evaluated on the same text). Sequences are dealt to ranks round-robin.
    """
    total = len(stream)
    if max_bytes is not None:
        if token_bytes is None:
            raise ValueError("max_bytes needs token_bytes")
        whole = stream.read(0, total)
        max_tokens = int(np.searchsorted(np.cumsum(token_bytes[whole]), max_bytes, side="right"))
    n = min(max_tokens, total - 1) // seq_len
    if n == 0:
        raise DataError(f"{stream.pattern}: validation split has {total} tokens, fewer than one sequence of {seq_len + 1}")
    mine = list(range(rank, n, world))
    if not mine:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return torch.from_numpy(np.stack([stream.read(i * seq_len, seq_len + 1) for i in mine]))
