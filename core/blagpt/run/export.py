"""``blagpt export``: a trained run as a folder that rebuilds its model anywhere the plugin is.

An export folder holds

- ``model.safetensors``: the weights (safetensors: tensors only, no pickled code; tensors a model
  shares, such as tied embeddings, are stored once);
- ``config.yaml``: the run's resolved config (the model section rebuilds the model);
- ``export.json``: what rebuilding needs besides: the model name, the plugin distribution and
  version that registered it, the tokenizer (reference, vocabulary size, digest), the context
  length (``train.seq_len``), and where the weights came from (run, step, MLflow run id).

:func:`export_run` writes it atomically: into a temp folder beside ``out``, renamed into place
at the end, so an interrupted export leaves no half folder. :func:`load_export` reads it back
(``blagpt sample --weights DIR``), refusing in one line a missing or different plugin version,
another tokenizer, or weights that do not fit. safetensors is the optional extra ``export``
(``pip install 'blagpt[export]'``), imported only here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BlagptError

if TYPE_CHECKING:
    from ..plugin.registry import Registry
    from .sample import LoadedRun

FORMAT = 1
EXPORT_FILE = "export.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def _safetensors(option: str):
    try:
        import safetensors.torch as st
    except ImportError:
        raise BlagptError(f"{option}: exports are safetensors files; install the extra: pip install 'blagpt[export]'") from None
    return st


def export_run(ref: str, out: str | Path, out_dir: str = "runs", force: bool = False, registry: "Registry | None" = None) -> Path:
    """Write run ``ref``'s checkpoint weights, config and provenance to the folder ``out``.

    A non-empty ``out`` is refused unless ``force`` (then replaced as a whole, only once the new
    export is complete). Returns ``out``.
    """
    from .. import __version__
    from ..plugin.registry import get_registry
    from .sample import load_run

    st = _safetensors("--out")
    registry = registry or get_registry()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BlagptError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BlagptError(f"--out {out}: folder is not empty; give an empty or new folder, or --force to replace it")
    run = load_run(ref, out_dir, "cpu", registry)
    cfg = run.config
    owner = registry.owner_of("model", cfg.model.name)
    meta = {
        "format": FORMAT,
        "model": cfg.model.name,
        "plugin": {"distribution": owner.dist, "version": owner.version, "entry_point": owner.name},
        "tokenizer": {"name": run.tokenizer.name, "vocab_size": run.tokenizer.vocab_size, "digest": run.tokenizer.digest},
        "context": run.context,
        "source": {"run": run.run_dir.name, "step": run.step, "mlflow_run_id": _mlflow_id(run.run_dir)},
        "blagpt_version": __version__,
    }
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise BlagptError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    try:
        st.save_model(run.model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "blagpt_model": cfg.model.name})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():  # --force: the old folder goes only now that the new one is complete
            old = parent / f".{out.name}.old.{os.getpid()}.tmp"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BlagptError(f"--out {out}: cannot write the export ({e.strerror or e}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _mlflow_id(run_dir: Path) -> str | None:
    from .rundir import RunDir

    return RunDir(run_dir).meta.get("mlflow_run_id")


def read_export(path: str | Path, option: str = "--weights") -> dict:
    """``export.json`` of the export folder ``path``; a one-line error when it is not one."""
    path = Path(path)
    where = f"{option} {path}"
    if not path.is_dir():
        raise BlagptError(f"{where}: no such folder (an export folder, written by blagpt export)")
    missing = [f for f in (EXPORT_FILE, WEIGHTS_FILE, CONFIG_FILE) if not (path / f).is_file()]
    if missing:
        raise BlagptError(f"{where}: not an export folder: no {', '.join(missing)} (blagpt export writes them)")
    try:
        meta = json.loads((path / EXPORT_FILE).read_text())
    except (OSError, ValueError) as e:
        raise BlagptError(f"{where}: {EXPORT_FILE} is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BlagptError(f"{where}: {EXPORT_FILE} is not a blagpt export of format {FORMAT}")
    for key in ("model", "plugin", "tokenizer", "context"):
        if key not in meta:
            raise BlagptError(f"{where}: {EXPORT_FILE} has no {key!r}")
    return meta


def load_export(path: str | Path, device: str = "auto", registry: "Registry | None" = None, option: str = "--weights") -> "LoadedRun":
    """Rebuild the exported model (weights-only, from safetensors) with the installed plugin.

    Refused in one line, naming ``option``: a folder that is not an export; a model no installed
    plugin registers; a plugin other than the one exported from, or another version of it; a
    config that does not resolve; a tokenizer that differs from the exported one; weights that do
    not fit the rebuilt model.
    """
    from ..config import read_file, resolve
    from ..data.tokenizers import get_tokenizer
    from ..errors import ConfigError
    from ..plugin.registry import PluginError, get_registry
    from ..plugin.specs import BuildContext
    from .sample import LoadedRun, resolve_device

    path = Path(path)
    where = f"{option} {path}"
    meta = read_export(path, option)
    st = _safetensors(option)
    registry = registry or get_registry()
    dev = resolve_device(device)
    name, want = meta["model"], meta["plugin"]
    try:
        registry.model_spec(name)
    except PluginError as e:
        raise BlagptError(
            f"{where}: model {name!r} needs the plugin {want['distribution']} {want['version']}, which is not installed "
            f"(blagpt plugins install {want['distribution']}=={want['version']}): {e}"
        ) from None
    have = registry.owner_of("model", name)
    if (have.dist, have.version) != (want["distribution"], want["version"]):
        raise BlagptError(
            f"{where}: model {name!r} was exported from {want['distribution']} {want['version']}, but {have.dist} "
            f"{have.version} is installed (blagpt plugins install {want['distribution']}=={want['version']})"
        )
    try:
        cfg = resolve(read_file(path / CONFIG_FILE), registry)
    except ConfigError as e:
        raise BlagptError(f"{where}: its {CONFIG_FILE} does not resolve with the installed plugins: {e}") from None
    if cfg.model.name != name:
        raise BlagptError(f"{where}: {CONFIG_FILE} is for model {cfg.model.name!r}, {EXPORT_FILE} for {name!r}")
    tok_name = cfg.tokenizer_name(registry)
    tokenizer = get_tokenizer(tok_name, registry)
    tok = meta["tokenizer"]
    if (tokenizer.vocab_size, tokenizer.digest) != (tok.get("vocab_size"), tok.get("digest")):
        raise BlagptError(
            f"{where}: tokenizer {tok_name!r} here is not the one exported ({tok.get('name')!r}, {tok.get('vocab_size')} ids, "
            f"digest {str(tok.get('digest'))[:12]}); got {tokenizer.vocab_size} ids, digest {tokenizer.digest[:12]}"
        )
    ctx = BuildContext(tokenizer.vocab_size, cfg.train.seq_len, tok_name, compile=False, device=str(dev))
    model = registry.build_model(cfg.model, ctx)
    try:
        missing, unexpected = st.load_model(model, str(path / WEIGHTS_FILE), strict=False, device="cpu")
    except Exception as e:  # noqa: BLE001 - a corrupt file, a shape that does not fit
        raise BlagptError(f"{where}: {WEIGHTS_FILE}: weights do not load into model {name!r}: {' '.join(str(e).split())[:300]}") from None
    if missing or unexpected:
        what = [f"missing {', '.join(sorted(missing)[:5])}"] * bool(missing) + [f"unexpected {', '.join(sorted(unexpected)[:5])}"] * bool(unexpected)
        raise BlagptError(f"{where}: {WEIGHTS_FILE}: weights do not fit model {name!r}: {'; '.join(what)}")
    model.to(dev).eval()
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and dev.type == "cuda")
    source = meta.get("source") or {}
    return LoadedRun(model, tokenizer, int(meta["context"]), path, int(source.get("step") or 0), cfg, dev, bf16)
