"""The plugin contract: every hook a blagpt plugin may implement.

A plugin is a module (or object) whose functions are decorated with ``blagpt.hookimpl`` and whose
names match the specs below; it is found through the entry-point group ``blagpt``::

    [project.entry-points.blagpt]
    rene = "blagpt_plugin_rene"

Hook functions may accept any subset of the arguments a spec names, in any order (pluggy matches
them by name), so a spec can grow new arguments without breaking existing plugins.

"firstresult" hooks stop at the first implementation that returns something other than ``None``:
implementations are called newest-registered first, ``tryfirst``/``trylast`` reorder them. A
plugin must therefore return ``None`` for names it does not own.

The core reaches these hooks only through the typed wrappers in ``blagpt.plugin.registry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import torch

    from .specs import (
        Batch,
        BuildContext,
        LossOutput,
        ModelConfig,
        ModelSpec,
        OptimizerConfig,
        OptimizerSpec,
        TaskSpec,
        TokenizerSpec,
    )

hookspec = pluggy.HookspecMarker("blagpt")
hookimpl = pluggy.HookimplMarker("blagpt")


@hookspec
def register_models(register: Callable[["ModelSpec"], None]) -> None:
    """Register the models this plugin provides.

    Called once for every plugin when the plugin manager starts. Must be cheap: declare, do not
    build (``blagpt list`` and config validation run on these declarations alone).

    :param register: call it once per model with a :class:`blagpt.ModelSpec`
        (name, pydantic config class, one-line description, tokenizers, presets, and whether
        ``torch.compile`` works on it: ``supports_compile``).
        Registering a name another plugin already registered is an error naming both
        distributions.
    :return: nothing (the return value is ignored).

    Not firstresult: every plugin's implementation is called, each in isolation (one that raises
    is reported by ``blagpt plugins`` and left out; the others still register).

    Example::

        @hookimpl
        def register_models(register):
            register(ModelSpec("rene", ReneConfig, "Mamba-2 + sliding-window attention hybrid"))
    """


@hookspec
def register_optimizers(register: Callable[["OptimizerSpec"], None]) -> None:
    """Register the optimizers this plugin provides.

    :param register: call it once per optimizer with a :class:`blagpt.OptimizerSpec`
        (name, pydantic config class, one-line description, and ``supports_compile``: whether it
        compiles its own kernels when the run compiles).
    :return: nothing (the return value is ignored).

    Not firstresult: every plugin's implementation is called, each in isolation.

    Example::

        @hookimpl
        def register_optimizers(register):
            register(OptimizerSpec("soap", SoapConfig, "SOAP: Adam in Shampoo's eigenbasis"))
    """


@hookspec
def register_tokenizers(register: Callable[["TokenizerSpec"], None]) -> None:
    """Register the tokenizers this plugin provides.

    :param register: call it once per tokenizer with a :class:`blagpt.TokenizerSpec` (name,
        one-line description, ``load(argument) -> blagpt.Tokenizer``, and ``argument`` when the
        tokenizer is named with one, as ``hf:PATH`` is). Registering a name another plugin already
        registered is an error naming both distributions.
    :return: nothing (the return value is ignored).

    Not firstresult: every plugin's implementation is called, each in isolation. Must be cheap:
    declare, do not load a vocabulary (``load`` is called when a run or ``data prepare`` needs it).
    The conformance kit checks a tokenizer (``blagpt.testing.TokenizerTarget``): text of mixed
    scripts and emoji round-trips, and token byte counts sum to the text's UTF-8 length.

    Example::

        @hookimpl
        def register_tokenizers(register):
            register(TokenizerSpec("unigram8k", "8k-piece unigram LM", load=lambda arg: Unigram8k()))
    """


@hookspec
def register_tasks(register: Callable[["TaskSpec"], None]) -> None:
    """Register the tasks this plugin provides (a data source plus a metric, e.g. a recall probe).

    :param register: call it once per task with a :class:`blagpt.TaskSpec` (name, pydantic config
        class typing the run's ``task`` section, one-line description, ``build(config) ->
        blagpt.Task``). Registering a name another plugin already registered is an error naming
        both distributions.
    :return: nothing (the return value is ignored).

    Not firstresult: every plugin's implementation is called, each in isolation. Must be cheap:
    ``build`` is called when a run needs the task, and generation happens in ``Task.sequences``.
    A task's splits are deterministic for its config (which carries its own data seed), so every
    model and training seed is scored on the same test sequences; the core ships ``lm`` (the
    default) and ``mqar``.

    Example::

        @hookimpl
        def register_tasks(register):
            register(TaskSpec("copy", CopyConfig, "selective copying", build=lambda cfg: CopyTask(cfg)))
    """


@hookspec(firstresult=True)
def build_model(name: str, config: "ModelConfig", ctx: "BuildContext") -> "torch.nn.Module | None":
    """Build the model registered as ``name``; return ``None`` for names this plugin does not own.

    :param name: the registered model name (``config.name``).
    :param config: a validated instance of the config class the plugin registered for ``name``,
        presets already applied.
    :param ctx: run facts the model needs: ``vocab_size``, ``max_seq_len``, ``tokenizer``.
    :return: an ``nn.Module`` on the CPU in fp32 (the trainer moves and wraps it), whose
        ``forward(idx)`` maps (B, T) int64 token ids, for any T <= ``ctx.max_seq_len``, to (B, T, V)
        next-token logits with V >= ``ctx.vocab_size``, and which is causal: outputs at position t
        depend only on tokens <= t. Optionally the module has ``flops_per_token(seq_len) -> float``
        (forward + backward FLOPs per trained token), used for MFU and iso-FLOP budgets, and
        incremental decoding: ``init_cache(batch_size)`` (an empty cache, or ``None`` when the config
        cannot decode incrementally) with ``forward(idx, cache=cache)`` continuing the cached tokens
        and giving the logits the full forward would (``blagpt sample`` uses it; docs/plugins.md),
        and ``state_size_bytes(seq_len) -> int | None``: bytes of state one sequence carries at
        inference after ``seq_len`` tokens (a recurrent state, a KV cache), which recall
        benchmarks plot accuracy against (``blagpt bench --task mqar --sweep``).

    firstresult: the first non-``None`` result is used.
    """


@hookspec(firstresult=True)
def build_optimizer(
    name: str, model: "torch.nn.Module", config: "OptimizerConfig", ctx: "BuildContext"
) -> "torch.optim.Optimizer | None":
    """Build the optimizer registered as ``name`` over ``model``'s parameters.

    :param name: the registered optimizer name (``config.name``).
    :param model: the unwrapped model (its parameters already on the run's device).
    :param config: a validated instance of the config class registered for ``name``.
    :param ctx: run facts (``ctx.compile`` says whether the run compiles; an optimizer that can
        compile its own kernels should follow it).
    :return: a ``torch.optim.Optimizer``; every param group's ``lr`` is its peak learning rate,
        which the trainer's schedule multiplies each step. Param groups should exclude 1-D
        parameters (norms, biases), embeddings and the names the model's optional
        ``no_weight_decay()`` returns from weight decay (``blagpt.param_groups`` does this), unless
        the optimizer says otherwise. ``None`` for names this plugin does not own.

    firstresult: the first non-``None`` result is used.
    """


@hookspec(firstresult=True)
def compute_loss(
    name: str, model: "torch.nn.Module", batch: "Batch", config: "ModelConfig"
) -> "LossOutput | None":
    """Compute the training loss of one micro-batch.

    :param name: the registered model name of the run.
    :param model: the model as trained (possibly wrapped in DDP or compiled: call it, do not
        reach into its attributes).
    :param batch: a :class:`blagpt.Batch` with ``tokens`` (B, T+1); ``inputs``/``targets`` views.
    :param config: the model's validated config.
    :return: a :class:`blagpt.LossOutput` with the scalar ``loss`` to back-propagate and the
        (B, T) per-target next-token ``nll`` in nats (the core's validation loss and bits per
        byte come from it), or ``None`` to let another implementation handle it.

    firstresult: the core's default, next-token cross-entropy on ``model(batch.inputs)``, is
    registered ``trylast``; a plugin whose model has its own objective (multi-token prediction,
    patch models) implements this hook for its own ``name`` and returns ``None`` otherwise.
    """


def _hook_names() -> list[str]:
    return [k for k, v in globals().items() if callable(v) and hasattr(v, "blagpt_spec")]


HOOK_NAMES: tuple[str, ...] = tuple(_hook_names())
__all__ = ["hookimpl", "hookspec", "HOOK_NAMES"]
