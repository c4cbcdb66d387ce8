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
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from .shards import read_shard


class TokenStream:
    """Shards of one split, read as one memory-mapped sequence of tokens.

    ``field``: the config field the pattern came from (``data.train``), named in errors.
    """

    def __init__(self, pattern: str, what: str, field: str | None = None) -> None:
        where = f"{field}: " if field else ""
        if os.path.isdir(pattern):
            raise DataError(f"{where}{pattern} is a folder; expected a glob of shard files such as {os.path.join(pattern, '*.bin')!r}")
        paths = sorted(p for p in globlib.glob(pattern) if not os.path.isdir(p))
        if not paths:
            raise DataError(f"{where}{pattern}: no {what} shards match this pattern")
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


def check_token_ids(stream: TokenStream, tokenizer, field: str, sample_tokens: int = 1 << 20) -> None:
    """Refuse shards that another tokenizer made, before training on them: ids beyond the
    tokenizer's vocabulary, or (for a large vocabulary) ids that all stay within the byte range,
    as shards of the ``bytes`` tokenizer do. Checked on the first ``sample_tokens`` of the split."""
    sample = stream.read(0, min(len(stream), sample_tokens))
    top = int(sample.max()) if len(sample) else 0
    if top >= tokenizer.vocab_size:
        raise DataError(
            f"{field}: {stream.pattern}: token id {top} is outside the {tokenizer.name} tokenizer's vocabulary of "
            f"{tokenizer.vocab_size}; were these shards made with another tokenizer?"
        )
    bytes_vocab = 257
    if tokenizer.vocab_size > bytes_vocab and len(sample) >= 4096 and top < bytes_vocab:
        raise DataError(
            f"{field}: {stream.pattern}: all of the first {len(sample):,} token ids are below {bytes_vocab}, as in shards of "
            f"the bytes tokenizer, not {tokenizer.name}; prepare the data with --tokenizer {tokenizer.name} or train with data.tokenizer=bytes"
        )


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
        self.what = stream.pattern  # the data, named in errors
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

    def indices(self, micro_step: int) -> list[int]:
        """The sequences this rank reads for ``micro_step`` of the current step."""
        L = self.layout
        first = self.position + (micro_step * L.world + L.rank) * L.micro_batch
        return [int(self._order(k // self.n_seqs)[k % self.n_seqs]) for k in range(first, first + L.micro_batch)]

    def micro_batch(self, micro_step: int) -> torch.Tensor:
        """(micro_batch, seq_len + 1) int64 tokens of this rank for ``micro_step`` of the current step."""
        rows = [self.stream.read(idx * self.seq_len, self.seq_len + 1) for idx in self.indices(micro_step)]
        return torch.from_numpy(np.stack(rows))

    def advance(self) -> None:
        """Move past the current step's global batch."""
        self.position += self.layout.global_batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "n_seqs": self.n_seqs, "global_batch": self.layout.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_seqs"] != self.n_seqs:
            raise DataError(
                f"{self.what}: the checkpoint was made on data of {state['n_seqs']} sequences, "
                f"this data has {self.n_seqs}; resume on the same data"
            )
        self.position = int(state["position"])


def check_task_sequences(seqs, seq_len: int, vocab_size: int, where: str) -> None:
    """Refuse a task split that is not what :class:`blagpt.TaskSequences` promises (shapes,
    dtypes, ids within the vocabulary, an answer in every row), naming the task and split."""
    tokens, mask = seqs.tokens, seqs.mask
    n = tokens.shape[0] if getattr(tokens, "ndim", 0) == 2 else -1
    if not (isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64 and tokens.ndim == 2 and tokens.shape[1] == seq_len + 1):
        raise DataError(f"{where}: tokens must be an int64 tensor (N, train.seq_len + 1 = {seq_len + 1}), got "
                        f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
    if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (n, seq_len)):
        raise DataError(f"{where}: mask must be a bool tensor ({n}, {seq_len}), got {getattr(mask, 'dtype', type(mask).__name__)} "
                        f"{tuple(getattr(mask, 'shape', ()))}")
    if n == 0 or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise DataError(f"{where}: token ids must lie in 0..{vocab_size - 1} (the task's vocab_size) and N >= 1")
    if not bool(mask.any(dim=1).all()):
        raise DataError(f"{where}: a sequence has no answer position (its mask row is all False)")


class TaskLoader(TrainLoader):
    """The training loader over a generated task's sequences held in memory (``tokens`` (N, T+1),
    ``mask`` (N, T)): the same seeded per-epoch order and one-integer state as :class:`TrainLoader`,
    with each sequence a row instead of a stride of the stream."""

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor, layout: Layout, seed: int, what: str, position: int = 0) -> None:
        self.tokens, self.mask, self.layout, self.seed = tokens, mask, layout, seed
        self.seq_len, self.n_seqs = tokens.shape[1] - 1, tokens.shape[0]
        self.what = what
        if self.n_seqs < layout.global_batch:
            raise DataError(f"{what}: {self.n_seqs} training sequences, fewer than one global batch ({layout.global_batch}); "
                            "generate more (the task's n_train) or use fewer sequences per step")
        self.position = position
        self._epoch, self._perm = -1, None

    def micro_batch(self, micro_step: int) -> torch.Tensor:
        return self.tokens[self.indices(micro_step)]

    def micro_mask(self, micro_step: int) -> torch.Tensor:
        """(micro_batch, seq_len) bool: the answer targets of :meth:`micro_batch`'s rows."""
        return self.mask[self.indices(micro_step)]


@dataclass
class ValSlice:
    """One rank's share of the validation slice: ``rows`` (n, seq_len + 1) int64 and, per row,
    how many of its ``seq_len`` targets are real (all but possibly the last row, which is padded at
    the end; padding after every real position cannot change a causal model's real outputs)."""

    rows: torch.Tensor
    valid: torch.Tensor


def val_slice(stream: TokenStream, seq_len: int, rank: int, world: int, tokenizer, max_tokens: int | None = None,
              max_bytes: int | None = None, which: str = "val") -> ValSlice:
    """The fixed validation slice (``which="val"``): the start of the validation stream, every
    token of it predicted; or the tuning slice (``which="tune"``): as much text at the end of the
    stream, which must not overlap the validation slice.

    ``max_tokens``: that many predicted tokens. ``max_bytes``: the slice ends at the last line
    start at or before that many bytes of text where a non-space character follows a newline (the
    tuning slice begins at the first such line start within that many bytes of the end). BPE
    (GPT-2's pre-tokenizer splits there) and bytes both have a token boundary at such a point, so
    every tokenizer evaluates exactly the same text and counts the same bytes. Sequences of
    ``seq_len + 1`` tokens (stride ``seq_len``) are dealt to ranks round-robin.
    """
    total = len(stream)
    n = _head_length(stream, tokenizer, max_tokens, max_bytes)
    if n < 2:
        raise DataError(f"{stream.pattern}: the validation slice holds {n} token(s); at least 2 are needed")
    start = 0
    if which == "tune":
        if max_bytes is not None:
            k = min(total, max_bytes + 1024)
            start = total - k + _tail_cut(stream.read(total - k, k), tokenizer, max_bytes)
        else:
            start = max(0, total - (int(max_tokens) + 1))
        if start < n:  # the tuning slice's first token is context only: it may be the validation slice's last
            raise DataError(
                f"{stream.pattern}: the validation split ({total:,} tokens) is too short for a tuning slice beside the "
                f"validation slice ({n:,} tokens) without overlap; use a smaller train.eval_bytes / eval_tokens or more validation text"
            )
        n = total - start
        if n < 2:
            raise DataError(f"{stream.pattern}: the tuning slice holds {n} token(s); at least 2 are needed")
    elif which != "val":
        raise ValueError(f"which: expected 'val' or 'tune', got {which!r}")
    tokens = stream.read(start, n)
    starts = list(range(0, n - 1, seq_len))
    rows = np.full((len(starts), seq_len + 1), tokenizer.eot, dtype=np.int64)
    valid = np.zeros(len(starts), dtype=np.int64)
    for i, s0 in enumerate(starts):
        piece = tokens[s0 : s0 + seq_len + 1]
        rows[i, : len(piece)] = piece
        valid[i] = len(piece) - 1
    mine = slice(rank, None, world)
    return ValSlice(torch.from_numpy(rows[mine].copy()), torch.from_numpy(valid[mine].copy()))


def _head_length(stream: TokenStream, tokenizer, max_tokens: int | None, max_bytes: int | None) -> int:
    """How many tokens the validation slice (the start of the stream) holds."""
    if max_bytes is not None:
        return _byte_cut(stream.read(0, min(len(stream), max_bytes + 1024)), tokenizer, max_bytes)
    return min(len(stream), int(max_tokens) + 1)


def _tail_cut(tokens: np.ndarray, tokenizer, max_bytes: int) -> int:
    """Index of the first token of ``tokens`` that starts a line (a non-space byte after a newline)
    with at most ``max_bytes`` bytes of text from it to the end."""
    text = tokenizer.decode_bytes(tokens)
    starts = np.concatenate([[0], np.cumsum(tokenizer.token_bytes[tokens])])  # byte offset before each token
    end, fallback = int(starts[-1]), None
    for j in range(len(tokens)):
        off = int(starts[j])
        if end - off > max_bytes:
            continue
        if fallback is None:
            fallback = j
        if 0 < off < len(text) and text[off - 1] == 0x0A and not chr(text[off]).isspace():
            return j
    return fallback if fallback is not None else len(tokens)


def _byte_cut(tokens: np.ndarray, tokenizer, max_bytes: int) -> int:
    """How many leading tokens end at the last shared line-start boundary within ``max_bytes``."""
    text = tokenizer.decode_bytes(tokens)
    ends = np.cumsum(tokenizer.token_bytes[tokens])  # byte offset after each token
    fallback = None
    for j in range(len(tokens) - 1, -1, -1):
        off = int(ends[j])
        if off > max_bytes:
            continue
        if fallback is None:
            fallback = j + 1
        if 0 < off < len(text) and text[off - 1] == 0x0A and not chr(text[off]).isspace():
            return j + 1
    return fallback or 0
