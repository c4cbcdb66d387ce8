"""``blagpt sample``: seeded sampling, greedy = argmax step by step, top-k, vocabulary masking,
streaming UTF-8 decoding, the CLI and its one-line errors. Two tiny trained runs: bytes and gpt2."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from blagpt.cli import cli
from blagpt.config import merge_sources, resolve
from blagpt.data.prepare import embedded_documents, prepare
from blagpt.data.tokenizers import get_tokenizer
from blagpt.errors import BlagptError
from blagpt.plugin.registry import Registry
from blagpt.run.sample import StreamDecoder, encode_prompt, generate, load_run, resolve_device, stream_text
from blagpt.run.rundir import RunDir
from blagpt.run.trainer import train

from conftest import TINY, run_cli

PROMPT = "THESEUS:\nNow, fair Hippolyta"


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


@pytest.fixture(scope="module")
def out(tmp_path_factory, reg):
    """Runs folder with two tiny trained tinylm runs, ``bytes`` and ``gpt2`` (own small shards)."""
    root = tmp_path_factory.mktemp("sample")
    docs = embedded_documents()[:2]
    for tok, steps in (("bytes", 40), ("gpt2", 20)):
        prepare(docs, tok, root / f"data-{tok}")
        sets = [
            *TINY, f"data.tokenizer={tok}", f"data.train={root}/data-{tok}/train_*.bin", f"data.val={root}/data-{tok}/val_*.bin",
            f"train.steps={steps}", "train.eval_interval=0", "optimizer.lr=3e-3", "tracking.enabled=false",
            f"train.out_dir={root / 'runs'}", f"tracking.run_name={tok}",
        ]
        train(resolve(merge_sources(sets=sets), reg), registry=reg, echo=lambda *a: None)
    return root / "runs"


@pytest.fixture(scope="module")
def runs(out, reg):
    return {name: load_run(name, str(out), "cpu", registry=reg) for name in ("bytes", "gpt2")}


def sample_ids(run, prompt=PROMPT, n=64, seed=0, **kw):
    ids, _ = encode_prompt(prompt, run.tokenizer, run.context)
    gen = torch.Generator().manual_seed(seed)
    kw.setdefault("temperature", 1.0)
    return list(generate(run.model, ids, n, context=run.context, vocab_size=run.tokenizer.vocab_size,
                         eot=run.tokenizer.eot, generator=gen, **kw))


def greedy_reference(model, prompt_ids, n, context, vocab, eot):
    """Hand-computed greedy decoding: argmax of the last position's logits, one step at a time."""
    ids, new = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-context:]]))[0, -1, :vocab]
            nxt = int(logits.argmax())
            if nxt == eot:
                break
            new.append(nxt)
            ids.append(nxt)
    return new


def step_logits(run, prompt_ids, generated):
    """The logits the model gives before each generated id (for checking sampled ids)."""
    ids, rows = list(prompt_ids), []
    with torch.no_grad():
        for t in generated:
            rows.append(run.model(torch.tensor([ids[-run.context:]]))[0, -1, : run.tokenizer.vocab_size])
            ids.append(t)
    return rows


def test_loaded_run_is_the_checkpoint_in_eval_mode(runs, out):
    from blagpt.run import checkpoint as ckpt

    run = runs["bytes"]
    saved = ckpt.load(out / "bytes" / "checkpoint.pt")["model"]
    assert not run.model.training and run.step == 40 and run.context == 32 and run.tokenizer.name == "bytes"
    assert all(torch.equal(v, saved[k]) for k, v in run.model.state_dict().items())
    assert runs["gpt2"].tokenizer.name == "gpt2"


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_same_seed_same_text_other_seed_other_text(runs, name):
    run = runs[name]
    a = sample_ids(run, seed=0)
    torch.manual_seed(1234)  # the global RNG plays no part
    b = sample_ids(run, seed=0)
    c = sample_ids(run, seed=1)
    assert len(a) > 10
    assert a == b
    assert a != c


