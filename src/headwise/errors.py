"""Exceptions raised by headwise and helpers that format their messages.

Every user mistake raises :class:`ValueError`, :class:`TypeError` or a subclass
defined here.  Messages say what is wrong, the actual values, what was expected
and a hint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "BackendError",
    "CheckpointError",
    "ShapeError",
    "TorchCompatError",
    "TorchCompatShapeError",
    "divisors",
    "fmt_shape",
    "heads_do_not_divide",
]


class ShapeError(ValueError):
    """A tensor has a shape that does not fit the documented layout."""


class TorchCompatError(ValueError, AssertionError):
    """An input the drop-in :class:`headwise.MultiheadAttention` refuses where torch's layer does.

    ``torch.nn.MultiheadAttention`` raises ``AssertionError`` for them (a nested tensor outside
    its fast path); this class is both, and its message starts with torch's.
    """


class TorchCompatShapeError(ShapeError, AssertionError):
    """A :class:`ShapeError` raised by the drop-in :class:`headwise.MultiheadAttention`.

    ``torch.nn.MultiheadAttention`` reports the same mistakes with ``AssertionError``;
    this class is both, so code written against torch's layer keeps catching it.
    """


class BackendError(ValueError):
    """An explicitly requested attention backend cannot serve the call."""


class CheckpointError(ValueError):
    """A model folder's file is unusable: wrong architecture, bad or missing key, wrong shape.

    The message names the file and the key.  A file that is not there at all raises
    :class:`FileNotFoundError` instead.
    """


def fmt_shape(shape: Sequence[int] | torch.Size) -> str:
    """Format a shape as ``(2, 3, 4)``."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join(str(d) for d in dims) + ")"


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order (found up to sqrt(n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


#: sizes up to which a message lists every divisor (a corrupt config may hold 10**12)
_LISTED_DIVISORS = 10**8


def heads_do_not_divide(embed_dim: int, num_heads: int, *, suggest_head_dim: bool = False) -> str:
    """The message for an ``embed_dim`` that ``num_heads`` does not divide."""
    message = (
        f"embed_dim={embed_dim} is not divisible by num_heads={num_heads} (head_dim would be "
        f"{embed_dim / num_heads:g}); use a num_heads that divides {embed_dim}"
    )
    if 0 < embed_dim <= _LISTED_DIVISORS:
        message += f": {', '.join(str(d) for d in divisors(embed_dim))}"
    return message + (", or pass head_dim explicitly." if suggest_head_dim else ".")
