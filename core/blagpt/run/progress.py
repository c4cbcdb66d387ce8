"""What a training run prints (rank 0 only): a progress bar when stderr is a terminal, else one
line per logging step; evaluation lines and notes either way, never breaking the bar.

The bar fits the terminal, 80 columns included: the run name is shortened to what is left once
the percentage, a bar of at least :data:`BAR_MIN` cells, the step count, the time left and the
figures (loss, learning rate, tokens/s) have their room. Log records and warnings of other
libraries (MLflow, heavyball) go above the bar: the ``blagpt`` command routes them there
(``blagpt.cli._setup_logging``).
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

BAR_MIN = 10  # cells of the bar itself, whatever the width
FIGURES = len(", loss 10.8234 lr 3.0e-04 123.4k tok/s")  # the postfix at its widest, in practice


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters: its start and end kept, an ellipsis between."""
    if len(name) <= width:
        return name
    if width < 4:
        return name[:width]
    tail = (width - 1) // 2
    return f"{name[: width - 1 - tail]}…{name[len(name) - tail:]}"


def rate(tokens_per_s: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens_per_s >= scale:
            return f"{tokens_per_s / scale:.1f}{unit}"
    return f"{tokens_per_s:.0f}"


class Progress:
    def __init__(self, echo: Callable[[str], None], main: bool, show: bool | None) -> None:
        self.echo, self.main = echo, main
        self.show = (show if show is not None else sys.stderr.isatty()) and main
        self.bar = None

    @contextmanager
    def bar_for(self, total: int | None, initial: int, desc: str) -> Iterator[None]:
        if not self.show:
            yield
            return
        from tqdm import tqdm

        cols = shutil.get_terminal_size((80, 24)).columns
        if total is not None:
            counts = 2 * len(str(total)) + 1
            room = cols - FIGURES - counts - len(" 100%|| ") - len(" 00:00") - BAR_MIN
            fmt = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {remaining}{postfix}"
        else:  # a time budget: no total to fill
            room = cols - FIGURES - len(" 1000000 steps 00:00:00")
            fmt = "{desc} {n_fmt} steps {elapsed}{postfix}"
        self.bar = tqdm(total=total, initial=initial, desc=shorten(desc, max(10, room)), unit="step", file=sys.stderr,
                        dynamic_ncols=True, bar_format=fmt)
        try:
            yield
        finally:
            self.bar.close()
            self.bar = None

    def stepped(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def logged(self, step: int, row: dict[str, float], of: str) -> None:
        """A logging step's figures: on the bar, or as a line (``of``: "/200" or the time budget)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {row['train/loss']:.4f} lr {row['train/lr']:.1e} {rate(row['train/tokens_per_s'])} tok/s")
            return
        self.say(f"step {step}{of} | loss {row['train/loss']:.4f} | lr {row['train/lr']:.2e} | "
                 f"{row['train/tokens_per_s']:,.0f} tok/s | {row['train/step_ms']:.0f} ms/step")

    def say(self, msg: str) -> None:
        """A line for the user: above the bar when there is one."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.echo(msg)
