"""``blagpt eval``: a trained run's loss and bits per byte on other data (the training evaluator,
recorded in the run folder and its MLflow run), and the lm-evaluation-harness adapter compared with
log-likelihoods computed by hand from the model's forward pass, on small local tasks
(tests/lm_eval_tasks) with nothing fetched from the network."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blagpt.cli import cli
from blagpt.config import merge_sources, resolve
from blagpt.data.loader import TokenStream
from blagpt.data.prepare import embedded_documents, prepare
from blagpt.errors import ConfigError, DataError
from blagpt.lock import RunInUse
from blagpt.plugin.registry import Registry
from blagpt.run.evaluate import evaluate_data
from blagpt.run.rundir import RunDir
from blagpt.run.sample import load_run
from blagpt.run.trainer import train

from conftest import TINY

TASKS = Path(__file__).parent / "lm_eval_tasks"
L = 32  # the runs' train.seq_len (TINY): shorter than several of the tasks' texts


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The Hugging Face libraries lm-eval uses, offline and caching in a temporary folder."""
    home = tmp_path_factory.mktemp("hf")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"),
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory, reg):
    """Data (one corpus per tokenizer, another corpus for bytes and gpt2) and two tiny trained runs:
    ``bytes`` (tracked in a local MLflow store) and ``gpt2`` (untracked)."""
    root = tmp_path_factory.mktemp("eval")
    docs = embedded_documents()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's artifacts (./mlruns beside a sqlite store) land here
        for tok in ("bytes", "gpt2"):
            prepare(docs[:1], tok, root / f"data-{tok}")
            prepare(docs[5:6], tok, root / f"other-{tok}")
        for tok, track in (("bytes", True), ("gpt2", False)):
            sets = [*TINY, f"data.tokenizer={tok}", f"data.train={root}/data-{tok}/train_*.bin", f"data.val={root}/data-{tok}/val_*.bin",
                    "train.steps=6", "train.eval_interval=0", "optimizer.lr=3e-3", f"tracking.enabled={str(track).lower()}",
                    f"tracking.uri=sqlite:///{root}/mlflow.db", f"train.out_dir={root / 'runs'}", f"tracking.run_name={tok}"]
            train(resolve(merge_sources(sets=sets), reg), registry=reg, echo=lambda *a: None)
        yield root


@pytest.fixture(scope="module")
def runs(root, reg):
    return {name: load_run(name, str(root / "runs"), "cpu", registry=reg) for name in ("bytes", "gpt2")}


# -- loss and bits per byte on other data ------------------------------------------------------


def test_eval_on_the_runs_own_validation_data_reproduces_its_final_evaluation(root, runs, reg):
    run = runs["bytes"]
    final = {r["key"]: r["value"] for r in RunDir(run.run_dir).metrics.read() if r["step"] == run.step}
    ev = evaluate_data(run, reg, f"{root}/data-bytes/val_*.bin")
    assert ev.loss == pytest.approx(final["val/loss"], rel=1e-9) and ev.bpb == pytest.approx(final["val/bpb"], rel=1e-9)
    assert ev.tokens == 2048 and ev.name == "data-bytes"


def hand_loss_bpb(run, pattern, n_tokens):
    """Nats per token and bits per byte of the first ``n_tokens`` predictions, straight from the
    model's logits (rows of seq_len targets, the last one shorter)."""
    ids = torch.from_numpy(TokenStream(pattern, "x").read(0, n_tokens + 1))
    nll = 0.0
    with torch.no_grad():
        for s in range(0, n_tokens, L):
            piece = ids[s : s + L + 1]
            logits = run.model(piece[None, :-1])[0].double()
            nll -= float(torch.log_softmax(logits, -1).gather(-1, piece[1:, None]).sum())
    n_bytes = int(run.tokenizer.token_bytes[ids[1:].numpy()].sum())
    return nll / n_tokens, nll / (math.log(2) * n_bytes), n_bytes


