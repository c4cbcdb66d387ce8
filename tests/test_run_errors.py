"""Bad input to a run's commands, each a one-line error: a changed config or a spent budget on
resume, shards of another tokenizer, runs looked up by name and id (bench runs, a corrupt
run.json elsewhere), bad arguments, a server that refuses or hangs. Through the real CLI."""

from __future__ import annotations

import pytest

from cli_runs import meta, one_error_line, sets
from conftest import run_cli

pytestmark = pytest.mark.slow


# -- 7. resuming with another config ------------------------------------------------------------


def test_resume_refuses_a_changed_model_in_one_line_and_a_budget_already_spent(workdir):
    run_cli(["train", "--no-track", "--until-step", "4", *sets("train.steps=8", "tracking.run_name=r")], cwd=workdir, check=0)
    changed = run_cli(["train", "--resume", "r", "--no-track", "--set", "model.n_layers=3", "--set", "optimizer.lr=0.01"], cwd=workdir)
    line = one_error_line(changed)
    assert changed.returncode == 2
    assert "model.n_layers (1 -> 3)" in line and "optimizer.lr (0.001 -> 0.01)" in line
    below = run_cli(["train", "--resume", "r", "--no-track", "--set", "train.steps=3"], cwd=workdir)
    assert "train.steps=3: the run has already reached step 4; set a larger budget" in one_error_line(below)
    assert meta(workdir / "runs" / "r")["steps_planned"] == 8  # the record is untouched
    more = run_cli(["train", "--resume", "r", "--no-track", "--set", "train.tokens=1280"], cwd=workdir, check=0)  # 10 steps
    assert "step 10/10" in more.stdout
    done = run_cli(["train", "--resume", "r", "--no-track"], cwd=workdir)
    assert "the run has already finished step 10" in one_error_line(done)


# -- 8. shards of another tokenizer -------------------------------------------------------------


def test_shards_of_another_tokenizer_are_refused_before_training(workdir):
    from blagpt.data.prepare import embedded_documents

    text = workdir / "text.txt"
    text.write_text("\n".join(embedded_documents()[:3]))
    for tok in ("bytes", "gpt2"):
        run_cli(["data", "prepare", str(text), "--tokenizer", tok, "--out", f"d-{tok}"], cwd=workdir, check=0)

    def refused(tok, tr, va):
        proc = run_cli(["train", "--no-track", *sets("train.steps=2", f"data.tokenizer={tok}", f"data.train={tr}", f"data.val={va}",
                                                     "tracking.run_name=mix")], cwd=workdir)
        assert not (workdir / "runs" / "mix").exists()  # nothing trained, nothing left behind
        return one_error_line(proc)

    # with manifests: the tokenizer that made them is named
    assert "data.train: d-bytes/manifest.json: these shards were made with tokenizer 'bytes', not this run's 'gpt2'" in refused(
        "gpt2", "d-bytes/train_*.bin", "d-bytes/val_*.bin")
    assert "data.val: d-gpt2/manifest.json: these shards were made with tokenizer 'gpt2', not this run's 'bytes'" in refused(
        "bytes", "d-bytes/train_*.bin", "d-gpt2/val_*.bin")
    # without (modded-nanogpt's shards, an older prepare): the id range of both splits
    for tok in ("bytes", "gpt2"):
        (workdir / f"d-{tok}" / "manifest.json").unlink()
    cases = [
        ("gpt2", "d-bytes/train_*.bin", "d-bytes/val_*.bin", "data.train: d-bytes/train_*.bin: all of the first"),
        ("bytes", "d-bytes/train_*.bin", "d-gpt2/val_*.bin", "data.val: d-gpt2/val_*.bin: token id"),
        ("bytes", "d-gpt2/train_*.bin", "d-bytes/val_*.bin", "data.train: d-gpt2/train_*.bin: token id"),
    ]
    for tok, tr, va, want in cases:
        assert want in refused(tok, tr, va)


# -- 9, 11. finding runs ------------------------------------------------------------------------


