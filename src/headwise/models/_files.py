"""File helpers of the model loaders and savers: JSON reading, and files written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headwise.errors import CheckpointError

__all__ = ["CheckpointError", "Staging", "read_json", "staged"]


def read_json(path: Path) -> Any:
    """Parse ``path`` as JSON; a missing file raises FileNotFoundError, bad JSON a CheckpointError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; a model folder needs config.json and model.safetensors "
            "(Hugging Face layout), plus tokenizer.json to tokenize text."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}).") from err


class Staging:
    """Files written under temporary names in their folder, renamed into place together at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._staged: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        """A temporary path in the folder for the file that will be ``name`` (subfolders allowed)."""
        final = self.folder / name
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        os.close(handle)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; saved files follow the umask
        self._staged.append((Path(temp), final))
        return Path(temp)

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8")

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_bytes(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Staging]:
    """Write files into ``folder`` so that an error leaves it as it was.

    Every file goes to a temporary name in its folder; when the block ends without an
    error they are renamed into place (``os.replace``, atomic per file), otherwise removed.
    Other files in the folder are left alone.
    """
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; saving writes a folder (config.json, model.safetensors, ...): choose a folder path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the folder {folder}: {err.strerror or err}.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {folder}: permission denied; choose a folder you can write to.")
    staging = Staging(folder)
    try:
        yield staging
    except BaseException:
        for temp, _ in staging._staged:
            temp.unlink(missing_ok=True)
        raise
    for temp, final in staging._staged:
        os.replace(temp, final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
