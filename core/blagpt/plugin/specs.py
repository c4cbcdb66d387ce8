"""The value types that cross the plugin boundary.

Plugins import these from ``blagpt`` (never from this module path): ``ModelSpec`` and
``OptimizerSpec`` (and ``TaskSpec``, ``TokenizerSpec``) describe what a plugin offers without
building anything; ``ModelConfig``, ``OptimizerConfig`` and ``TaskConfig`` are the pydantic bases
of every plugin's config; ``BuildContext``, ``Batch`` and ``LossOutput`` are what the trainer
passes to and receives from the hooks; a task's ``build`` returns a :class:`Task`, whose splits
are :class:`TaskSequences`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch stays out of `blagpt --help`
    import torch

ANY_TOKENIZER = "any"  # in ModelSpec.tokenizers: every registered tokenizer is accepted


class ModelConfig(BaseModel):
    """Base of every model plugin's config (the ``model`` section of a run).

    Subclasses add their own fields, each with a ``Field(description=...)``. Unknown fields are
    rejected, so a misspelled option is an error instead of a silent default.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    name: str = Field(description="Registered model name, e.g. `blagpt`.")
    preset: str | None = Field(
        default=None,
        description="Preset(s) of the model's plugin applied before explicit fields; "
        "join several with '+', e.g. `gpt2+tiny`.",
    )


class OptimizerConfig(BaseModel):
    """Base of every optimizer plugin's config (the ``optimizer`` section of a run).

    ``lr`` is the peak learning rate; the trainer's schedule scales every param group's ``lr``
    by the same factor each step (warmup, then decay).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(default="adamw", description="Registered optimizer name, e.g. `adamw`.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(
        default=0.1, ge=0, description="Decoupled weight decay for 2-D weight matrices."
    )


class TaskConfig(BaseModel):
    """Base of every task's config (the ``task`` section of a run).

    The default task ``lm`` is language modelling on the run's ``data`` (shards or the embedded
    corpus). Any other task generates its own sequences (see :class:`TaskSpec`); its config class
    adds the task's fields (sizes, vocabulary, its data seed), each with a ``Field(description=...)``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(default="lm", description="Registered task name: `lm` (language modelling on `data`), `mqar`, a plugin's.")


@dataclass
class TaskSequences:
    """One split of a task: ``tokens`` (N, T+1) int64 and ``mask`` (N, T) bool, True at the
    targets (``tokens[:, 1:]``) that are answers: only those are trained on and scored."""

    tokens: "torch.Tensor"
    mask: "torch.Tensor"


class Task:
    """What a :class:`TaskSpec`'s ``build(config)`` returns: a vocabulary and its splits.

    Subclasses set ``vocab_size`` (token ids are ``0 .. vocab_size - 1``) and implement
    :meth:`sequences`. Every split must be a pure function of the task's config (its own seed
    included), ``split`` and ``seq_len``: every model and every training seed then sees the
    same ``test`` sequences.
    """

    vocab_size: int

    def sequences(self, split: str, seq_len: int) -> TaskSequences:
        """``split``: ``train`` (the training set), ``test`` (the reported evaluation) or ``tune``
        (held out for choosing hyperparameters: generated from another seed than ``test``).
        Each row holds ``seq_len + 1`` tokens and at least one answer. Raise ``ValueError`` with a
        message naming the config field when the task does not fit ``seq_len``."""
        raise NotImplementedError


@dataclass(frozen=True)
class TaskSpec:
    """What a task plugin registers (``register_tasks``): a data source plus a metric.

    Attributes:
        name: the task's name in ``task.name`` and ``--task``.
        config: the pydantic config class (a ``TaskConfig`` subclass) typing the ``task`` section.
        description: one line shown by ``blagpt list``.
        build: ``build(config) -> Task``; called once per run (cheap: the splits are generated when
            asked for). ``None`` only for the core's ``lm`` task, which reads the run's ``data``.

    Under a task other than ``lm`` the model is built with the task's vocabulary, trained on the
    masked mean of ``compute_loss``'s per-target ``nll`` over the answer positions (a plugin's
    extra training objective does not apply), and evaluated on the task's fixed test split:
    ``val/loss`` (nats per answer) and ``val/accuracy`` (argmax of the logits at answer
    positions equals the answer).
    """

    name: str
    config: type[TaskConfig]
    description: str
    build: Callable[[TaskConfig], Task] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and issubclass(self.config, TaskConfig)):
            raise TypeError(f"TaskSpec {self.name!r}: config must subclass blagpt.TaskConfig")
        if self.build is None and self.name != "lm":
            raise ValueError(f"TaskSpec {self.name!r}: build is required (only the core's `lm` task has none)")
        if self.build is not None and not callable(self.build):
            raise TypeError(f"TaskSpec {self.name!r}: build must be callable")


