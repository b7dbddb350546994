"""What every workflow config (PruneConfig, DistillConfig, ...) shares: a version and a dict round trip."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

__all__ = ["WorkflowConfig"]

T = TypeVar("T", bound="WorkflowConfig")

#: The config version this headwise writes and reads.
VERSION = 1


class WorkflowConfig:
    """Mixin for frozen dataclass configs with a ``version`` field."""

    def _check_version(self) -> None:
        version = self.version  # type: ignore[attr-defined]
        if version != VERSION:
            raise ValueError(f"{type(self).__name__} version {version!r} is not supported (this headwise writes {VERSION}).")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready) that :meth:`from_dict` reads back."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """The config a :meth:`to_dict` dict describes; unknown keys are an error."""
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected {sorted(fields)}.")
        return cls(**data)
