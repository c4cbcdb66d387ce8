"""``hf:PATH``: a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library (optional:
``pip install 'blagpt[tokenizers]'``), offline.

Bits per byte need the UTF-8 bytes each token id stands for. They are read off the token strings
the way the tokenizer's decoder would turn them into text: the byte-level alphabet of GPT-2-style
BPE (``ByteLevel``), SentencePiece's space marker (``Metaspace``, or a ``Replace`` of it),
byte-fallback tokens (``<0x0A>``). A decoder that changes text in context (a stripped leading
space, WordPiece's ``##`` joins) or a normalizer (lower-casing, NFKC) makes the ids not decode to
the text; ``data prepare`` checks every document and refuses such a tokenizer in one line, rather
than report a bits-per-byte figure that is off. Special tokens stand for no bytes, and text that
looks like one is encoded as text.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .tokenizers import Tokenizer

EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte: printable Latin-1 bytes stand for themselves,
    the other 68 bytes are moved to code points 256 and up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, moved = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + moved)] = b
            moved += 1
    return table


class HFTokenizer(Tokenizer):
    def __init__(self, path: str | None) -> None:
        if not path:
            raise DataError("hf: give the tokenizer file as hf:PATH/tokenizer.json")
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise DataError(f"hf:{path}: needs the tokenizers library: pip install 'blagpt[tokenizers]'") from None
        p = Path(path)
        try:
            data = p.read_bytes()
            self._tok = _HF.from_str(data.decode("utf-8"))
        except OSError as e:
            raise DataError(f"hf:{path}: cannot read the tokenizer file ({e.strerror or e})") from None
        except Exception as e:  # noqa: BLE001 - the library's own parse error
            raise DataError(f"hf:{path}: not a tokenizers file ({' '.join(str(e).split())[:200]})") from None
        self._tok.encode_special_tokens = True  # "<|endoftext|>" in text is text
        self.name, self._digest = f"hf:{path}", hashlib.sha256(data).hexdigest()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        specials = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        eot = next((specials[c] for c in EOT_CANDIDATES if c in specials), None)
        if eot is None:
            raise DataError(f"hf:{path}: no end-of-text special token (looked for {', '.join(EOT_CANDIDATES)}); add one to the tokenizer")
        self.eot = eot
        to_bytes = _token_reader(json.loads(self._tok.to_str()).get("decoder"))
        self._bytes = [b""] * self.vocab_size
        for token, i in vocab.items():
            self._bytes[i] = b"" if i in specials.values() else to_bytes(token)
        self._lengths = np.array([len(b) for b in self._bytes], dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self._bytes[int(i)] for i in ids)

    @property
    def token_bytes(self) -> np.ndarray:
        return self._lengths

    @property
    def digest(self) -> str:
        return self._digest


def _token_reader(decoder: dict | None):
    """token string -> the bytes it decodes to, by the decoder's context-free steps."""
    steps = decoder.get("decoders", []) if decoder and decoder.get("type") == "Sequence" else [decoder] if decoder else []
    byte_level = any(d.get("type") == "ByteLevel" for d in steps)
    fallback = any(d.get("type") == "ByteFallback" for d in steps)
    replace = [(d["replacement"], " ") for d in steps if d.get("type") == "Metaspace"]
    replace += [(d["pattern"].get("String", ""), d["content"]) for d in steps if d.get("type") == "Replace" and d["pattern"].get("String")]
    alphabet = byte_level_alphabet() if byte_level else {}

    def read(token: str) -> bytes:
        if fallback and (m := BYTE_FALLBACK.match(token)):
            return bytes([int(m.group(1), 16)])
        if byte_level and all(c in alphabet for c in token):
            return bytes(alphabet[c] for c in token)
        for old, new in replace:
            token = token.replace(old, new)
        return token.encode("utf-8")

    return read
