"""One rank of the conformance kit's DDP check, run under ``torchrun``::

    python -m torch.distributed.run --nproc_per_node 2 ... -m blagpt.testing.ddp_worker CONFIG.yaml RESULT.json [--probe]

Every rank resolves ``CONFIG.yaml`` (a dumped run config) against the installed plugins (limited
by ``BLAGPT_LOAD_PLUGINS``), plus the kit's probe model with ``--probe``, and trains it with the
core trainer; rank 0 writes ``RESULT.json``: ``{"step", "history", "final"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blagpt.testing.ddp_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="run config (YAML) to train")
    parser.add_argument("result", type=Path, help="JSON file rank 0 writes the logged history to")
    parser.add_argument("--probe", action="store_true", help="register blagpt.testing's probe model")
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from ..config import merge_sources, resolve
    from ..errors import BlagptError
    from ..plugin.registry import Registry
    from ..run.trainer import train

    try:
        reg = Registry.load()
        if args.probe:
            from .probe import add_probe

            add_probe(reg)
        cfg = resolve(merge_sources(file=args.config), reg)
        res = train(cfg, registry=reg, progress=False, echo=lambda *a, **k: None)
    except BlagptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps({"step": res.step, "history": res.history, "final": res.final}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
