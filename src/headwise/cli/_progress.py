"""Progress of the long commands: a bar on a terminal, plain lines on stderr otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from types import TracebackType

import click

#: the ``--quiet`` option of the commands that show progress
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output (results only).")


class Steps:
    """A counted sequence of steps, shown as it advances.

    On a terminal: a rich bar on stderr (description, bar, n/total, elapsed), cleared at the
    end.  Otherwise (a pipe, a log file, CI): one line per new description on stderr,
    ``headwise: [n/total] description (12 s)``.  ``quiet``: nothing.
    """

    def __init__(self, total: int | None = None, *, description: str = "starting", quiet: bool = False) -> None:
        self.total, self.done, self.description = total, 0, description
        self._quiet = quiet
        self._bar = None
        self._task = None
        self._start = time.perf_counter()

    def __enter__(self) -> Steps:
        if self._quiet:
            return self
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar = Progress(*columns, transient=True, console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            self._line()
        return self

    def update(self, description: str | None = None, *, advance: int = 0, total: int | None = None) -> None:
        """Advance by ``advance`` steps; a new ``description`` names the step now running."""
        self.done += advance
        if total is not None:
            self.total = total
        changed = description is not None and description != self.description
        if description is not None:
            self.description = description
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, description=self.description, advance=advance, total=self.total)
        elif changed:
            self._line()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)

    def _line(self) -> None:
        count = f"[{self.done}/{self.total}] " if self.total else ""
        seconds = time.perf_counter() - self._start
        click.echo(f"headwise: {count}{self.description} ({seconds:.0f} s)", err=True)
