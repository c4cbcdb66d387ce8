"""Tokenizers: the :class:`Tokenizer` face every tokenizer has, and the built-in ones.

A tokenizer is named by a reference: a registered name (``gpt2``, ``bytes``, or a plugin's), or a
family and its argument (``hf:PATH/tokenizer.json``, ``tiktoken:PATH.tiktoken``). Plugins register
theirs with the ``register_tokenizers`` hook (a :class:`~blagpt.TokenizerSpec`).

Every tokenizer knows how many UTF-8 bytes each token id stands for (``token_bytes``), which is
what bits per byte divides by: a token model and a byte model evaluated on the same text count the
same bytes. End-of-text (and any other special token) stands for zero bytes. ``data prepare``
checks, document by document, that the ids decode to the text and that their byte counts sum to
its UTF-8 length, so bits per byte stay exact whatever the tokenizer.

Built-ins:

- ``gpt2``: GPT-2's byte-level BPE through tiktoken, offline. The ranks file
  ``assets/gpt2.tiktoken`` is OpenAI's GPT-2 vocabulary (identical to tiktoken's ``r50k_base``)
  as shipped, MIT-licensed, in the openai-whisper package; its sha256 is pinned and checked.
- ``bytes``: UTF-8 bytes, ids 0..255, plus id 256 for end-of-text.
- ``tiktoken:PATH``: a local ``.tiktoken`` ranks file. A file named like one of tiktoken's own
  encodings (``cl100k_base.tiktoken``, ``o200k_base.tiktoken``, ...) takes that encoding's split
  pattern and special tokens from tiktoken itself (its sha256 is checked against tiktoken's);
  another file needs ``PATH.json`` beside it: ``{"pat_str": ..., "special_tokens": {...},
  "eot": "<|endoftext|>"}``.
- ``hf:PATH``: a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library
  (:mod:`.hf`, ``pip install 'blagpt[tokenizers]'``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from ..errors import DataError

GPT2_RANKS = "gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# r50k_base's split pattern (tiktoken_ext.openai_public.r50k_pat_str)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT_TEXT = "<|endoftext|>"


class Tokenizer:
    """What the core needs of a tokenizer. Subclasses set ``name``, ``vocab_size`` and ``eot``
    and implement ``encode``, ``decode_bytes``, ``token_bytes`` and ``digest``.

    Attributes:
        name: the reference it is known by (``gpt2``, ``hf:data/tok.json``): what a run records.
        vocab_size: number of ids (a model's embedding has at least this many rows).
        eot: the end-of-text id, put before every document.
    """

    name: str
    vocab_size: int
    eot: int

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, special tokens not recognised (text that looks like one is text)."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids) -> bytes:
        """The UTF-8 bytes ``ids`` stand for (special tokens: none)."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        """int64 array of length ``vocab_size``: UTF-8 bytes each token id stands for."""
        raise NotImplementedError

    @property
    def digest(self) -> str:
        """sha256 (hex) of what defines the vocabulary: equal digests, equal ids for equal text."""
        raise NotImplementedError


class BytesTokenizer(Tokenizer):
    name = "bytes"
    vocab_size = 257
    eot = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids) -> bytes:
        return bytes(int(i) for i in ids if int(i) < 256)

    @property
    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.int64)
        out[self.eot] = 0
        return out

    @property
    def digest(self) -> str:
        return hashlib.sha256(b"blagpt bytes tokenizer: utf-8 bytes 0-255, end-of-text 256").hexdigest()


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE run by tiktoken: mergeable ranks, a split pattern, special tokens."""

    def __init__(self, name: str, ranks: dict[bytes, int], pat_str: str, special_tokens: dict[str, int], eot_text: str,
                 digest: str, vocab_size: int | None = None) -> None:
        import tiktoken

        if eot_text not in special_tokens:
            raise DataError(f"{name}: the end-of-text token {eot_text!r} is not among its special tokens {sorted(special_tokens)}")
        self.name, self.eot, self._digest = name, special_tokens[eot_text], digest
        self.vocab_size = vocab_size or max([*ranks.values(), *special_tokens.values()]) + 1
        self._enc = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special_tokens,
                                      explicit_n_vocab=vocab_size)
        self._specials = set(special_tokens.values())
        self._lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in ranks.items():
            self._lengths[rank] = len(token)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes([int(i) for i in ids if int(i) not in self._specials])

    @property
    def token_bytes(self) -> np.ndarray:
        return self._lengths

    @property
    def digest(self) -> str:
        return self._digest


