"""``python -m blagpt`` (and ``torchrun -m blagpt``) runs the CLI."""

from .cli import main

if __name__ == "__main__":  # not when a worker process re-imports the main module (spawn)
    main()