class Recorder(torch.nn.Module):
    """Passes calls through to ``inner`` and keeps each input it was given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs, self.grad_modes = inner, [], set()

    def forward(self, idx):
        self.inputs.append(idx[0].tolist())
        self.grad_modes.add(torch.is_grad_enabled())
        return self.inner(idx)


def perturbed(model, seed=0, std=0.5):
    """A copy of ``model`` with noise on every weight: its argmax depends on the whole context."""
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return noisy


@pytest.mark.parametrize("variant", ["trained", "perturbed"])
@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_greedy_is_argmax_step_by_step(runs, name, variant):
    run = runs[name]
    tok = run.tokenizer
    model = run.model if variant == "trained" else perturbed(run.model)
    prompt_ids, _ = encode_prompt(PROMPT, tok, run.context)
    n = 3 * run.context  # the window slides
    ref = greedy_reference(model, prompt_ids, n, run.context, tok.vocab_size, tok.eot)
    assert len(ref) == n
    if variant == "perturbed":
        assert len(set(ref)) > 10  # not a constant, so a wrong window would show
    kw = dict(context=run.context, vocab_size=tok.vocab_size, eot=tok.eot, temperature=0.0)
    rec = Recorder(model)
    assert list(generate(rec, prompt_ids, n, generator=torch.Generator().manual_seed(7), **kw)) == ref
    # every step ran the full forward on the last `context` tokens
    seq = prompt_ids + ref
    assert rec.inputs == [seq[: len(prompt_ids) + i][-run.context :] for i in range(n)]
    assert rec.grad_modes == {False}
    # the comparison can fail: sampling at temperature 1 is not greedy
    assert list(generate(model, prompt_ids, n, generator=torch.Generator().manual_seed(0), **{**kw, "temperature": 1.0})) != ref


def test_top_k_one_is_greedy_and_top_k_keeps_to_the_k_best(runs):
    run = runs["bytes"]
    greedy = sample_ids(run, n=80, temperature=0.0)
    assert sample_ids(run, n=80, temperature=1.0, top_k=1, seed=3) == greedy
    assert sample_ids(run, n=80, temperature=1.0, top_k=2, seed=3) != greedy

    prompt_ids, _ = encode_prompt(PROMPT, run.tokenizer, run.context)

    def outside_top3(ids):
        rows = step_logits(run, prompt_ids, ids)
        return sum(t not in torch.topk(row, 3).indices.tolist() for t, row in zip(ids, rows))

    assert outside_top3(sample_ids(run, n=80, temperature=1.5, top_k=3, seed=4)) == 0
    assert outside_top3(sample_ids(run, n=80, temperature=1.5, top_k=None, seed=4)) > 0  # without top-k: some are


class PaddedVocab(torch.nn.Module):
    """A model whose logits have extra columns past the tokenizer's vocabulary, all very large."""

    def __init__(self, inner, extra=8):
        super().__init__()
        self.inner, self.extra = inner, extra

    def forward(self, idx):
        logits = self.inner(idx)
        return torch.cat([logits, logits.new_full((*logits.shape[:-1], self.extra), 1e4)], dim=-1)


def test_logits_past_the_vocabulary_are_never_chosen(runs):
    run = runs["bytes"]
    tok = run.tokenizer
    prompt_ids, _ = encode_prompt(PROMPT, tok, run.context)
    padded = PaddedVocab(run.model)
    kw = dict(context=run.context, eot=tok.eot)
    greedy = list(generate(padded, prompt_ids, 40, vocab_size=tok.vocab_size, temperature=0, **kw))
    assert greedy == greedy_reference(run.model, prompt_ids, 40, run.context, tok.vocab_size, tok.eot)
    sampled = list(generate(padded, prompt_ids, 40, vocab_size=tok.vocab_size, generator=torch.Generator().manual_seed(0), **kw))
    assert len(sampled) == 40 and max(sampled) < tok.vocab_size
    # the check can fail: a too-large vocab_size lets the padded columns win
    unmasked = list(generate(padded, prompt_ids, 1, vocab_size=tok.vocab_size + 8, temperature=0, **kw))
    assert unmasked[0] >= tok.vocab_size


