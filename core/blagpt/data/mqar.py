"""Multi-query associative recall (MQAR), the core's built-in synthetic task.

Zoology (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models", arXiv 2312.04927) showed that the quality gap between attention and gated-convolution or
recurrent models is largely a gap in this one skill, and that a recurrent model's accuracy on it
tracks the size of its state. Each sequence starts with ``n_pairs`` key-value pairs
``k1 v1 k2 v2 ...`` (keys distinct, values drawn independently), followed by a region holding
``n_queries`` of the keys again, each in a two-token slot ``k ?`` at a random place of the region;
the answer, the token after a query key, is the value that key was paired with. Every other
position of the region is the filler token 0. Only the answers are trained and scored
(``mask``); since every query comes after all the pairs, its key is always seen before its
answer is asked for.

Keys are drawn from ``1 .. vocab_size // 2 - 1`` and values from ``vocab_size // 2 ..
vocab_size - 1`` (Zoology's split of the vocabulary). Unlike Zoology, whose query gaps follow a
power law, the query slots are spread uniformly over the region.

Generation is a pure function of ``(seed, split, seq_len)`` and the sizes (numpy's PCG64 seeded
by a ``SeedSequence``), so every model and every training seed sees the same test sequences;
``tune`` sequences come from another derived seed than ``test``, so hyperparameters chosen on them
were not chosen on the reported number.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from ..plugin.specs import Task, TaskConfig, TaskSequences

SPLITS = {"train": 0, "test": 1, "tune": 2}


class MQARConfig(TaskConfig):
    """The ``task`` section of an MQAR run."""

    name: str = Field(default="mqar", description="Registered task name.")
    n_pairs: int = Field(default=8, gt=0, description="Key-value pairs at the start of each sequence.")
    n_queries: int | None = Field(default=None, gt=0, description="Keys asked for again (distinct); unset: n_pairs. At most n_pairs.")
    vocab_size: int = Field(default=256, ge=4, description="Token ids 0..vocab_size-1: 0 is filler, keys below vocab_size // 2, values from it.")
    n_train: int = Field(default=10000, gt=0, description="Training sequences (generated once; epochs revisit them in a new order).")
    n_test: int = Field(default=500, gt=0, description="Test sequences (and as many tuning sequences, from another seed).")
    seed: int = Field(default=0, description="Seed of the task's data, separate from train.seed: every model and training seed is tested on the same sequences.")

    @model_validator(mode="after")
    def _fits(self) -> "MQARConfig":
        if self.n_queries is not None and self.n_queries > self.n_pairs:
            raise ValueError(f"n_queries ({self.n_queries}) must be at most n_pairs ({self.n_pairs}): queries ask for distinct keys")
        keys = self.vocab_size // 2 - 1
        if keys < self.n_pairs:
            raise ValueError(f"vocab_size {self.vocab_size} has {keys} key ids (1 .. vocab_size // 2 - 1), fewer than n_pairs = {self.n_pairs}; "
                             f"use vocab_size >= {2 * (self.n_pairs + 1)}")
        return self

    @property
    def queries(self) -> int:
        return self.n_pairs if self.n_queries is None else self.n_queries


class MQAR(Task):
    def __init__(self, cfg: MQARConfig) -> None:
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size

    def sequences(self, split: str, seq_len: int) -> TaskSequences:
        import torch

        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        c = self.cfg
        n = c.n_train if split == "train" else c.n_test
        tokens, mask = generate(n, seq_len, c.n_pairs, c.queries, c.vocab_size, c.seed, SPLITS[split])
        return TaskSequences(torch.from_numpy(tokens), torch.from_numpy(mask))


def generate(n: int, seq_len: int, n_pairs: int, n_queries: int, vocab_size: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MQAR sequences of ``seq_len + 1`` tokens (int64) and the (n, seq_len) answer mask."""
    length = seq_len + 1
    region = length - 2 * n_pairs
    slots = region // 2
    if slots < n_queries:
        raise ValueError(
            f"task.n_pairs: {n_pairs} pairs and {n_queries} queries take {2 * (n_pairs + n_queries)} tokens, more than "
            f"train.seq_len + 1 = {length}; use a longer train.seq_len or fewer pairs"
        )
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, seq_len])))
    half = vocab_size // 2
    keys = 1 + np.argsort(rng.random((n, half - 1)), axis=1)[:, :n_pairs]  # distinct per row
    values = rng.integers(half, vocab_size, size=(n, n_pairs))
    tokens = np.zeros((n, length), dtype=np.int64)
    tokens[:, 0 : 2 * n_pairs : 2] = keys
    tokens[:, 1 : 2 * n_pairs : 2] = values
    asked = np.argsort(rng.random((n, n_pairs)), axis=1)[:, :n_queries]  # which pairs, distinct
    where = np.sort(np.argsort(rng.random((n, slots)), axis=1)[:, :n_queries], axis=1)  # which slots, in order
    rows = np.arange(n)[:, None]
    key_pos = 2 * n_pairs + 2 * where
    tokens[rows, key_pos] = np.take_along_axis(keys, asked, axis=1)
    tokens[rows, key_pos + 1] = np.take_along_axis(values, asked, axis=1)
    mask = np.zeros((n, seq_len), dtype=bool)
    mask[rows, key_pos] = True  # the target after a query key (tokens[:, 1:][t] = tokens[:, t + 1]) is its value
    return tokens, mask
