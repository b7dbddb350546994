"""File helpers shared by the checkpoint readers: the error type and JSON reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "read_json"]


class CheckpointError(ValueError):
    """A model folder's file is unusable: wrong architecture, bad or missing key, wrong shape.

    The message names the file and the key.  A file that is not there at all raises
    :class:`FileNotFoundError` instead.
    """


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