def test_eval_cli_scores_other_data_and_records_it_in_the_run_and_mlflow(root, runs, offline):
    """One eval command: --data (compared with a hand computation) and --tasks (the table, the
    metrics), recorded in the run folder and its MLflow run."""
    from mlflow.tracking import MlflowClient

    run_dir = runs["bytes"].run_dir
    pattern = f"{root}/other-bytes/val_*.bin"
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    before = client.get_run(RunDir(run_dir).meta["mlflow_run_id"]).info
    proc = CliRunner().invoke(cli, ["eval", "--run", "bytes", "--out-dir", str(root / "runs"), "--data", pattern, "--eval-tokens", "1000",
                                    "--tasks", "blagpt_tiny_choice,blagpt_tiny_rolling", "--include-path", str(TASKS), "--limit", "3",
                                    "--bootstrap-iters", "0", "--device", "cpu"])
    assert proc.exit_code == 0, proc.output
    loss, bpb, n_bytes = hand_loss_bpb(runs["bytes"], pattern, 1000)
    meta = RunDir(run_dir).meta
    data_eval, task_eval = meta["evals"][-2:]
    assert data_eval["kind"] == "data" and data_eval["name"] == "other-bytes" and data_eval["step"] == 6
    assert data_eval["metrics"]["eval/other-bytes/loss"] == pytest.approx(loss, rel=1e-5)
    assert data_eval["metrics"]["eval/other-bytes/bpb"] == pytest.approx(bpb, rel=1e-5)
    assert (data_eval["tokens"], data_eval["bytes"]) == (1000, n_bytes)
    digest = json.loads((root / "other-bytes" / "manifest.json").read_text())["digest"]
    assert data_eval["digest"] == digest
    assert f"eval other-bytes ({pattern}): loss {loss:.4f} nats/token | bpb {bpb:.4f}" in proc.stdout
    assert task_eval["kind"] == "lm_eval" and task_eval["tasks"] == ["blagpt_tiny_choice", "blagpt_tiny_rolling"] and task_eval["limit"] == 3
    acc = task_eval["metrics"]["lm_eval/blagpt_tiny_choice/acc"]
    assert 0 <= acc <= 1 and "lm_eval/blagpt_tiny_rolling/bits_per_byte" in task_eval["metrics"]
    table = [ln.split() for ln in proc.stdout.splitlines()]
    assert ["TASK", "METRIC", "VALUE", "STDERR"] in table and ["blagpt_tiny_choice", "acc", f"{acc:.4f}", "-"] in table

    rows = [r for r in RunDir(run_dir).metrics.read() if r["key"].startswith(("eval/", "lm_eval/"))]
    assert {r["step"] for r in rows} == {6}
    logged = client.get_run(meta["mlflow_run_id"])
    assert f"logged to MLflow run {meta['mlflow_run_id']}" in proc.stdout
    assert logged.data.metrics["eval/other-bytes/loss"] == pytest.approx(loss, rel=1e-5)
    assert logged.data.metrics["eval/other-bytes/bpb"] == pytest.approx(bpb, rel=1e-5)
    assert logged.data.metrics["lm_eval/blagpt_tiny_choice/acc"] == acc
    inputs = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in logged.inputs.dataset_inputs}
    assert ("other-bytes/evaluation", digest[:32], "evaluation") in inputs
    assert logged.data.params["model.name"] == "tinylm"  # the run's own record is intact
    assert (logged.info.status, logged.info.start_time, logged.info.end_time) == ("FINISHED", before.start_time, before.end_time)
    assert RunDir(run_dir).meta["synced_all"] is True


def test_eval_of_an_untracked_run_stays_in_its_folder(root, runs):
    run_dir = runs["gpt2"].run_dir
    res = CliRunner().invoke(cli, ["eval", "--run", "gpt2", "--out-dir", str(root / "runs"), "--device", "cpu",
                                                   "--data", f"{root}/other-gpt2/val_*.bin", "--eval-bytes", "800", "--name", "other"])
    assert res.exit_code == 0, res.output
    assert "has no MLflow run (trained without tracking)" in res.stderr and f"blagpt runs sync {run_dir}" in res.stderr
    meta = RunDir(run_dir).meta
    assert meta["evals"][-1]["name"] == "other" and meta["evals"][-1]["bytes"] <= 800 and "mlflow_run_id" not in meta
    assert {r["key"] for r in RunDir(run_dir).metrics.read() if r["key"].startswith("eval/")} == {"eval/other/loss", "eval/other/bpb"}


