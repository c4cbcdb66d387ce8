"""Tokenizers as plugins: the built-ins, a plugin's (widebytes, ids above 65,535), Hugging Face
tokenizer.json files (a BPE trained here with the tokenizers library's own trainer, and a
SentencePiece-style one with byte fallback), tiktoken files; the conformance kit on each, and
bits per byte exact on the validation split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from blagpt.config import merge_sources, resolve
from blagpt.data.prepare import embedded_documents, prepare, split_text
from blagpt.data.shards import read_shard
from blagpt.data.tokenizers import get_tokenizer
from blagpt.errors import ConfigError, DataError
from blagpt.plugin.registry import Registry
from blagpt.testing import TOKENIZER_CHECKS, TokenizerTarget, parametrize_with_checks


@parametrize_with_checks([TokenizerTarget("gpt2"), TokenizerTarget("bytes"), TokenizerTarget("widebytes")])
def test_builtin_and_plugin_tokenizers_pass_the_kit(target, check):
    check(target)


def kit(ref):
    for name, check in TOKENIZER_CHECKS.items():
        check(TokenizerTarget(ref))


def shard_tokens(folder, names):
    return np.concatenate([read_shard(folder / n) for n in names]).astype(np.int64)


def test_a_bpe_trained_with_the_tokenizers_library_passes_the_kit_and_counts_the_validation_bytes_exactly(hf_bpe, tmp_path):
    ref = f"hf:{hf_bpe}"
    kit(ref)
    tok = get_tokenizer(ref)
    assert tok.vocab_size == 600 and tok.eot == 0  # the special token was trained first
    docs = embedded_documents()[:6]
    m = prepare(docs, ref, tmp_path / "d")
    _, val = split_text(docs, 0.05)
    want = sum(len(t.encode("utf-8")) for t in val)
    got = m["splits"]["val"]
    assert got["bytes"] == want
    tokens = shard_tokens(tmp_path / "d", got["shards"])
    assert int(tok.token_bytes[tokens].sum()) == want  # what bits per byte divide by, summed over the split's tokens
    assert tok.decode_bytes(tokens) == "".join(val).encode("utf-8")


def sentencepiece_style(path, prepend):
    """A SentencePiece-like BPE: ▁ for spaces, no merges, byte-fallback tokens <0x00>..<0xFF>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()\n\t") | {"▁"})
    vocab = {"<|endoftext|>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab.update({c: 257 + i for i, c in enumerate(chars)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.save(str(path))
    return f"hf:{path}"


def test_byte_fallback_and_space_markers_are_exact_and_a_prepended_space_is_refused(tmp_path):
    ref = sentencepiece_style(tmp_path / "sp.json", "never")
    kit(ref)  # emoji and scripts outside the vocabulary go through <0xNN> tokens, one byte each
    tok = get_tokenizer(ref)
    ids = tok.encode("é")
    assert [tok.token_bytes[i] for i in ids] == [1, 1] and tok.decode_bytes(ids) == "é".encode()
    bad = sentencepiece_style(tmp_path / "sp-prepend.json", "always")  # decodes "a b" to " a b"
    with pytest.raises(DataError, match=r"document 1 does not round-trip: its ids decode to \d+ bytes, the text has \d+.*bits per byte would not be exact"):
        prepare(["a b c\n" * 50, "d e f\n" * 50], bad, tmp_path / "out")


def test_tiktoken_files_take_tiktokens_own_pattern_or_a_sidecar(tmp_path):
    from importlib.resources import files

    ranks = files("blagpt").joinpath("assets", "gpt2.tiktoken").read_bytes()
    (tmp_path / "r50k_base.tiktoken").write_bytes(ranks)  # the same bytes as tiktoken's r50k_base
    named, gpt2 = get_tokenizer(f"tiktoken:{tmp_path}/r50k_base.tiktoken"), get_tokenizer("gpt2")
    text = "Hello world! Ünïcödé 😀\n\n  indented"
    assert named.encode(text) == gpt2.encode(text) and named.eot == 50256 and named.vocab_size == 50257
    assert (named.token_bytes == gpt2.token_bytes).all() and named.digest == gpt2.digest
    kit(f"tiktoken:{tmp_path}/r50k_base.tiktoken")
    (tmp_path / "mine.tiktoken").write_bytes(ranks)
    with pytest.raises(DataError, match=r"tiktoken:.*mine.tiktoken: not one of tiktoken's named encodings; put its split pattern and special tokens in .*mine.json"):
        get_tokenizer(f"tiktoken:{tmp_path}/mine.tiktoken")
    from blagpt.data.tokenizers import GPT2_PATTERN

    (tmp_path / "mine.json").write_text(json.dumps({"pat_str": GPT2_PATTERN, "special_tokens": {"<|endoftext|>": 50256}}))
    assert get_tokenizer(f"tiktoken:{tmp_path}/mine.tiktoken").encode(text) == gpt2.encode(text)
    (tmp_path / "p50k_base.tiktoken").write_bytes(ranks)  # not p50k's file
    with pytest.raises(DataError, match=r"p50k_base.tiktoken: sha256 .* is not that of tiktoken's p50k_base"):
        get_tokenizer(f"tiktoken:{tmp_path}/p50k_base.tiktoken")


def test_data_tokenizer_names_any_registered_tokenizer_and_models_say_which_they_accept(hf_bpe):
    from blagpt.testing.probe import add_probe

    reg = Registry.load(only=["tinylm"], strict=True)
    add_probe(reg)

    def cfg(model, tok):
        return resolve(merge_sources(sets=[f"model.name={model}", f"data.tokenizer={tok}"]), reg)

    assert cfg("tinylm", f"hf:{hf_bpe}").data.tokenizer == f"hf:{hf_bpe}"  # tinylm lists "any"
    assert cfg("tinylm", "widebytes").tokenizer_name(reg) == "widebytes"
    cases = [
        (("blagpt-testing-probe", "gpt2"), "data.tokenizer: model 'blagpt-testing-probe' supports bytes, got 'gpt2'"),
        (("tinylm", "nope"), "data.tokenizer: unknown tokenizer 'nope'; known tokenizers: bytes, gpt2, hf:PATH, tiktoken:PATH, widebytes"),
        (("tinylm", "hf"), "data.tokenizer: tokenizer 'hf' takes an argument: hf:PATH (PATH to a tokenizer.json)"),
        (("tinylm", "gpt2:x"), "data.tokenizer: tokenizer 'gpt2' takes no argument, got 'gpt2:x'"),
    ]
    for (model, tok), msg in cases:
        with pytest.raises(ConfigError) as e:
            cfg(model, tok)
        assert str(e.value) == msg


def test_an_hf_file_that_is_missing_or_has_no_end_of_text_is_one_line(tmp_path, hf_bpe):
    with pytest.raises(DataError, match=r"hf:.*nope.json: cannot read the tokenizer file \(No such file or directory\)"):
        get_tokenizer(f"hf:{tmp_path}/nope.json")
    spec = json.loads(hf_bpe.read_text())
    spec["added_tokens"] = []
    (tmp_path / "noeot.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"no end-of-text special token \(looked for <\|endoftext\|>"):
        get_tokenizer(f"hf:{tmp_path}/noeot.json")
    shutil.copy(hf_bpe, tmp_path / "copy.json")
    assert get_tokenizer(f"hf:{tmp_path}/copy.json").digest == get_tokenizer(f"hf:{hf_bpe}").digest
