"""Mask helpers: one polarity inside headwise, conversions at the edges.

Inside headwise a boolean mask means ``True`` = "may attend".  A floating mask is
added to the attention scores (``0`` keeps a key, ``-inf`` removes it).
``torch.nn.MultiheadAttention`` uses the opposite boolean polarity
(``True`` = "masked out"); :func:`from_torch_bool_mask` is the one place that
converts it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_mask", "from_torch_bool_mask", "merge_masks"]


def causal_mask(query_len: int, key_len: int, *, device: torch.device | None = None) -> Tensor:
    """Boolean causal mask aligned to the bottom-right corner.

    Query ``i`` sits at position ``key_len - query_len + i`` and may attend keys
    ``0 .. key_len - query_len + i``.  With ``query_len == key_len`` this is the usual
    lower-triangular mask (and equals ``F.scaled_dot_product_attention(is_causal=True)``);
    with a cache of earlier keys (``key_len > query_len``) the new queries see the whole
    prefix, which is what incremental decoding needs.

    Shape:
        returns (L, S) bool, ``True`` = may attend.
    """
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(
        diagonal=key_len - query_len
    )  # (L, S)


def from_torch_bool_mask(mask: Tensor) -> Tensor:
    """Convert a ``torch.nn.MultiheadAttention`` mask to headwise's polarity.

    A boolean mask from torch means ``True`` = "masked out"; it is inverted.  A
    floating mask is additive in both libraries and is returned unchanged.
    """
    if mask.dtype == torch.bool:
        return ~mask
    return mask


def merge_masks(first: Tensor | None, second: Tensor | None, *, dtype: torch.dtype) -> Tensor | None:
    """Combine two headwise masks (either may be bool or additive float).

    Two boolean masks give their logical AND (a key is kept when both keep it).  If
    either is floating, both become additive masks of ``dtype`` and are summed.

    Shape:
        both broadcastable to (B, H, L, S); the result has the broadcast shape.
    """
    if first is None:
        return second
    if second is None:
        return first
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & second
    return to_additive(first, dtype) + to_additive(second, dtype)


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Turn a headwise mask into an additive float mask of ``dtype``."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, float("-inf")
        )
    return mask.to(dtype)


def row_alive(mask: Tensor) -> Tensor:
    """Which query rows keep at least one key.

    Shape:
        mask (..., L, S) -> (..., L, 1) bool.
    """
    if mask.dtype == torch.bool:
        return mask.any(dim=-1, keepdim=True)  # (..., L, 1)
    return (mask != float("-inf")).any(dim=-1, keepdim=True)  # (..., L, 1)


def open_dead_rows(mask: Tensor, alive: Tensor) -> Tensor:
    """Let rows with no key attend every key, so no kernel sees an all ``-inf`` row.

    The caller zeroes those rows of the output afterwards; the values computed for
    them never reach the user, and their gradient is zero.
    """
    if mask.dtype == torch.bool:
        return mask | ~alive
    return mask.masked_fill(~alive, 0.0)
