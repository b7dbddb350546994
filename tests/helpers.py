"""Shared test helpers: the oracle tolerance rule and random inputs."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from headwise.functional import attention

#: The tolerance rule of every float32 test (flash-attention's): a path's max error against the
#: float64 oracle may be at most FACTOR times the error of a float32 reference computed the
#: straightforward way, plus FLOOR times the oracle's scale.  Nothing in it is read off one machine.
FACTOR = 4.0
FLOOR = 1e-6


def assert_close_to_oracle(
    got: Tensor, oracle: Tensor, reference: Tensor, *, factor: float = FACTOR, floor: float = FLOOR
) -> None:
    """``got`` (a low-precision result) against ``oracle`` (float64), relative to ``reference``'s error.

    ``reference`` is the same quantity computed in ``got``'s precision by the plain reference
    path (the math backend, or the unpruned/unsharded/uncached computation).  Passes when
    max|got - oracle| <= factor * max|reference - oracle| + floor * max(1, max|oracle|).
    """
    oracle = oracle.double()
    err = (got.double() - oracle).abs().max().item()
    ref_err = (reference.double() - oracle).abs().max().item()
    scale = max(1.0, oracle.abs().max().item())
    assert err <= factor * ref_err + floor * scale, (
        f"error {err:.3g} against the float64 oracle; the float32 reference's is {ref_err:.3g} "
        f"(allowed {factor} x that + {floor * scale:.3g})"
    )


def oracle_error_factor(
    out: Tensor, q: Tensor, k: Tensor, v: Tensor, *, factor: float = FACTOR, floor: float = FLOOR, **kwargs
) -> None:
    """Check an attention output against the float64 math oracle, relative to the math backend's own error."""
    oracle, _ = attention(q.double(), k.double(), v.double(), backend="math", **_double(kwargs))
    same_precision, _ = attention(q, k, v, backend="math", **kwargs)
    assert_close_to_oracle(out, oracle, same_precision, factor=factor, floor=floor)


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


@contextlib.contextmanager
def float64_llama_norms():
    """transformers' ``LlamaRMSNorm`` computes in float32 whatever the model's dtype; make a float64
    model a float64 oracle by computing in the input's precision (float32 and half types unchanged)."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaRMSNorm.forward

    def forward(self, hidden_states):
        compute = torch.promote_types(hidden_states.dtype, torch.float32)
        h = hidden_states.to(compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(hidden_states.dtype)

    modeling_llama.LlamaRMSNorm.forward = forward
    try:
        yield
    finally:
        modeling_llama.LlamaRMSNorm.forward = original