def read_ranks(data: bytes, where: str) -> dict[bytes, int]:
    """A ``.tiktoken`` file: one ``base64(token) rank`` per line."""
    ranks = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except ValueError as e:
        raise DataError(f"{where}: not a tiktoken ranks file (base64 token and rank per line): {e}") from None
    return ranks


@lru_cache(maxsize=None)
def gpt2() -> TiktokenTokenizer:
    data = files("blagpt").joinpath("assets", GPT2_RANKS).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_SHA256:
        raise DataError(f"blagpt/assets/{GPT2_RANKS}: sha256 {digest} does not match the pinned {GPT2_SHA256}")
    return TiktokenTokenizer("gpt2", read_ranks(data, GPT2_RANKS), GPT2_PATTERN, {EOT_TEXT: 50256}, EOT_TEXT, digest, 50257)


@lru_cache(maxsize=None)
def tiktoken_file(path: str | None) -> TiktokenTokenizer:
    """``tiktoken:PATH``: a local ranks file, with tiktoken's own pattern for its named encodings."""
    if not path:
        raise DataError("tiktoken: give the ranks file as tiktoken:PATH.tiktoken")
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"tiktoken:{path}: cannot read the ranks file ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    ranks = read_ranks(data, f"tiktoken:{path}")
    spec = _tiktoken_encoding(p.stem, ranks, digest, path) or _sidecar(p, path)
    eot = spec.get("eot", EOT_TEXT)
    return TiktokenTokenizer(f"tiktoken:{path}", ranks, spec["pat_str"], spec["special_tokens"], eot, digest, spec.get("explicit_n_vocab"))


def _tiktoken_encoding(stem: str, ranks: dict[bytes, int], digest: str, path: str) -> dict | None:
    """tiktoken's own definition of the encoding ``stem`` (pattern, special tokens), with its
    download replaced by the local ranks (whose sha256 must be the one tiktoken expects)."""
    try:
        import tiktoken_ext.openai_public as openai_public
    except ImportError:
        return None
    make = openai_public.ENCODING_CONSTRUCTORS.get(stem)
    if make is None:
        return None
    seen = {}

    def local(_url, expected_hash=None):
        seen["hash"] = expected_hash
        return ranks

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = local
    try:
        spec = make()
    finally:
        openai_public.load_tiktoken_bpe = original
    if seen.get("hash") and seen["hash"] != digest:
        raise DataError(f"tiktoken:{path}: sha256 {digest} is not that of tiktoken's {stem} ({seen['hash']})")
    return spec


def _sidecar(p: Path, path: str) -> dict:
    side = p.with_suffix(".json")
    try:
        spec = json.loads(side.read_text())
        return {"pat_str": spec["pat_str"], "special_tokens": {k: int(v) for k, v in spec["special_tokens"].items()},
                "eot": spec.get("eot", EOT_TEXT)}
    except FileNotFoundError:
        raise DataError(
            f"tiktoken:{path}: not one of tiktoken's named encodings; put its split pattern and special tokens in {side} "
            '({"pat_str": ..., "special_tokens": {"<|endoftext|>": ID}})'
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{side}: expected {{\"pat_str\": str, \"special_tokens\": {{token: id}}}} ({type(e).__name__}: {e})") from None


@lru_cache(maxsize=None)
def hf_file(path: str | None) -> Tokenizer:
    from .hf import HFTokenizer

    return HFTokenizer(path)


_BYTES = BytesTokenizer()
BUILTIN_LOADERS = {"gpt2": lambda arg: gpt2(), "bytes": lambda arg: _BYTES, "tiktoken": tiktoken_file, "hf": hf_file}


def split_ref(ref: str) -> tuple[str, str | None]:
    """``hf:path/tok.json`` -> ("hf", "path/tok.json"); ``gpt2`` -> ("gpt2", None)."""
    name, sep, arg = ref.partition(":")
    return name, (arg if sep else None)


def get_tokenizer(ref: str, registry=None) -> Tokenizer:
    """The tokenizer ``ref`` names: through ``registry`` if given, else a built-in (no plugin is
    loaded for those), else any installed plugin's."""
    if registry is not None:
        return registry.load_tokenizer(ref)
    name, arg = split_ref(ref)
    if name in BUILTIN_LOADERS:
        return BUILTIN_LOADERS[name](arg)
    from ..plugin.registry import get_registry

    return get_registry().load_tokenizer(ref)