def test_eval_refuses_data_of_another_tokenizer_in_one_line(root, runs, reg):
    with pytest.raises(DataError) as e:
        evaluate_data(runs["bytes"], reg, f"{root}/other-gpt2/val_*.bin")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--data: ") and "'gpt2'" in msg and "not this run's 'bytes'" in msg
    with pytest.raises(DataError, match=r"--data: .*nothing_\*\.bin: no evaluation shards match"):
        evaluate_data(runs["bytes"], reg, f"{root}/other-bytes/nothing_*.bin")
    with pytest.raises(ConfigError, match="give one of them"):
        evaluate_data(runs["bytes"], reg, f"{root}/other-bytes/val_*.bin", eval_tokens=10, eval_bytes=10)


def test_eval_by_bytes_cuts_the_same_text_for_every_tokenizer(root, runs, reg):
    b = evaluate_data(runs["bytes"], reg, f"{root}/other-bytes/val_*.bin", eval_bytes=1500, batch_size=3)
    g = evaluate_data(runs["gpt2"], reg, f"{root}/other-gpt2/val_*.bin", eval_bytes=1500)
    assert b.bytes == g.bytes <= 1500 and g.tokens < b.tokens


def test_eval_cli_errors(root, runs):
    res = CliRunner().invoke(cli, ["eval", "--run", "bytes", "--out-dir", str(root / "runs")])
    assert res.exit_code == 2 and "give --data PATTERN" in res.output
    res = CliRunner().invoke(cli, ["eval", "--run", "bytes", "--data", "x", "--name", "a,b"])
    assert isinstance(res.exception, ConfigError) and "--name: 'a,b' is not usable in a metric name" in str(res.exception)
    res = CliRunner().invoke(cli, ["eval", "--run", "bytes", "--data", "x", "--limit", "3"])
    assert res.exit_code == 2 and "go with --tasks" in res.output
    lock = RunDir(runs["bytes"].run_dir).lock.acquire()  # as a training process holds it
    try:
        res = CliRunner().invoke(cli, ["eval", "--run", "bytes", "--out-dir", str(root / "runs"), "--data", f"{root}/other-bytes/val_*.bin",
                                       "--device", "cpu"])
    finally:
        lock.release()
    assert isinstance(res.exception, RunInUse) and "in use by process" in str(res.exception)


def test_tasks_without_lm_eval_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval fails as when it is not installed
    monkeypatch.delitem(sys.modules, "blagpt.run.harness", raising=False)
    import blagpt.run

    monkeypatch.delattr(blagpt.run, "harness", raising=False)
    res = CliRunner().invoke(cli, ["eval", "--run", "any", "--tasks", "hellaswag"])
    assert isinstance(res.exception, ConfigError)
    assert "pip install 'blagpt[lm-eval]'" in str(res.exception) and "\n" not in str(res.exception)


def test_help_does_not_import_lm_eval_or_torch():
    code = ("import sys; from blagpt.cli import cli\n"
            "for args in (['--help'], ['eval', '--help']):\n"
            "    try: cli.main(args, standalone_mode=False)\n"
            "    except SystemExit: pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lm_eval', 'datasets', 'torch', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- the lm-evaluation-harness adapter ----------------------------------------------------------


def token_logprob(run, context_ids, target):
    """log p(target | context_ids) from one forward pass over exactly that context, and whether
    target is the most likely real id."""
    with torch.no_grad():
        logits = run.model(torch.tensor([context_ids]))[0, -1].double()
    return float(torch.log_softmax(logits, -1)[target]), int(logits[: run.tokenizer.vocab_size].argmax()) == target


def hand_loglikelihood(run, context, continuation):
    """The harness's rule for a causal model, computed token by token: trailing spaces of the
    context go to the continuation; the continuation's ids are those of encode(context +
    continuation) after len(encode(context)); what the model cannot see is cut on the left."""
    tok = run.tokenizer
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    assert context  # (an empty one is replaced by end-of-text: not in these tasks)
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx):]
    seq = (ctx + cont)[-(L + 1):]
    total, greedy, start = 0.0, True, len(seq) - len(cont)
    for p in range(start, len(seq)):
        lp, g = token_logprob(run, seq[:p], seq[p])
        total, greedy = total + lp, greedy and g
    return total, greedy, len(ctx) + len(cont) > L + 1


