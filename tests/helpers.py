"""Shared test helpers: the oracle tolerance rule and random inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from headwise.functional import attention


def oracle_error_factor(
    out: Tensor, q: Tensor, k: Tensor, v: Tensor, *, factor: float = 4.0, floor: float = 1e-6, **kwargs
) -> None:
    """Check ``out`` against the float64 math oracle, relative to the math backend's own error.

    The low-precision result passes when its max error against the float64 oracle is at most
    ``factor`` times the error of the math backend run at the same precision (plus ``floor``).
    """
    oracle, _ = attention(q.double(), k.double(), v.double(), backend="math", **_double(kwargs))
    same_precision, _ = attention(q, k, v, backend="math", **kwargs)
    err = (out.double() - oracle).abs().max().item()
    ref_err = (same_precision.double() - oracle).abs().max().item()
    assert err <= factor * ref_err + floor, f"error {err:.3g} vs math backend's {ref_err:.3g}"


def _double(kwargs: dict) -> dict:
    out = dict(kwargs)
    mask = out.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        out["attn_mask"] = mask.double()
    return out


def qkv(b=2, h=4, k=None, lq=5, s=7, d=8, dtype=torch.float32, requires_grad=False):
    k = h if k is None else k
    q = torch.randn(b, h, lq, d, dtype=dtype, requires_grad=requires_grad)
    key = torch.randn(b, k, s, d, dtype=dtype, requires_grad=requires_grad)
    value = torch.randn(b, k, s, d, dtype=dtype, requires_grad=requires_grad)
    return q, key, value
