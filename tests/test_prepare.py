"""``data prepare`` of real inputs: text, JSONL (gzipped too), parquet, folders and globs; worker
processes; the manifest; a second prepare replacing the first; uint32 shards; and training that
checks the manifest of both splits."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from blagpt.config import merge_sources, resolve
from blagpt.data import manifest
from blagpt.data.prepare import embedded_documents, plan_split, prepare, split_text
from blagpt.data.shards import read_shard, write_shard
from blagpt.data.sources import Corpus
from blagpt.errors import DataError
from blagpt.plugin.registry import Registry

from conftest import TINY, run_cli

DOCS = embedded_documents()[:5]


def write_formats(root):
    """The same five documents as a folder of .txt files, .jsonl, .jsonl.gz and .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "txt").mkdir(parents=True)
    for i, d in enumerate(DOCS):
        (root / "txt" / f"{i:02d}.txt").write_text(d)
    lines = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS))
    (root / "docs.jsonl").write_text(lines)
    with gzip.open(root / "docs.jsonl.gz", "wt") as f:
        f.write(lines)
    pq.write_table(pa.table({"id": list(range(5)), "text": DOCS}), root / "docs.parquet", row_group_size=2)
    return root


def test_every_format_gives_the_same_shards_and_workers_do_not_change_them(tmp_path):
    src = write_formats(tmp_path / "src")
    digests = {}
    for name, sources in (("txt", [str(src / "txt")]), ("glob", [str(src / "txt" / "*.txt")]), ("jsonl", [str(src / "docs.jsonl")]),
                          ("gz", [str(src / "docs.jsonl.gz")]), ("parquet", [str(src / "docs.parquet")])):
        m = prepare(Corpus.from_sources(sources), "gpt2", tmp_path / name)
        digests[name] = m["digest"]
        assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 6  # one document is cut in two
    assert len(set(digests.values())) == 1, digests
    two = prepare(Corpus.from_sources([str(src / "docs.parquet")]), "gpt2", tmp_path / "two", workers=2, shard_tokens=5000)
    one = prepare(Corpus.from_sources([str(src / "docs.parquet")]), "gpt2", tmp_path / "one", workers=1, shard_tokens=5000)
    assert two["digest"] == one["digest"] and len(two["splits"]["train"]["shards"]) > 2
    for a, b in zip(sorted((tmp_path / "one").glob("*.bin")), sorted((tmp_path / "two").glob("*.bin"))):
        assert a.read_bytes() == b.read_bytes()
    # streaming over a corpus splits as the in-memory split does
    first_val, deficit = plan_split([len(d.encode()) for d in DOCS], 0.05)
    train, val = split_text(DOCS, 0.05)
    assert one["splits"]["val"]["bytes"] == sum(len(v.encode()) for v in val) and deficit is not None and first_val == 5


def test_the_manifest_names_the_tokenizer_sources_and_counts(tmp_path):
    src = write_formats(tmp_path / "src")
    m = prepare(Corpus.from_sources([str(src / "docs.jsonl")]), "bytes", tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["tokenizer"] == "bytes" and on_disk["digest"] == m["digest"] and on_disk["vocab_size"] == 257
    assert on_disk["sources"][0]["path"].endswith("docs.jsonl") and on_disk["sources"][0]["bytes"] > 0
    total = sum(len(d.encode()) for d in DOCS)
    assert on_disk["splits"]["train"]["bytes"] + on_disk["splits"]["val"]["bytes"] == total
    assert on_disk["splits"]["train"]["tokens"] == on_disk["splits"]["train"]["bytes"] + on_disk["splits"]["train"]["documents"]


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "c.csv").write_text("x\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    cases = [
        ([str(tmp_path / "a.jsonl")], r"a.jsonl:1: no text field 'text' \(has body\); choose it with --text-field"),
        ([str(tmp_path / "b.jsonl")], r"b.jsonl:2: not a JSON object"),
        ([str(tmp_path / "c.csv")], r"c.csv: not a file data prepare reads"),
        ([str(tmp_path / "d.parquet")], r"d.parquet: no column 'text' \(has body\); choose it with --text-field"),
        ([str(tmp_path / "*.nothing")], r"\*.nothing: no files match"),
    ]
    for sources, msg in cases:
        with pytest.raises(DataError, match=msg):
            prepare(Corpus.from_sources(sources), "bytes", tmp_path / "out")


