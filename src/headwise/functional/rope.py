"""Rotary position embeddings (Su et al. 2021), the "rotate half" convention of GPT-NeoX and Llama."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_rotary", "rotary_angles", "rotary_frequencies"]


def rotary_frequencies(head_dim: int, *, base: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """The rotation frequencies 1 / base^(2i / D), in float32, as transformers' Llama computes them.

    Shape:
        -> (D/2,) float32.
    """
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}.")
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim
    return 1.0 / (base**exponents)  # (D/2,)


def rotary_angles(
    positions: Tensor, head_dim: int, *, base: float = 10000.0, frequencies: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles for ``positions``.

    The angles are computed in float32 (``frequencies``: :func:`rotary_frequencies`, computed
    here when not given), so a model loaded from a checkpoint rotates exactly as its reference.

    Shape:
        positions (L,) or (B, L) integer -> cos, sin (L, D) or (B, L, D), float32.
    """
    if frequencies is None:
        frequencies = rotary_frequencies(head_dim, base=base, device=positions.device)
    angles = positions.to(torch.float32)[..., None] * frequencies  # (..., L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i + D/2}) of every head by the given angles.

    Computed in float32 for half types and in ``x``'s dtype otherwise (float64 stays float64).

    Shape:
        x (B, H, L, D); cos, sin (L, D) or (B, L, D) -> (B, H, L, D).
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, D)
    compute = torch.promote_types(x.dtype, torch.float32)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, H, L, D/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, H, L, D)
    out = x.to(compute) * cos.to(compute) + rotated.to(compute) * sin.to(compute)
    return out.to(x.dtype)
