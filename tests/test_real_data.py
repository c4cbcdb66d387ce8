"""The user's story with their own data, through the CLI: parquet prepared with a local Hugging
Face BPE trains with exact bits per byte, MLflow records the datasets, and one bench ranks a gpt2
entry and a local-BPE entry on the same validation bytes."""

from __future__ import annotations

import csv
import json
import math

import pytest

from blagpt.data.prepare import embedded_documents, split_text

from conftest import BENCH_BASE, TINY, run_cli

pytestmark = pytest.mark.slow

EVAL_BYTES = 4096


def last_line_start(text: bytes, limit: int) -> int:
    """The last offset <= limit where a line starts (a newline before, a non-space after): where a
    validation slice of ``limit`` bytes ends, whatever the tokenizer (computed here from the text)."""
    return max(o for o in range(1, min(limit, len(text) - 1) + 1) if text[o - 1] == 0x0A and not chr(text[o]).isspace())


def final_eval(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in rows if r["key"] == "val/bpb")
    return {r["key"]: r["value"] for r in rows if r["step"] == last and r["key"].startswith("val/")}


def test_parquet_with_a_local_bpe_trains_with_exact_bits_per_byte_and_mlflow_records_the_datasets(workdir, hf_bpe):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    docs = embedded_documents()[:6]
    pq.write_table(pa.table({"text": docs}), workdir / "plays.parquet")
    uri = f"sqlite:///{workdir}/mlflow.db"
    val_text = "".join(split_text(docs, 0.05)[1]).encode("utf-8")
    want_bytes = last_line_start(val_text, EVAL_BYTES)
    for name, tok in (("hf", f"hf:{hf_bpe}"), ("g2", "gpt2")):
        run_cli(["data", "prepare", "plays.parquet", "--tokenizer", tok, "--out", f"d-{name}"], cwd=workdir, check=0)
        sets = [*TINY, f"data.tokenizer={tok}", f"data.train=d-{name}/train_*.bin", f"data.val=d-{name}/val_*.bin",
                f"train.eval_bytes={EVAL_BYTES}", "train.steps=4", f"tracking.run_name={name}"]
        run_cli(["train", "--tracking-uri", uri, *[x for s in sets for x in ("--set", s)]], cwd=workdir, check=0)
        ev = final_eval(workdir / "runs" / name)
        assert ev["val/bytes"] == want_bytes  # the same text, counted from the text itself
        assert ev["val/bpb"] == pytest.approx(ev["val/loss"] * ev["val/tokens"] / (math.log(2) * want_bytes), rel=1e-9)
        meta = json.loads((workdir / "runs" / name / "run.json").read_text())
        digest = json.loads((workdir / f"d-{name}" / "manifest.json").read_text())["digest"][:32]
        inputs = MlflowClient(uri).get_run(meta["mlflow_run_id"]).inputs.dataset_inputs
        got = sorted((i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in inputs)
        assert got == [(f"d-{name}/training", digest, "training"), (f"d-{name}/validation", digest, "validation")]
    assert final_eval(workdir / "runs" / "hf")["val/tokens"] != final_eval(workdir / "runs" / "g2")["val/tokens"]


def test_one_bench_ranks_a_gpt2_entry_and_a_local_bpe_entry_on_the_same_validation_bytes(workdir, hf_bpe):
    tok = f"hf:{hf_bpe}"
    proc = run_cli(["bench", "--models", "tinylm", "--tokenizers", f"gpt2,{tok}", "--budget", "steps=4", "--no-track", "--name", "tk",
                    *BENCH_BASE], cwd=workdir, check=0)
    assert "not scored on the same validation bytes" not in proc.stdout
    with open(workdir / "runs" / "tk" / "leaderboard.csv") as f:
        rows = {r["entry"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tinylm/gpt2", f"tinylm/{tok}"} and all(r["seeds_ok"] == "1" for r in rows.values())
    assert {r["tokenizer"] for r in rows.values()} == {"gpt2", tok}
    scored = {json.loads((d / "run.json").read_text())["params"]["data.tokenizer"]: final_eval(d)["val/bytes"]
              for d in (workdir / "runs" / "tk").glob("tinylm-*")}
    assert set(scored) == {"gpt2", tok} and len(set(scored.values())) == 1
