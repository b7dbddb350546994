"""Reading config.json values with their types checked, for every architecture spec."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headwise.errors import CheckpointError

__all__ = ["config_values", "head_counts"]

_KINDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
}


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is int:
        return isinstance(value, int) and -(2**63) <= value < 2**63
    return isinstance(value, kind)


def config_values(
    raw: Mapping[str, Any],
    path: Path,
    *,
    required: Mapping[str, type],
    optional: Mapping[str, tuple[type, Any]],
) -> dict[str, Any]:
    """The ``required`` and ``optional`` keys of a config.json, each of the type it must have.

    A missing required key, or a value of the wrong type (``"1e-12"`` where a number belongs,
    ``null`` for a size), raises a :class:`CheckpointError` naming the file, the key and the
    value.  An optional key that is absent or ``null`` takes its default.
    """
    missing = [key for key in required if raw.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} (needed: {', '.join(required)}).")
    values: dict[str, Any] = {}
    for key, kind in required.items():
        values[key] = _typed(raw[key], kind, key, path)
    for key, (kind, default) in optional.items():
        value = raw.get(key)
        values[key] = default if value is None else _typed(value, kind, key, path)
    return values


def _typed(value: Any, kind: type, key: str, path: Path) -> Any:
    if not _fits(value, kind):
        hint = ""
        if kind in (int, float) and isinstance(value, str) and _is_number(value, kind):
            hint = f"; write it without quotes, e.g. {value.strip()}"
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            hint = " that fits in 64 bits"
        raise CheckpointError(
            f"{path}: {key!r} is {value!r} ({type(value).__name__}); expected {_KINDS[kind]}{hint}."
        )
    return float(value) if kind is float else value


def _is_number(text: str, kind: type) -> bool:
    try:
        kind(text.strip())
    except ValueError:
        return False
    return True


def head_counts(raw: Mapping[str, Any], key: str, path: Path) -> tuple[int, ...] | None:
    """A per-layer list of head counts written by headwise (``headwise_num_heads`` and alike), or None."""
    counts = raw.get(key)
    if counts is None:
        return None
    if not isinstance(counts, list) or not all(_fits(c, int) for c in counts):
        raise CheckpointError(f"{path}: {key!r} must be a list of head counts, got {counts!r}.")
    return tuple(counts)
