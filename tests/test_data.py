"""Tokenizers, shards, prepare and the loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blagpt.data.loader import Layout, TokenStream, TrainLoader, val_slice
from blagpt.data.prepare import embedded_documents, prepare, split_text
from blagpt.data.shards import HEADER_BYTES, read_shard, write_shard
from blagpt.data.tokenizers import get_tokenizer
from blagpt.errors import DataError

from conftest import run_cli


def test_gpt2_tokenizer_offline_matches_gpt2_ids():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    text = "To be, or not to be — ’tis a café.\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert tok.token_bytes[tok.eot] == 0 and tok.vocab_size == 50257


def test_bytes_tokenizer():
    tok = get_tokenizer("bytes")
    ids = tok.encode("é!")
    assert ids == [0xC3, 0xA9, 0x21] and tok.decode(ids + [tok.eot]) == "é!"
    assert tok.token_bytes.sum() == 256


def test_shard_round_trip(tmp_path):
    toks = np.arange(1000, dtype=np.uint16) * 7
    write_shard(tmp_path / "a.bin", toks)
    assert (read_shard(tmp_path / "a.bin") == toks).all()
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=3)
    assert header.tolist() == [20240520, 1, 1000]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:HEADER_BYTES + 10], "truncated: header says 100 tokens"),
        (lambda b: b[:100], "truncated shard: 100 bytes"),
        (lambda b: b + b"\0\0", "has trailing bytes"),
        (lambda b: (1234).to_bytes(4, "little") + b[4:], "not a token shard: magic 1234"),
        (lambda b: b[:4] + (3).to_bytes(4, "little") + b[8:], "unsupported shard version 3"),
    ],
)
def test_bad_shards_are_named(tmp_path, damage, message):
    p = tmp_path / "train_000000.bin"
    write_shard(p, np.arange(100))
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError) as e:
        read_shard(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_truncated_shard_in_a_run_is_a_one_line_error(tmp_path):
    write_shard(tmp_path / "train_000000.bin", np.arange(5000) % 256)
    write_shard(tmp_path / "val_000000.bin", np.arange(5000) % 256)
    p = tmp_path / "val_000000.bin"
    p.write_bytes(p.read_bytes()[:-7])
    proc = run_cli(
        ["train", "--model", "tinylm", "--no-track", "--set", "data.tokenizer=bytes",
         "--set", f"data.train={tmp_path}/train_*.bin", "--set", f"data.val={tmp_path}/val_*.bin"],
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and str(p) in proc.stderr and "truncated" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_tokens_of_another_tokenizer_are_refused(tmp_path):
    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}_000000.bin", np.full(5000, 5000))
    proc = run_cli(
        ["train", "--model", "tinylm", "--no-track", "--set", "data.tokenizer=bytes",
         "--set", f"data.train={tmp_path}/train_*.bin", "--set", f"data.val={tmp_path}/val_*.bin"],
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "outside the bytes tokenizer's vocabulary of 257" in proc.stderr


def test_split_is_by_text_so_both_tokenizers_see_the_same_validation_bytes(tmp_path):
    docs = embedded_documents()[:3]
    counts = {}
    for name in ("gpt2", "bytes"):
        prepare(docs, name, tmp_path / name)
        val = read_shard(tmp_path / name / "val_000000.bin").astype(np.int64)
        counts[name] = int(get_tokenizer(name).token_bytes[val].sum())
    assert counts["gpt2"] == counts["bytes"] > 0
    train, val = split_text(["a\nb\nc\nd\n" * 50, "x\n" * 10], 0.5)
    assert "".join(train) + "".join(val) == "a\nb\nc\nd\n" * 50 + "x\n" * 10


def test_prepare_cli_from_file_folder_and_stdin(tmp_path):
    (tmp_path / "texts").mkdir()
    for i in range(3):
        (tmp_path / "texts" / f"{i}.txt").write_text(f"Document number {i}. " * 200)
    proc = run_cli(["data", "prepare", str(tmp_path / "texts"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o1")], check=0)
    assert "training" in proc.stdout
    tr = read_shard(tmp_path / "o1" / "train_000000.bin")
    assert (np.asarray(tr) == 50256).sum() == 3  # one end-of-text before each document
    import subprocess
    import sys

    text = "Hello there.\fSecond document.\f" * 100
    out = subprocess.run(
        [sys.executable, "-m", "blagpt", "data", "prepare", "-", "--tokenizer", "bytes", "--out", str(tmp_path / "o2"), "--split-on", "\\f"],
        input=text, capture_output=True, text=True, env={**__import__("os").environ, "BLAGPT_LOAD_PLUGINS": ""},
    )
    assert out.returncode == 0, out.stderr
    both = np.concatenate([read_shard(tmp_path / "o2" / f"{s}_000000.bin") for s in ("train", "val")])
    assert (both == 256).sum() >= 200
    missing = run_cli(["data", "prepare", str(tmp_path / "nope"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o3")])
    assert missing.returncode == 1 and "nope: no such file or folder" in missing.stderr


def _stream(tmp_path, n=10_000):
    write_shard(tmp_path / "t_000000.bin", np.arange(n // 2) % 60000)
    write_shard(tmp_path / "t_000001.bin", (np.arange(n // 2) + n // 2) % 60000)
    return TokenStream(str(tmp_path / "t_*.bin"), "training")


def test_stream_reads_across_shards(tmp_path):
    s = _stream(tmp_path)
    assert len(s) == 10_000 and s.read(4990, 20).tolist() == list(range(4990, 5010))


def test_ranks_read_disjoint_sequences_and_cover_the_single_process_batch(tmp_path):
    s = _stream(tmp_path)
    one = TrainLoader(s, 16, Layout(micro_batch=2, world=1, rank=0, accum=4), seed=3)
    ranks = [TrainLoader(s, 16, Layout(micro_batch=2, world=2, rank=r, accum=2), seed=3) for r in range(2)]
    for _ in range(3):
        single = {tuple(row.tolist()) for m in range(4) for row in one.micro_batch(m)}
        per_rank = [{tuple(row.tolist()) for m in range(2) for row in ld.micro_batch(m)} for ld in ranks]
        assert not per_rank[0] & per_rank[1]
        assert per_rank[0] | per_rank[1] == single and len(single) == 8
        for ld in [one, *ranks]:
            ld.advance()
    row = one.micro_batch(0)[0]
    assert (row[1:] - row[:-1] == 1).all() and row.shape[0] == 17  # contiguous seq_len + 1 tokens


def test_loader_position_resumes_and_epochs_reshuffle(tmp_path):
    s = _stream(tmp_path, 2000)
    lay = Layout(micro_batch=4, world=1, rank=0, accum=1)
    a = TrainLoader(s, 16, lay, seed=0)
    seen = []
    for _ in range(40):
        seen.append(a.micro_batch(0).clone())
        a.advance()
    b = TrainLoader(s, 16, lay, seed=0)
    b.load_state_dict({"position": 20 * 4, "n_seqs": a.n_seqs, "global_batch": 4})
    assert (b.micro_batch(0) == seen[20]).all()
    with pytest.raises(DataError, match="resume on the same data"):
        b.load_state_dict({"position": 0, "n_seqs": 7, "global_batch": 4})
    first_epoch = [tuple(x[:, 0].tolist()) for x in seen[: a.n_seqs // 4]]
    assert len(set(sum(first_epoch, ()))) == len(sum(first_epoch, ()))  # no repeats inside an epoch


def test_validation_slice_predicts_every_token_and_splits_by_rank(tmp_path):
    s = _stream(tmp_path)
    tok = get_tokenizer("bytes")
    whole = val_slice(s, 16, 0, 1, tok, max_tokens=330)
    assert whole.rows.shape == (21, 17) and int(whole.valid.sum()) == 330
    assert whole.valid.tolist() == [16] * 20 + [10]
    assert whole.rows[-1, :11].tolist() == list(range(320, 331)) and (whole.rows[-1, 11:] == tok.eot).all()
    r0, r1 = val_slice(s, 16, 0, 2, tok, max_tokens=330), val_slice(s, 16, 1, 2, tok, max_tokens=330)
    assert (r0.rows == whole.rows[0::2]).all() and (r1.rows == whole.rows[1::2]).all()
    assert int(r0.valid.sum() + r1.valid.sum()) == 330


@pytest.mark.parametrize("max_bytes", [1000, 5003, 20000, 77777])
def test_byte_slices_hold_the_same_text_for_both_tokenizers(max_bytes):
    from blagpt.data.prepare import embedded_dataset

    texts = {}
    for name in ("gpt2", "bytes"):
        tok = get_tokenizer(name)
        sl = val_slice(TokenStream(embedded_dataset(name)[1], "validation"), 64, 0, 1, tok, max_bytes=max_bytes)
        real = torch.arange(64)[None, :] < sl.valid[:, None]
        targets = sl.rows[:, 1:][real]
        texts[name] = tok.decode_bytes(targets.tolist())
        assert int(tok.token_bytes[targets.numpy()].sum()) == len(texts[name])
    assert texts["gpt2"] == texts["bytes"]
    assert max_bytes - 200 < len(texts["bytes"]) <= max_bytes
    assert texts["bytes"].endswith(b"\n")