@pytest.fixture(scope="module")
def results(runs, offline):
    """Each run's results on the three local tasks (samples kept), with a batch size that mixes lengths."""
    from blagpt.run import harness

    out = {}
    for name, run in runs.items():
        lm = harness.BlagptLM(run, batch_size=4, max_gen_toks=16)
        out[name] = harness.run_tasks(lm, ["blagpt_tiny_*"], include_path=str(TASKS), bootstrap_iters=0, log_samples=True)
    return out


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_loglikelihood_equals_a_hand_computation(runs, results, name):
    run, samples = runs[name], results[name]["samples"]["blagpt_tiny_choice"]
    docs = [json.loads(ln) for ln in (TASKS / "tiny_choice.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs)
    truncated, correct = 0, 0
    for s in samples:
        lls = []
        for (context, continuation), resp in zip(s["arguments"], s["resps"]):
            ll, greedy, cut = hand_loglikelihood(run, context, continuation)
            assert resp[0][0] == pytest.approx(ll, abs=1e-4) and resp[0][1] == greedy
            truncated += cut
            lls.append(ll)
        correct += int(np.argmax(lls) == s["doc"]["gold"])
    assert truncated > 0  # the long context was cut on the left
    assert results[name]["results"]["blagpt_tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))


def test_the_context_continuation_boundary_follows_the_harness(runs):
    """BPE merges across the boundary: the continuation is what encode(context + continuation)
    adds after encode(context), and a trailing space of the context moves to the continuation."""
    from blagpt.run import harness

    run = runs["gpt2"]
    lm = harness.BlagptLM(run, batch_size=2)
    ctx, cont = lm._encode_pair("The cat sat on the ", "mat")
    assert ctx == run.tokenizer.encode("The cat sat on the") and cont == run.tokenizer.encode(" mat")
    (ll, greedy), = lm.score([(ctx, cont)])
    ref = hand_loglikelihood(run, "The cat sat on the ", "mat")
    assert ll == pytest.approx(ref[0], abs=1e-4) and greedy == ref[1]


def rolling_reference(run, text):
    """A document's log-likelihood token by token: the first L ids after end-of-text; each later
    block of L ids after the id before it; the last, shorter block with a full context of L ids."""
    ids = run.tokenizer.encode(text)
    n, total = len(ids), 0.0
    for i in range(n):
        if i < L:
            context = [run.tokenizer.eot] + ids[:i]
        elif i >= (n // L) * L and n % L:  # the last, partial block
            context = ids[n - L - 1 : i]
        else:
            context = ids[(i // L) * L - 1 : i]
        assert 1 <= len(context) <= L
        total += token_logprob(run, context, ids[i])[0]
    return total, n


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_rolling_loglikelihood_equals_a_direct_computation(runs, results, name):
    run, res = runs[name], results[name]
    samples = res["samples"]["blagpt_tiny_rolling"]
    total_ll, total_bytes, long_docs = 0.0, 0, 0
    for s in samples:
        (text,) = s["arguments"][0]
        ll, n = rolling_reference(run, text)
        assert s["resps"][0][0] == pytest.approx(ll, abs=1e-3)
        total_ll, total_bytes, long_docs = total_ll + ll, total_bytes + len(text.encode()), long_docs + (n > L)
    assert long_docs >= 2  # several windows, one of them the partial last one
    bpb = res["results"]["blagpt_tiny_rolling"]["bits_per_byte,none"]
    assert bpb == pytest.approx(-total_ll / (math.log(2) * total_bytes), rel=1e-6)


def test_generate_until_is_greedy_text_cut_at_the_stop_string(runs, results):
    run = runs["bytes"]
    tok = run.tokenizer
    for s in results["bytes"]["samples"]["blagpt_tiny_gen"]:
        prompt, kwargs = s["arguments"][0]
        ids, new = (tok.encode(prompt) if prompt else [tok.eot]), []
        for _ in range(kwargs["max_gen_toks"]):
            with torch.no_grad():
                nxt = int(run.model(torch.tensor([ids[-L:]]))[0, -1, : tok.vocab_size].argmax())
            if nxt == tok.eot:
                break
            ids.append(nxt)
            new.append(nxt)
        text = tok.decode(new)
        assert kwargs["until"] == ["\n"] and s["resps"][0][0] == text.split("\n")[0]


def test_unknown_task_is_one_line(runs, offline):
    from blagpt.run import harness

    with pytest.raises(ConfigError, match="--tasks: no lm-eval task, group or tag named 'no_such_task'"):
        harness.run_tasks(harness.BlagptLM(runs["bytes"]), ["no_such_task"], include_path=str(TASKS))
