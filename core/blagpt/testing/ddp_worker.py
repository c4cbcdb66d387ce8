"""One rank of the conformance kit's DDP and FSDP checks, run under ``torchrun``::

    python -m torch.distributed.run --nproc_per_node 2 ... -m blagpt.testing.ddp_worker CONFIG.yaml RESULT.json [CONFIG2.yaml RESULT2.json ...] [--probe]

Every rank resolves each ``CONFIG.yaml`` (a dumped run config) against the installed plugins
(limited by ``BLAGPT_LOAD_PLUGINS``), plus the kit's probe model with ``--probe``, and trains it
with the core trainer, one config after the other in one process group (one launch for both
checks); rank 0 writes each ``RESULT.json``: ``{"step", "history", "final", "run_dir"}``, or
``{"error": ...}`` when that run failed with a blagpt error (the next config still runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blagpt.testing.ddp_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, nargs="+", metavar="CONFIG RESULT",
                        help="run config (YAML) to train, and the JSON file rank 0 writes its logged history to")
    parser.add_argument("--probe", action="store_true", help="register blagpt.testing's probe model")
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from ..config import merge_sources, resolve
    from ..errors import BlagptError
    from ..plugin.registry import Registry
    from ..run.trainer import train

    if len(args.pairs) % 2:
        parser.error("expected pairs of CONFIG RESULT")
    try:
        reg = Registry.load()
        if args.probe:
            from .probe import add_probe

            add_probe(reg)
    except BlagptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for config, result in zip(args.pairs[::2], args.pairs[1::2]):
        try:
            cfg = resolve(merge_sources(file=config), reg)
            res = train(cfg, registry=reg, progress=False, echo=lambda *a, **k: None)
            out = {"step": res.step, "history": res.history, "final": res.final, "run_dir": str(res.run_dir)}
        except BlagptError as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        except Exception as e:  # noqa: BLE001 - e.g. an op FSDP cannot shard: reported by the check
            out = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}
        if int(os.environ.get("RANK", "0")) == 0:
            result.write_text(json.dumps(out))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
