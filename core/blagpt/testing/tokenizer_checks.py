"""Checks of a tokenizer (:class:`TokenizerTarget`): what bits per byte and ``data prepare`` need.

A tokenizer must turn text into ids that decode back to exactly the text's UTF-8 bytes, with byte
counts per id (``token_bytes``) that sum to the text's length: that sum is the denominator of bits
per byte. The sample text mixes scripts, emoji (4-byte UTF-8, a ZWJ sequence), combining marks,
whitespace runs, digits, and the literal text of common special tokens (which must be encoded as
text, never as the end-of-text id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from ..errors import BlagptError

SAMPLES = (
    "The quick brown fox, 1234567890 times.\n\n\tIndented\ttabs   and  spaces  ",
    "Ünïcödé: naïve café; Ελληνικά; русский; עברית; العربية; हिन्दी; 日本語のテキスト; 한국어; 中文字符",
    "Emoji: 😀 👩‍👩‍👧‍👦 🇫🇷 ✨ and combining e\u0301 a\u0308; zero\u200bwidth",
    "<|endoftext|> </s> <s> [CLS] <eos> are text here, not special tokens.",
    "",
    "x",
)


@dataclass(frozen=True, eq=False)
class TokenizerTarget:
    """A tokenizer under test, by its reference (``"mytok"``, ``"hf:path/tokenizer.json"``).

    Attributes:
        name: the tokenizer reference.
        expected_failures: check name -> reason; those checks are marked ``xfail(strict=True)``.
        id: the pytest id; default the reference.
    """

    kind: ClassVar[str] = "tokenizer"

    name: str
    expected_failures: Mapping[str, str] | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        from . import checks_for
        from .targets import validate_expected_failures

        if not isinstance(self.name, str) or not self.name:
            raise BlagptError(f"TokenizerTarget.name: expected a tokenizer reference, got {self.name!r}")
        failures = validate_expected_failures(self.expected_failures, checks_for(self.kind), "TokenizerTarget.expected_failures")
        object.__setattr__(self, "expected_failures", failures)

    @property
    def target_id(self) -> str:
        return self.id or self.name

    def load(self):
        from .targets import load_registry

        return load_registry().load_tokenizer(self.name)


def check_tokenizer_loads(target: TokenizerTarget) -> None:
    """The reference resolves through the registry to an object with the Tokenizer face, whose
    ``vocab_size``, ``eot``, ``token_bytes`` and ``digest`` agree with each other."""
    tok = target.load()
    assert isinstance(tok.vocab_size, int) and tok.vocab_size > 0, f"vocab_size {tok.vocab_size!r} is not a positive int"
    assert isinstance(tok.eot, int) and 0 <= tok.eot < tok.vocab_size, f"eot {tok.eot!r} is not an id below vocab_size {tok.vocab_size}"
    tb = np.asarray(tok.token_bytes)
    assert tb.shape == (tok.vocab_size,), f"token_bytes has shape {tb.shape}, expected ({tok.vocab_size},)"
    assert tb.min() >= 0, "token_bytes has negative counts"
    assert tb[tok.eot] == 0, f"the end-of-text id stands for {tb[tok.eot]} bytes, expected 0"
    assert isinstance(tok.digest, str) and len(tok.digest) >= 16, f"digest {tok.digest!r} is not a hex string"
    assert target.load().digest == tok.digest, "loading the tokenizer twice gives another digest"


def check_round_trip(target: TokenizerTarget) -> None:
    """Every sample encodes to ids below vocab_size, none of them end-of-text, that decode to
    exactly its UTF-8 bytes; ``encode_batch`` gives what ``encode`` gives."""
    tok = target.load()
    batch = tok.encode_batch(list(SAMPLES))
    for text, from_batch in zip(SAMPLES, batch):
        ids = tok.encode(text)
        assert list(from_batch) == list(ids), f"encode_batch differs from encode on {text[:40]!r}"
        assert all(0 <= i < tok.vocab_size for i in ids), f"ids outside 0..{tok.vocab_size - 1} for {text[:40]!r}"
        assert tok.eot not in ids, f"the end-of-text id appears in the ids of {text[:40]!r} (special-token text must be text)"
        back = tok.decode_bytes(ids)
        assert back == text.encode("utf-8"), f"{text[:40]!r} decodes back to {back[:60]!r}"


def check_byte_counts(target: TokenizerTarget) -> None:
    """The byte counts of a sample's ids sum to its UTF-8 length (the bits-per-byte denominator),
    token by token as decoding adds them."""
    tok = target.load()
    tb = np.asarray(tok.token_bytes)
    for text in SAMPLES:
        ids = tok.encode(text)
        total = int(tb[ids].sum()) if ids else 0
        assert total == len(text.encode("utf-8")), f"token bytes sum to {total} for {text[:40]!r}, which has {len(text.encode())} bytes"
        for i in set(ids[:50]):
            assert tb[i] == len(tok.decode_bytes([i])), f"token {i}: token_bytes says {tb[i]}, it decodes to {len(tok.decode_bytes([i]))} bytes"


def check_prepare_is_exact(target: TokenizerTarget) -> None:
    """``data prepare`` of a few documents with this tokenizer: the manifest's byte counts equal the
    text's, both splits, and the shards hold the end-of-text id before every document."""
    import tempfile
    from pathlib import Path

    from ..data.prepare import prepare, split_text
    from ..data.shards import read_shard
    from .targets import load_registry

    docs = [s for s in SAMPLES if s.strip()] * 3
    with tempfile.TemporaryDirectory() as folder:
        m = prepare(docs, target.name, folder, val_fraction=0.3, registry=load_registry())
        train, val = split_text(docs, 0.3)
        for split, texts in (("train", train), ("val", val)):
            got = m["splits"][split]
            want = sum(len(t.encode("utf-8")) for t in texts)
            assert got["bytes"] == want, f"{split}: the manifest counts {got['bytes']} bytes, the text has {want}"
            tokens = np.concatenate([read_shard(Path(folder) / s) for s in got["shards"]]).astype(np.int64)
            tok = target.load()
            assert int((tokens == tok.eot).sum()) == len(texts), f"{split}: {int((tokens == tok.eot).sum())} end-of-text ids for {len(texts)} documents"
            assert int(np.asarray(tok.token_bytes)[tokens].sum()) == want, f"{split}: the shards' token bytes do not sum to the text's"
