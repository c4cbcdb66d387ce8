"""What a training run prints (rank 0 only): a progress bar when stderr is a terminal, else one
line per logging step; evaluation lines and notes either way, never breaking the bar."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


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

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
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
            self.bar.set_postfix(loss=f"{row['train/loss']:.4f}", lr=f"{row['train/lr']:.2e}", tok_s=f"{row['train/tokens_per_s']:,.0f}")
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
