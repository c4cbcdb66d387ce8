"""The two tokenizers a model can train with.

``gpt2``: GPT-2's byte-level BPE through tiktoken, offline. The ranks file ``assets/gpt2.tiktoken``
is OpenAI's GPT-2 vocabulary (identical to tiktoken's ``r50k_base``) as shipped, MIT-licensed, in
the openai-whisper package; its sha256 is pinned below and checked on load.

``bytes``: UTF-8 bytes, ids 0..255, plus id 256 for end-of-text.

Each tokenizer knows how many UTF-8 bytes every token id stands for (``token_bytes``), which is
what bits per byte divides by: a token model and a byte model evaluated on the same text count the
same bytes. End-of-text stands for zero bytes.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib.resources import files

import numpy as np

from ..errors import DataError

GPT2_RANKS = "gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# r50k_base's split pattern (tiktoken_ext.openai_public.r50k_pat_str)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT_TEXT = "<|endoftext|>"


class Tokenizer:
    """Common face: ``encode``, ``decode``, ``vocab_size``, ``eot`` and ``token_bytes``."""

    name: str
    vocab_size: int
    eot: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def decode_bytes(self, ids) -> bytes:
        """The UTF-8 bytes ``ids`` stand for (end-of-text: none)."""
        raise NotImplementedError

    @property
    def token_bytes(self) -> np.ndarray:
        """int64 array of length ``vocab_size``: UTF-8 bytes each token id stands for."""
        raise NotImplementedError


class BytesTokenizer(Tokenizer):
    name = "bytes"
    vocab_size = 257
    eot = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        return bytes(int(i) for i in ids if int(i) < 256)

    @property
    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.int64)
        out[self.eot] = 0
        return out


class GPT2Tokenizer(Tokenizer):
    name = "gpt2"
    vocab_size = 50257
    eot = 50256

    def __init__(self) -> None:
        import tiktoken

        data = files("blagpt").joinpath("assets", GPT2_RANKS).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != GPT2_SHA256:
            raise DataError(f"blagpt/assets/{GPT2_RANKS}: sha256 {digest} does not match the pinned {GPT2_SHA256}")
        ranks = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT_TEXT: self.eot},
            explicit_n_vocab=self.vocab_size,
        )
        self._lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in ranks.items():
            self._lengths[rank] = len(token)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids if int(i) != self.eot])

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes([int(i) for i in ids if int(i) != self.eot])

    @property
    def token_bytes(self) -> np.ndarray:
        return self._lengths


@lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "bytes":
        return BytesTokenizer()
    raise DataError(f"unknown tokenizer {name!r}; expected 'gpt2' or 'bytes'")
