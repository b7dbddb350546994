"""Rotary position embeddings (Su et al. 2021), the "rotate half" convention of GPT-NeoX and Llama."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_rotary", "rotary_angles"]


def rotary_angles(positions: Tensor, head_dim: int, *, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles for ``positions``.

    Shape:
        positions (L,) or (B, L) integer -> cos, sin (L, D) or (B, L, D), float32.
    """
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}.")
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )  # (D/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i + D/2}) of every head by the given angles.

    Shape:
        x (B, H, L, D); cos, sin (L, D) or (B, L, D) -> (B, H, L, D).
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, D)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, H, L, D/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, H, L, D)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)
