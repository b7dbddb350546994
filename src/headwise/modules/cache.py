"""A preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of earlier positions, written in place into fixed buffers.

    One cache per attention layer.  Buffers are allocated once for ``max_len``
    positions; each decoding step writes its new keys and values after the ones
    already held and attends over the filled part.

    Args:
        batch_size: B.
        max_len: the most positions the cache will hold.
        num_kv_heads: K of the layer it serves.
        head_dim: D of the layer it serves.

    Shape:
        keys, values (B, K, max_len, D); ``length`` positions are filled.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("max_len", max_len), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"KVCache {name} must be a positive int, got {value!r}.")
        self.keys = torch.zeros(batch_size, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]

    def reset(self) -> None:
        """Forget every position (the buffers are kept)."""
        self.length = 0

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys and values; return every held position.

        Shape:
            key, value (B, K, L, D) -> keys, values (B, K, length + L, D).
        """
        shape, keys = key.shape, self.keys
        held = keys.shape
        if len(shape) != 4 or value.shape != shape or shape[0] != held[0] or shape[1] != held[1] or shape[3] != held[3]:
            raise ValueError(
                f"KVCache holds (B, K, D) = {(held[0], held[1], held[3])} but got key "
                f"{tuple(key.shape)} and value {tuple(value.shape)}; build one cache per layer with "
                "that layer's num_kv_heads and head_dim."
            )
        new = shape[2]
        end = self.length + new
        if end > held[2]:
            raise ValueError(
                f"KVCache is full: it holds {self.max_len} positions, {self.length} are used and "
                f"{new} more were given; create it with max_len >= {end}."
            )
        keys.narrow(2, self.length, new).copy_(key)
        self.values.narrow(2, self.length, new).copy_(value)
        self.length = end
        return keys.narrow(2, 0, end), self.values.narrow(2, 0, end)  # (B, K, length, D)
