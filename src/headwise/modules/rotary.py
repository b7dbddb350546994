"""Rotary position embedding as an injectable component of :class:`headwise.Attention`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from headwise.functional.rope import apply_rotary, rotary_angles, rotary_frequencies

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    """Rotates queries and keys by their positions (no parameters).

    Args:
        head_dim: D, must be even.
        base: the wavelength base (10000 in RoFormer and Llama 2).
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(f"RotaryEmbedding needs a positive even head_dim, got {head_dim}.")
        self.head_dim = head_dim
        self.base = base
        self._frequencies: Tensor | None = None  # computed on first use, on the positions' device

    def forward(self, query: Tensor, key: Tensor, query_positions: Tensor, key_positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``query`` and ``key`` by their absolute positions.

        Shape:
            query (B, H, L, D), key (B, K, S, D), positions (L,)/(B, L) and (S,)/(B, S)
            -> same shapes as query and key.
        """
        if query.shape[-1] != self.head_dim:
            raise ValueError(
                f"RotaryEmbedding was built for head_dim={self.head_dim} but the heads have "
                f"head_dim={query.shape[-1]}."
            )
        frequencies = self._frequencies
        if frequencies is None or frequencies.device != query_positions.device:
            frequencies = self._frequencies = rotary_frequencies(
                self.head_dim, base=self.base, device=query_positions.device
            )  # (D/2,)
        cos_q, sin_q = rotary_angles(query_positions, self.head_dim, frequencies=frequencies)
        if key_positions is query_positions:  # self-attention: the keys sit at the queries' positions
            cos_k, sin_k = cos_q, sin_q
        else:
            cos_k, sin_k = rotary_angles(key_positions, self.head_dim, frequencies=frequencies)
        return apply_rotary(query, cos_q, sin_q), apply_rotary(key, cos_k, sin_k)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def positions_for(length: int, offset: int, device: torch.device) -> Tensor:
    """Positions ``offset .. offset + length - 1``.

    Shape:
        -> (length,) int64.
    """
    return torch.arange(offset, offset + length, device=device)
