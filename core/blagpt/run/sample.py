"""Text from a trained run: load its checkpoint, generate token ids, decode them as they come.

:func:`load_run` rebuilds a run's model from the config saved in its ``checkpoint.pt`` (loaded
weights-only) through the ``build_model`` hook and loads the weights; :func:`load_model` does the
same for a run or an export folder (``blagpt export``), the one entry point for commands that need
a trained model and its tokenizer. :func:`generate` samples one token at a time: through the
model's decoding cache when it offers one (``init_cache`` and ``forward(idx, cache=cache)``, see
docs/plugins.md), otherwise with the full forward on the last ``context`` tokens at every step.
:class:`StreamDecoder` turns token ids into text as
they arrive, holding back the bytes of a UTF-8 character that a token ends in the middle of (every
byte token does that for non-ASCII text, and so do some GPT-2 byte-level BPE tokens).
:func:`stream_text` joins the two for the ``blagpt sample`` command.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..data.tokenizers import Tokenizer, get_tokenizer
from ..errors import BlagptError, ConfigError
from ..plugin.registry import Registry, get_registry
from ..plugin.specs import BuildContext


@dataclass
class LoadedRun:
    """A run's model ready to sample from.

    Attributes:
        model: the rebuilt model with the checkpoint's weights, in eval mode, on ``device``.
        tokenizer: the tokenizer the run trained with.
        context: the longest input the model was trained on (``train.seq_len``).
        run_dir: the run folder (the export folder for a model loaded from ``blagpt export``).
        step: the optimizer step the checkpoint was written at (for an export: its source's).
        config: the run's resolved config.
        device: where the model lives.
        autocast_bf16: whether the run trained under bf16 autocast on this device type (sampling
            then uses it too).
    """

    model: torch.nn.Module
    tokenizer: Tokenizer
    context: int
    run_dir: Path
    step: int
    config: Any
    device: torch.device
    autocast_bf16: bool = False


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else CPU), ``cpu`` or ``cuda``; ``--device`` errors."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device: 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda")
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device: expected auto, cpu or cuda, got {device!r}")


def load_run(
    ref: str, out_dir: str = "runs", device: str = "auto", registry: Registry | None = None, option: str = "--run"
) -> LoadedRun:
    """Rebuild the model of run ``ref`` (a folder, a run name under ``out_dir``, or an MLflow run id).

    Errors (one line, naming ``option``): no such run, no checkpoint in it, a saved config the
    installed plugins cannot resolve, weights that do not fit the rebuilt model.
    """
    from ..config import resolve
    from .checkpoint import model_weights
    from .rundir import RunDir

    registry = registry or get_registry()
    dev = resolve_device(device)
    run = RunDir.find(ref, out_dir, option=option)
    if run.kind != "train":
        raise BlagptError(f"{option} {ref}: {run.path} is a {run.kind}'s folder; give one of its runs (blagpt runs lists them)")
    run_dir, path = run.path, run.checkpoint_file
    if not run.has_checkpoint:
        raise BlagptError(f"{option} {ref}: {run_dir} has no {path.name} (a run writes it at its checkpoint interval and at the end)")
    state = run.load_checkpoint()
    try:
        cfg = resolve(state["config"], registry)
    except ConfigError as e:
        raise BlagptError(f"{option} {ref}: {path}: its saved config does not resolve with the installed plugins: {e}") from None
    if cfg.on_task:  # its vocabulary is the task's token ids, not text: nothing to sample, score as text or export
        raise BlagptError(f"{option} {ref}: {run_dir} trained on task {cfg.task.name!r}, not on text; sample, eval and export take "
                          "language-modelling runs")
    tok_name = cfg.tokenizer_name(registry)
    tokenizer = get_tokenizer(tok_name, registry)
    ctx = BuildContext(tokenizer.vocab_size, cfg.train.seq_len, tok_name, compile=False, device=str(dev))
    model = registry.build_model(cfg.model, ctx)
    try:
        model.load_state_dict(model_weights(state))
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise BlagptError(f"{option} {ref}: {path}: weights do not fit model {cfg.model.name!r}: {first}") from None
    model.to(dev).eval()
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and dev.type == "cuda")
    return LoadedRun(model, tokenizer, cfg.train.seq_len, run_dir, int(state["step"]), cfg, dev, bf16)


def load_model(
    run: str | None = None,
    weights: str | None = None,
    out_dir: str = "runs",
    device: str = "auto",
    registry: Registry | None = None,
) -> LoadedRun:
    """A trained model and its tokenizer, from a run (``run``: as :func:`load_run` takes it) or
    from an export folder (``weights``: what ``blagpt export`` wrote); exactly one of the two.
    Errors are one line naming ``--run`` or ``--weights``."""
    if (run is None) == (weights is None):
        raise ConfigError("give either --run RUN or --weights DIR (an export folder), not both or neither")
    if weights is not None:
        from .export import load_export

        return load_export(weights, device, registry)
    return load_run(run, out_dir, device, registry)


def decoding_cache(model: torch.nn.Module, batch_size: int = 1) -> Any | None:
    """A fresh decoding cache of ``model`` (its optional ``init_cache(batch_size)``), or None when
    the model offers none or its config cannot decode incrementally (``init_cache`` says None)."""
    init = getattr(model, "init_cache", None)
    return init(batch_size) if callable(init) else None


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    context: int,
    vocab_size: int,
    eot: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    autocast_bf16: bool = False,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids continuing ``prompt``, one at a time.

    Each step reads the logits of the last position of the model run on the last ``context`` ids
    (prompt and generated ones); logits of ids ``>= vocab_size`` (a model's padded vocabulary)
    are never chosen. With ``use_cache`` and a model that offers a decoding cache
    (:func:`decoding_cache`), the window is prefilled once and each new id is fed alone; when the
    window is full (``context`` ids), the next step starts a new cache and prefills the last
    ``context`` ids, so every step sees the same window as without the cache, whose logits the
    conformance kit holds equal to 1e-5. Without a cache (or ``use_cache=False``) each step runs
    the full forward on the window. ``temperature == 0`` picks the argmax; otherwise the logits are divided by
    ``temperature``, cut to the ``top_k`` largest (if given) and one id is drawn with
    ``generator`` (on ``device``), so a seeded generator gives the same ids every time. Sampling
    stops early, without yielding it, when ``eot`` is chosen.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not prompt:
        raise ValueError("prompt must hold at least one token id (e.g. the end-of-text id)")
    device = torch.device(device)
    ids = torch.tensor(list(prompt), dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16)
    cached = use_cache and callable(getattr(model, "init_cache", None))
    cache, filled = None, 0  # filled: ids the cache holds (0: prefill the window next)
    for i in range(max_new_tokens):
        with autocast:
            if cached and filled == 0:
                cache = decoding_cache(model)
                cached = cache is not None
            if not cached:
                logits = model(ids[-context:][None])
            elif filled == 0:
                window = ids[-context:]
                logits = model(window[None], cache=cache)
                filled = len(window)
            else:
                logits = model(ids[-1:][None], cache=cache)
                filled += 1
        if logits.dim() != 3 or logits.shape[-1] < vocab_size:
            raise BlagptError(f"model returned logits of shape {tuple(logits.shape)}; expected (1, T, >= {vocab_size})")
        last = logits[0, -1, :vocab_size].float()
        if not torch.isfinite(last).all():
            raise BlagptError(f"model returned non-finite logits at generated token {i + 1}")
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if top_k is not None and top_k < vocab_size:
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))
            probs = torch.softmax(last, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if eot is not None and nxt == eot:
            return
        yield nxt
        ids = torch.cat([ids[-context:], ids.new_tensor([nxt])])
        if filled >= context:  # the window moves past what the cache holds: prefill it anew
            filled = 0


class StreamDecoder:
    """Token ids in, text out as soon as it is complete UTF-8.

    ``feed(ids)`` returns the text the ids finish (possibly ``""`` while a character's bytes are
    still arriving); ``flush()`` returns what is left, an unfinished character as U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(self._tokenizer.decode_bytes(list(ids)))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def stream_text(ids: Iterable[int], tokenizer: Tokenizer, write: Callable[[str], Any]) -> list[int]:
    """Decode ``ids`` as they arrive and ``write`` each piece of text before taking the next id.

    Returns the ids consumed.
    """
    decoder = StreamDecoder(tokenizer)
    seen = []
    for i in ids:
        seen.append(i)
        text = decoder.feed([i])
        if text:
            write(text)
    tail = decoder.flush()
    if tail:
        write(tail)
    return seen


def encode_prompt(prompt: str, tokenizer: Tokenizer, context: int) -> tuple[list[int], int]:
    """The prompt's ids, cut to its last ``context`` ids; an empty prompt is the end-of-text id.

    Returns (ids, number of ids cut off the front).
    """
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot]
    cut = max(0, len(ids) - context)
    return ids[cut:], cut