@dataclass(frozen=True)
class ModelSpec:
    """What a model plugin registers: enough to list, configure and validate, nothing built.

    Attributes:
        name: lower-case model name used in ``--model`` and ``model.name``.
        config: the pydantic config class (a ``ModelConfig`` subclass).
        description: one line shown by ``blagpt list``.
        tokenizers: tokenizers the model trains with, the first is the default; ``data.tokenizer``
            picks another. Names of registered tokenizers (``"gpt2"``, ``"bytes"``, a plugin's);
            ``"any"`` (:data:`ANY_TOKENIZER`) accepts every tokenizer, local vocabulary files
            (``hf:PATH``, ``tiktoken:PATH``) included: a model that only needs ``ctx.vocab_size``
            should list it.
        presets: named partial configs (field -> value); ``model.preset`` applies them in order.
        supports_compile: whether ``torch.compile`` of the model is supported (forward and
            backward agree with eager). ``False``: a run with ``train.compile=true`` is refused
            with a config error naming ``train.compile``. The conformance kit
            (``blagpt.testing``) checks whichever is declared.
    """

    name: str
    config: type[ModelConfig]
    description: str
    tokenizers: tuple[str, ...] = ("gpt2",)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    supports_compile: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.tokenizers, str):
            object.__setattr__(self, "tokenizers", (self.tokenizers,))
        if not self.tokenizers or not all(isinstance(t, str) and t for t in self.tokenizers):
            raise ValueError(f"ModelSpec {self.name!r}: tokenizers must be a non-empty tuple of names, got {self.tokenizers}")
        if self.tokenizers[0] == ANY_TOKENIZER:
            raise ValueError(f"ModelSpec {self.name!r}: the first tokenizer is the default and must be a name, not {ANY_TOKENIZER!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, ModelConfig)):
            raise TypeError(f"ModelSpec {self.name!r}: config must subclass blagpt.ModelConfig")


    def accepts(self, tokenizer: str) -> bool:
        """Whether a run of this model may use the tokenizer reference ``tokenizer``."""
        return ANY_TOKENIZER in self.tokenizers or tokenizer in self.tokenizers


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer plugin registers (``register_tokenizers``).

    Attributes:
        name: the tokenizer's name in ``data.tokenizer`` and ``data prepare --tokenizer``.
        description: one line shown by ``blagpt list``.
        load: called with the reference's argument (the part after ``name:``, or ``None``) and
            returns a :class:`blagpt.Tokenizer`: ``vocab_size``, ``eot``, ``encode``,
            ``decode_bytes``, ``token_bytes`` (the UTF-8 bytes each id stands for, which bits per
            byte need) and ``digest``. Called once per reference and process; may be slow (it reads
            the vocabulary), so ``blagpt list`` never calls it.
        argument: what the argument is (e.g. ``"PATH to tokenizer.json"``) when the tokenizer
            takes one (``hf:PATH``); ``None``: it takes none.
    """

    name: str
    description: str
    load: Callable[[str | None], Any]
    argument: str | None = None

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name or self.name == ANY_TOKENIZER:
            raise ValueError(f"TokenizerSpec {self.name!r}: a name without ':' other than {ANY_TOKENIZER!r}")
        if not callable(self.load):
            raise TypeError(f"TokenizerSpec {self.name!r}: load must be callable")


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer plugin registers.

    Attributes:
        name: lower-case optimizer name used in ``--optimizer`` and ``optimizer.name``.
        config: the pydantic config class (an ``OptimizerConfig`` subclass).
        description: one line shown by ``blagpt list``.
        supports_compile: whether the optimizer compiles its own kernels when the run compiles
            (``BuildContext.compile``, from ``train.compile``). ``False`` (the default): it ignores
            the flag, and a compiled run trains with its eager kernels. The conformance kit
            (``blagpt.testing``) checks whichever is declared.
    """

    name: str
    config: type[OptimizerConfig]
    description: str
    supports_compile: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and issubclass(self.config, OptimizerConfig)):
            raise TypeError(f"OptimizerSpec {self.name!r}: config must subclass blagpt.OptimizerConfig")


@dataclass(frozen=True)
class BuildContext:
    """Facts of the run a model needs to be built, which are not the model's own config.

    Attributes:
        vocab_size: number of token ids the tokenizer produces (50257 for gpt2, 257 for bytes);
            a model may pad its embedding beyond this, never below.
        max_seq_len: the longest input the trainer will feed (``train.seq_len``).
        tokenizer: the run's tokenizer reference (``"gpt2"``, ``"bytes"``, ``"hf:PATH"``, ...).
        compile: whether the run asked for torch.compile (``train.compile``); optimizers use it
            to decide whether to compile their own kernels.
        device: the ``torch.device`` string the run trains on.
        total_steps: optimizer steps the run will take (for optimizers whose schedules span the
            run, e.g. AdEMAMix's warmups); ``None`` outside a training run.
    """

    vocab_size: int
    max_seq_len: int
    tokenizer: str
    compile: bool = False
    device: str = "cpu"
    total_steps: int | None = None


@dataclass
class Batch:
    """One micro-batch: ``tokens`` is (B, T+1) int64; inputs and targets are views of it.

    ``mask``: under a task other than ``lm``, the (B, T) bool mask of the answer targets (the
    trainer takes the masked mean of ``LossOutput.nll`` itself); ``None`` for language modelling."""

    tokens: "torch.Tensor"
    mask: "torch.Tensor | None" = None

    @property
    def inputs(self) -> "torch.Tensor":
        return self.tokens[:, :-1]

    @property
    def targets(self) -> "torch.Tensor":
        return self.tokens[:, 1:]


@dataclass
class LossOutput:
    """What ``compute_loss`` returns.

    Attributes:
        loss: scalar tensor, the training objective that is back-propagated.
        nll: (B, T) tensor of next-token negative log-likelihoods in nats, one per target of
            ``batch.targets``. Validation loss and bits per byte are computed from it alone, so
            every model is compared on the same quantity whatever its training objective.
        metrics: extra scalars to log, floats or 0-d tensors (e.g. each multi-token-prediction
            head's loss); tensors are read only at logging steps, so returning them costs no sync.
    """

    loss: "torch.Tensor"
    nll: "torch.Tensor"
    metrics: dict[str, Any] = field(default_factory=dict)
