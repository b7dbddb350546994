"""File helpers shared by the checkpoint readers: JSON reading (the error type lives in headwise.errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headwise.errors import CheckpointError

__all__ = ["CheckpointError", "read_json"]


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
