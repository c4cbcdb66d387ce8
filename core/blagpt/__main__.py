"""``python -m blagpt`` (and ``torchrun -m blagpt``) runs the CLI."""

from .cli import main

main()
