"""Output folders of the commands: checked before any work, written whole or not at all."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click


class OutFolder(click.Path):
    """``--out``: a folder path, not empty, that is not an existing file."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; name the folder to write, e.g. --out results", param, ctx)
        return super().convert(value, param, ctx)


class Fraction(click.FloatRange):
    """A share strictly between 0 and 1; NaN is refused in words."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0, min_open=True, max_open=True)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number; give a share of the heads between 0 and 1, e.g. 0.3", param, ctx)
        return number


def check_writable(out: Path, option: str, *, source: Path | None = None) -> None:
    """Refuse, before any work, an ``out`` that cannot be written or that is the model being read."""
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"{option} {out} is a file; give a folder to write into.")
    if source is not None and out.exists() and source.exists() and out.resolve() == source.resolve():
        raise click.UsageError(
            f"{option} {out} is the model being read; write the result to another folder, e.g. {option} {out.name}-pruned."
        )
    existing = out.resolve()
    while not existing.exists():
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is a file"
    else:
        try:  # a real probe: permissions, read-only file systems and root alike
            os.rmdir(tempfile.mkdtemp(prefix=".headwise-probe.", dir=existing))
        except OSError as err:
            reason = f"cannot write into {existing} ({err.strerror or err})"
    if reason is not None:
        raise click.UsageError(f"{option} {out}: {reason}; choose a folder you can write to.")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``; its files move into ``out`` when the block completes.

    Each file is renamed into place (``os.replace``, atomic per file); an error or Ctrl-C in
    the block removes the temporary folder and leaves ``out`` as it was.  Other files in
    ``out`` are left alone.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield temp
        out.mkdir(parents=True, exist_ok=True)
        for file in sorted(p for p in temp.rglob("*") if p.is_file()):
            target = out / file.relative_to(temp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
