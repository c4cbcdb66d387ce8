"""blagpt optimizers built on heavyball: ``soap``, ``ademamix``, ``adopt`` and ``muon``.

One file per optimizer (its pydantic config, the paper, how it is built); :mod:`.groups` holds
Muon's split of hidden matrices from embeddings, heads, norms and biases. The others use
``blagpt.param_groups`` (no weight decay on 1-D parameters and embeddings).

Compilation: heavyball torch.compiles its kernels on first use by default, which costs about a
minute per process on a CPU. Here it follows the run's ``train.compile`` (``ctx.compile``):
``heavyball.utils.compile_mode`` is set to ``None`` (eager kernels) unless the run compiles, and
back to heavyball's own mode when it does on CUDA (``max-autotune-no-cudagraphs``). On a CPU a
compiling run uses inductor's ``default`` mode: autotuning benchmarks every matmul variant there
(SOAP's kernels took 304 s to compile instead of 71 s, for kernels no faster). The setting is process-wide, and every build logs
which one it chose (logger ``blagpt_plugin_optimizers``, level INFO).

Learning-rate schedule: the trainer rewrites each param group's ``lr`` every step. heavyball
supports this with ``multi_tensor=True`` (used here) but warns once that it is "experimental";
that one warning is filtered, because the per-step change is how blagpt's schedule works.

heavyball is imported when an optimizer is built, not when the plugin registers (it adds ~2 s).
"""

from __future__ import annotations

import logging
import warnings

from blagpt import hookimpl, OptimizerSpec

from . import ademamix, adopt, muon, soap

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "soap": (soap, soap.SoapConfig, "SOAP: Adam in Shampoo's eigenbasis, PaLM beta2 schedule (heavyball)"),
    "ademamix": (ademamix, ademamix.AdEMAMixConfig, "AdEMAMix: Adam with a fast and a slow momentum, warmed up (heavyball)"),
    "adopt": (adopt, adopt.AdoptConfig, "ADOPT with update clipping: safe with zero first gradients (heavyball)"),
    "muon": (muon, muon.MuonConfig, "Muon on hidden matrices, AdamW on embeddings, head, norms, biases (heavyball)"),
}

_HEAVYBALL_COMPILE_MODE: list = []  # heavyball's own default, read once before we first change it


def configure_heavyball(compile: bool, device: str = "cuda") -> None:
    """Point heavyball's kernel compilation at the run's ``train.compile`` (and its device) and say so."""
    import heavyball.utils

    if not _HEAVYBALL_COMPILE_MODE:
        _HEAVYBALL_COMPILE_MODE.append(heavyball.utils.compile_mode)
    # re-added on every build (a duplicate replaces itself): test runners reset filters per test
    warnings.filterwarnings("ignore", message="Learning rate changed between steps", module=r"heavyball\.utils")
    mode = None if not compile else _HEAVYBALL_COMPILE_MODE[0] if device.startswith("cuda") else "default"
    heavyball.utils.compile_mode = mode
    if compile:
        log.info("heavyball kernels will be torch.compiled (mode %r) because train.compile is on", mode)
    else:
        log.info("heavyball kernels run eagerly (heavyball.utils.compile_mode = None) because train.compile is off")


@hookimpl
def register_optimizers(register):
    for name, (_, config, description) in OPTIMIZERS.items():
        # supports_compile: heavyball compiles its kernels when the run compiles (see above)
        register(OptimizerSpec(name, config, description, supports_compile=True))


@hookimpl
def build_optimizer(name, model, config, ctx):
    if name not in OPTIMIZERS:
        return None
    configure_heavyball(ctx.compile, ctx.device)
    module = OPTIMIZERS[name][0]
    return module.build(model, config, ctx)