def test_end_of_text_stops_and_bad_logits_or_arguments_are_errors(runs):
    tok = runs["bytes"].tokenizer

    class Always(torch.nn.Module):
        def __init__(self, token, value=10.0):
            super().__init__()
            self.token, self.value = token, value

        def forward(self, idx):
            logits = torch.zeros(*idx.shape, tok.vocab_size)
            logits[..., self.token] = self.value
            return logits

    kw = dict(context=8, vocab_size=tok.vocab_size, eot=tok.eot, temperature=0)
    assert list(generate(Always(tok.eot), [65], 10, **kw)) == []
    assert list(generate(Always(66), [65], 10, **kw)) == [66] * 10
    with pytest.raises(BlagptError, match="non-finite logits at generated token 1"):
        list(generate(Always(66, float("nan")), [65], 3, **kw))
    for bad, msg in ((dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k")):
        args = {"max_new_tokens": 3, **kw, **bad}
        with pytest.raises(ValueError, match=msg):
            list(generate(Always(66), [65], **args))


def test_stream_decoder_joins_a_character_split_across_tokens():
    text = "héllo ✓"
    tok = get_tokenizer("bytes")
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.feed([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert pieces[:4] == ["h", "", "é", "l"] and pieces[-4:] == ["", "", "✓", ""]
    # decoding each token on its own (what the decoder avoids) garbles it
    naive = "".join(tok.decode([i]) for i in ids)
    assert naive != text and "\ufffd" in naive
    # a character cut short at the end is flushed as U+FFFD
    dec = StreamDecoder(tok)
    assert dec.feed(ids[:-2]) == "héllo " and dec.flush() == "\ufffd"


def test_stream_decoder_on_gpt2_byte_level_tokens():
    text = "héllo ✓ 日本語 naïve 🙂"
    tok = get_tokenizer("gpt2")
    ids = tok.encode(text)
    split = [i for i in ids if not _is_utf8(tok.decode_bytes([i]))]
    assert split  # some GPT-2 tokens end inside a character
    dec = StreamDecoder(tok)
    assert "".join(dec.feed([i]) for i in ids) + dec.flush() == text
    assert "".join(tok.decode([i]) for i in ids) != text


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stream_text_writes_each_piece_before_the_next_token():
    tok = get_tokenizer("bytes")
    events = []

    def ids():
        for i in tok.encode("aé✓b"):
            events.append(i)
            yield i

    assert stream_text(ids(), tok, events.append) == tok.encode("aé✓b")
    assert events == [97, "a", 0xC3, 0xA9, "é", 0xE2, 0x9C, 0x93, "✓", 98, "b"]


def test_prompt_is_cut_to_the_context_and_empty_starts_at_end_of_text():
    tok = get_tokenizer("bytes")
    assert encode_prompt("", tok, 32) == ([tok.eot], 0)
    assert encode_prompt("abcdef", tok, 4) == ([99, 100, 101, 102], 2)
    assert encode_prompt("abc", tok, 4) == ([97, 98, 99], 0)


def test_finding_a_run_names_the_option(out):
    with pytest.raises(BlagptError, match=r"^--resume nope: no run folder"):
        RunDir.find("nope", str(out))
    with pytest.raises(BlagptError, match=r"^--run nope: no run folder"):
        RunDir.find("nope", str(out), option="--run")
    assert RunDir.find("bytes", str(out)).path == out / "bytes"


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(BlagptError, match="^--device: 'cuda' requested but torch sees no CUDA device$"):
            resolve_device("cuda")
    with pytest.raises(BlagptError, match="^--device: expected auto, cpu or cuda, got 'tpu'$"):
        resolve_device("tpu")


def test_help_has_examples():
    res = CliRunner().invoke(cli, ["sample", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output and "blagpt sample --run" in res.output


def test_cli_prints_the_prompt_and_its_continuation(runs, out, tmp_path):
    run = runs["bytes"]
    greedy = sample_ids(run, n=40, temperature=0.0)
    proc = run_cli(["sample", "--run", "bytes", "--out-dir", str(out), "--prompt", PROMPT, "--tokens", "40",
                    "--temperature", "0", "--device", "cpu"], cwd=tmp_path, check=0)
    assert proc.stdout == PROMPT + run.tokenizer.decode(greedy) + "\n"
    assert "bytes: model tinylm at step 40, bytes tokens, on cpu" in proc.stderr

    # gpt2, by folder path, seeded sampling, a prompt longer than the context (cut, with a note)
    run = runs["gpt2"]
    prompt = "Now, fair Hippolyta, our nuptial hour draws on apace; four happy days bring in another moon: " * 2
    n_prompt = len(run.tokenizer.encode(prompt))
    assert n_prompt > run.context
    sampled = sample_ids(run, prompt=prompt, n=30, seed=5, top_k=50)
    proc = run_cli(["sample", "--run", str(out / "gpt2"), "--prompt", prompt, "--tokens", "30", "--temperature", "1",
                    "--top-k", "50", "--seed", "5", "--device", "cpu"], cwd=tmp_path, check=0)
    assert proc.stdout == prompt + run.tokenizer.decode(sampled) + "\n"
    assert f"the prompt is {n_prompt} tokens; keeping its last {run.context}" in proc.stderr


def test_cli_finds_a_run_by_its_mlflow_run_id(runs, out, tmp_path):
    other = tmp_path / "elsewhere"
    shutil.copytree(out / "bytes", other / "copied")
    meta = json.loads((other / "copied" / "run.json").read_text())
    (other / "copied" / "run.json").write_text(json.dumps({**meta, "mlflow_run_id": "0123abcd4567"}))
    greedy = sample_ids(runs["bytes"], prompt="", n=12, temperature=0.0)
    proc = run_cli(["sample", "--run", "0123abcd4567", "--out-dir", str(other), "--tokens", "12", "--temperature", "0",
                    "--device", "cpu"], cwd=tmp_path, check=0)
    assert proc.stdout == runs["bytes"].tokenizer.decode(greedy) + "\n"
    assert proc.stderr.startswith("copied: model tinylm")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "nope"], "error: --run nope: no run folder, run name under"),
        (["--run", "empty"], "error: --run empty: "),
        (["--run", "bytes", "--tokens", "0"], "error: --tokens: expected an integer >= 1, got 0"),
        (["--run", "bytes", "--temperature", "-0.5"], "error: --temperature: expected a finite number >= 0, got -0.5"),
        (["--run", "bytes", "--top-k", "0"], "error: --top-k: expected an integer >= 1, got 0"),
    ],
    ids=["unknown-run", "no-checkpoint", "tokens", "temperature", "top-k"],
)
def test_bad_input_is_one_line_naming_the_option(out, tmp_path, args, message):
    runs_dir = tmp_path / "runs"
    shutil.copytree(out / "bytes", runs_dir / "bytes")
    (runs_dir / "empty").mkdir()
    (runs_dir / "empty" / "run.json").write_text("{}")
    proc = run_cli(["sample", *args, "--out-dir", str(runs_dir), "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    if args == ["--run", "empty"]:
        assert "has no checkpoint.pt" in lines[0]


# -- the decoding cache ---------------------------------------------------------------------------


class CacheRecorder(torch.nn.Module):
    """Passes calls (and ``init_cache``) through to ``inner`` and keeps each input's length and
    whether it went through the cache; ``refuse``: init_cache says None (a config it cannot cache)."""

    def __init__(self, inner, refuse=False):
        super().__init__()
        self.inner, self.refuse, self.calls = inner, refuse, []

    def init_cache(self, batch_size):
        return None if self.refuse else self.inner.init_cache(batch_size)

    def forward(self, idx, cache=None):
        self.calls.append((idx.shape[1], cache is not None))
        return self.inner(idx) if cache is None else self.inner(idx, cache=cache)


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_cached_sampling_gives_the_tokens_of_the_full_forward_as_the_window_slides(runs, name):
    run = runs[name]
    tok = run.tokenizer
    model = perturbed(run.model, seed=2)
    prompt_ids, _ = encode_prompt(PROMPT, tok, run.context)
    n = 3 * run.context
    kw = dict(context=run.context, vocab_size=tok.vocab_size, eot=tok.eot)
    for extra in (dict(temperature=0.0), dict(temperature=1.0, top_k=20)):
        full = list(generate(model, prompt_ids, n, generator=torch.Generator().manual_seed(4), use_cache=False, **kw, **extra))
        rec = CacheRecorder(model)
        cached = list(generate(rec, prompt_ids, n, generator=torch.Generator().manual_seed(4), **kw, **extra))
        assert len(full) == n and len(set(full)) > 10
        assert cached == full
        # prefill the prompt, one id per step until the window is full; from then on the window
        # moves past what the cache holds at every step, which prefills the whole window anew
        assert all(through_cache for _, through_cache in rec.calls)
        P, C = len(prompt_ids), run.context
        assert [length for length, _ in rec.calls] == [P] + [1] * (C - P) + [C] * (n - (C - P + 1))


def test_a_model_without_a_cache_for_its_config_runs_the_full_forward(runs):
    run = runs["bytes"]
    prompt_ids, _ = encode_prompt(PROMPT, run.tokenizer, run.context)
    kw = dict(context=run.context, vocab_size=run.tokenizer.vocab_size, eot=run.tokenizer.eot, temperature=0.0)
    refusing = CacheRecorder(run.model, refuse=True)
    assert list(generate(refusing, prompt_ids, 20, **kw)) == list(generate(run.model, prompt_ids, 20, use_cache=False, **kw))
    assert all(not c and n == min(len(prompt_ids) + i, run.context) for i, (n, c) in enumerate(refusing.calls))
    off = CacheRecorder(run.model)
    list(generate(off, prompt_ids, 5, use_cache=False, **kw))
    assert not any(c for _, c in off.calls)


def test_cli_no_cache_prints_the_same_text(runs, out, tmp_path):
    args = ["sample", "--run", "bytes", "--out-dir", str(out), "--prompt", PROMPT, "--tokens", "60", "--temperature", "1",
            "--seed", "3", "--device", "cpu"]
    cached = run_cli(args, cwd=tmp_path, check=0)
    full = run_cli([*args, "--no-cache"], cwd=tmp_path, check=0)
    assert cached.stdout == full.stdout and len(cached.stdout) > len(PROMPT) + 30
    assert cached.stderr.strip().endswith("on cpu, decoding cache")
    assert full.stderr.strip().endswith("on cpu, full forward per token")