def test_runs_are_found_by_the_names_and_ids_blagpt_runs_shows_also_in_benches_and_past_a_corrupt_run_json(workdir):
    from conftest import BENCH_BASE

    uri = f"sqlite:///{workdir}/mlflow.db"
    run_cli(["bench", "--models", "tinylm", "--budget", "steps=2", "--name", "bb", "--tracking-uri", uri, *BENCH_BASE], cwd=workdir, check=0)
    listed = run_cli(["runs", "--tracking-uri", uri], cwd=workdir, check=0).stdout.splitlines()
    child = next(ln.split() for ln in listed if ln.startswith("tinylm-"))
    name, run_id = child[0], child[-1]
    for ref in (name, run_id):
        proc = run_cli(["sample", "--run", ref, "--tokens", "4", "--temperature", "0"], cwd=workdir, check=0)
        assert f"{name}: model tinylm at step 2" in proc.stderr
    bench = run_cli(["sample", "--run", "bb", "--tokens", "4"], cwd=workdir)
    assert "runs/bb is a bench's folder" in one_error_line(bench)
    # one corrupt run.json elsewhere under runs/ does not break lookup by MLflow id: it is skipped, with a warning
    run_cli(["train", "--no-track", *sets("train.steps=2", "tracking.run_name=bad")], cwd=workdir, check=0)
    (workdir / "runs" / "bad" / "run.json").write_text("{broken")
    proc = run_cli(["sample", "--run", run_id, "--tokens", "4", "--temperature", "0"], cwd=workdir, check=0)
    assert f"{name}: model tinylm at step 2" in proc.stderr
    assert "skipping runs/bad/run.json: not valid JSON" in proc.stderr


# -- 10. bad arguments: one line each -----------------------------------------------------------


def test_bad_input_is_one_line_not_a_traceback(workdir):
    (workdir / "latin1.yaml").write_bytes(b"train:\n  steps: 3 # caf\xe9\n")
    (workdir / "f.txt").write_text("some text\n" * 50)
    (workdir / "folder").mkdir()
    run_cli(["train", "--no-track", *sets("train.steps=2", "tracking.run_name=s")], cwd=workdir, check=0)
    cases = [
        (["train", "--model", "tinylm", "--config", "latin1.yaml"], "latin1.yaml: not UTF-8 text"),
        (["data", "prepare", "f.txt", "--tokenizer", "bytes", "--out", "o", "--split-on", "\\x"], "--split-on '\\\\x': not a valid escape"),
        (["data", "prepare", "f.txt", "--tokenizer", "bytes", "--out", "f.txt/sub"], "--out f.txt/sub: cannot write shards there (Not a directory)"),
        (["train", "--no-track", *sets("train.steps=2", "train.out_dir=f.txt/runs")], "train.out_dir: cannot write the run folder f.txt/runs/"),
        (["train", "--no-track", *sets("train.steps=2", "data.train=folder", "data.val=folder")], "data.train: folder is a folder; expected a glob"),
        (["sample", "--run", "s", "--temperature", "nan"], "--temperature: expected a finite number >= 0, got nan"),
    ]
    for args, want in cases:
        proc = run_cli(args, cwd=workdir)
        assert want in one_error_line(proc), (args, proc.stderr)


def test_runs_sync_and_compare_give_up_on_a_refusing_or_hanging_server_in_one_line(workdir):
    from conftest import free_port, hanging_server

    run_cli(["train", "--no-track", *sets("train.steps=2", "tracking.run_name=s", "tracking.timeout_s=2")], cwd=workdir, check=0)
    refused = f"http://127.0.0.1:{free_port()}"
    with hanging_server() as (hung, _):
        for uri, how in ((refused, "Connection refused"), (hung, "timed out")):
            for args in (["runs", "sync", "runs/s", "--tracking-uri", uri], ["compare", "x", "--tracking-uri", uri, "--timeout-s", "2"],
                         ["runs", "--tracking-uri", uri, "--timeout-s", "2"]):
                proc = run_cli(args, cwd=workdir, timeout=120)
                line = one_error_line(proc)
                assert f"no MLflow server answers at {uri} within 2 s" in line and how in line, line