def test_a_second_prepare_replaces_the_first_and_training_checks_the_manifest_of_both_splits(workdir):
    reg = Registry.load(only=["tinylm"], strict=True)
    prepare(DOCS, "bytes", workdir / "d", shard_tokens=20_000)
    assert len(list((workdir / "d").glob("train_*.bin"))) > 10
    prepare(DOCS, "gpt2", workdir / "d")  # today mixing them trained on 73% bytes data
    assert sorted(p.name for p in (workdir / "d").glob("*.bin")) == ["train_000000.bin", "val_000000.bin"]
    assert json.loads((workdir / "d" / "manifest.json").read_text())["tokenizer"] == "gpt2"

    from blagpt.run.trainer import train

    def run(tok, folder="d"):
        cfg = resolve(merge_sources(sets=[*TINY, "tracking.enabled=false", "train.steps=2", f"data.tokenizer={tok}",
                                          f"data.train={folder}/train_*.bin", f"data.val={folder}/val_*.bin"]), reg)
        return train(cfg, registry=reg, echo=lambda *a: None)

    with pytest.raises(DataError, match=r"data.train: d/manifest.json: these shards were made with tokenizer 'gpt2', not this run's 'bytes'"):
        run("bytes")
    assert run("gpt2").step == 2
    prepare(DOCS, "bytes", workdir / "v")  # validation shards of another tokenizer
    (workdir / "m").mkdir()
    for p in (workdir / "d").glob("train_*"):
        (workdir / "m" / p.name).write_bytes(p.read_bytes())
    (workdir / "m" / "manifest.json").write_text((workdir / "d" / "manifest.json").read_text())
    with pytest.raises(DataError, match=r"data.val: v/manifest.json: these shards were made with tokenizer 'bytes', not this run's 'gpt2'"):
        cfg = resolve(merge_sources(sets=[*TINY, "tracking.enabled=false", "train.steps=2", "data.tokenizer=gpt2",
                                          "data.train=m/train_*.bin", "data.val=v/val_*.bin"]), reg)
        train(cfg, registry=reg, echo=lambda *a: None)
    write_shard(workdir / "d" / "train_000009.bin", np.arange(100))  # not the prepare's: stale
    with pytest.raises(DataError, match=r"data.train: d: train_000009.bin is not one of the shards its manifest.json lists"):
        run("gpt2")


def test_vocabularies_above_65536_get_uint32_shards_and_train(workdir):
    write_shard(workdir / "u2.bin", [1, 65535])
    write_shard(workdir / "u4.bin", [1, 65536])
    assert np.fromfile(workdir / "u2.bin", dtype="<i4", count=4).tolist() == [20240520, 1, 2, 0]
    assert np.fromfile(workdir / "u4.bin", dtype="<i4", count=4).tolist() == [20240520, 2, 2, 4]
    assert read_shard(workdir / "u4.bin").tolist() == [1, 65536] and read_shard(workdir / "u4.bin").dtype == np.uint32
    reg = Registry.load(only=["tinylm"], strict=True)
    m = prepare(DOCS[:3], "widebytes", workdir / "w", registry=reg)
    shard = read_shard(workdir / "w" / m["splits"]["train"]["shards"][0])
    assert shard.dtype == np.uint32 and int(shard[0]) == 70256 and int(shard[1:].min()) >= 70000

    from blagpt.run.trainer import train

    cfg = resolve(merge_sources(sets=[*TINY, "model.d_model=16", "model.n_heads=2", "tracking.enabled=false", "train.steps=3",
                                      "data.tokenizer=widebytes", "data.train=w/train_*.bin", "data.val=w/val_*.bin"]), reg)
    res = train(cfg, registry=reg, echo=lambda *a: None)
    assert abs(res.history[0]["train/loss"] - math.log(70257)) < 0.3
    assert res.final["val/bpb"] == pytest.approx(res.final["val/loss"] / math.log(2), rel=1e-9)  # one byte per token


def test_the_cli_prepares_parquet_with_workers_and_says_how_fast(workdir):
    src = write_formats(workdir / "src")
    proc = run_cli(["data", "prepare", str(src / "docs.parquet"), str(src / "docs.jsonl"), "--tokenizer", "gpt2", "--out", "o",
                    "--workers", "2"], cwd=workdir, check=0)
    m = manifest.read(workdir / "o")
    n = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert f"{m['splits']['train']['tokens']:,} training and" in proc.stdout and f"from {n} documents" in proc.stdout
    assert "MB/s with 2 workers" in proc.stdout
    assert [s["path"].rsplit("/", 1)[1] for s in m["sources"]] == ["docs.parquet", "docs.jsonl"]
