"""The pieces attention is made of, shared by the backends and the variants.

Each function is one step of softmax(Q K^T * scale + mask) V on the internal
(B, H, L, D) layout, with grouped-query heads handled without repeating the
kv heads (query head ``h`` uses kv head ``h // (H / K)``).  Nothing here
dispatches, validates or keeps state: callers check their inputs first
(:func:`headwise.functional.attention` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "expand_kv", "probabilities", "scaled_query", "scores", "sdpa", "softmax_rows", "weighted_values",
]

# enable_gqa arrived in torch 2.5; older releases get the kv heads repeated here.
_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def expand_kv(x: Tensor, num_heads: int, kv_index: Tensor | None = None) -> Tensor:
    """Each query head's copy of its kv head.

    Without ``kv_index`` query head h uses kv head h // (H/K) (groups of equal size); with it,
    kv head ``kv_index[h]`` (groups of any size, e.g. after pruning query heads inside groups).

    Shape:
        x (B, K, S, D), kv_index (H,) int64 -> (B, H, S, D).
    """
    if kv_index is not None:
        return x.index_select(1, kv_index)  # (B, H, S, D)
    kv_heads = x.shape[1]
    if kv_heads == num_heads:
        return x
    return x.repeat_interleave(num_heads // kv_heads, dim=1)  # (B, H, S, D)


def scaled_query(query: Tensor, scale: float) -> Tensor:
    """``query * scale`` as a contiguous tensor (scaling Q costs L*D, scaling the scores L*S).

    Shape:
        (B, H, L, D) -> (B, H, L, D) contiguous.
    """
    return (query * scale).contiguous(memory_format=torch.contiguous_format)


def scores(query: Tensor, key: Tensor) -> Tensor:
    """Q K^T for grouped heads without repeating the kv heads.

    Shape:
        query (B, H, L, D) (already scaled), key (B, K, S, D) -> (B, H, L, S) contiguous.
    """
    batch, heads, query_len, head_dim = query.shape
    kv_heads, key_len = key.shape[1], key.shape[2]
    if kv_heads == heads:
        return torch.matmul(query, key.transpose(-2, -1))  # (B, H, L, S)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * query_len, head_dim)  # (B, K, G*L, D)
    return torch.matmul(grouped, key.transpose(-2, -1)).view(batch, heads, query_len, key_len)  # (B, H, L, S)


def softmax_rows(scores: Tensor, mask: Tensor | None, alive: Tensor | None) -> Tensor:
    """softmax(scores + mask) over keys, zero on rows with no key.  Writes the mask into ``scores``.

    ``mask`` is a headwise mask (bool True = may attend, or additive float) whose dead rows
    were opened (see :func:`headwise.functional.attention`); ``alive`` marks the rows that
    keep a key.

    Shape:
        scores (B, H, L, S); mask broadcastable to it; alive (..., L, 1) -> (B, H, L, S).
    """
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    probs = torch.softmax(scores, dim=-1)  # half types accumulate in float32 inside the kernel
    if alive is not None:
        probs = probs * alive  # rows with no key become zero
    return probs


def weighted_values(probs: Tensor, value: Tensor) -> Tensor:
    """P V for grouped heads without repeating the kv heads.

    Shape:
        probs (B, H, L, S), value (B, K, S, Dv) -> (B, H, L, Dv).
    """
    batch, heads, query_len, key_len = probs.shape
    kv_heads = value.shape[1]
    if kv_heads == heads:
        return torch.matmul(probs, value)  # (B, H, L, Dv)
    grouped = probs.reshape(batch, kv_heads, heads // kv_heads * query_len, key_len)  # (B, K, G*L, S)
    return torch.matmul(grouped, value).view(batch, heads, query_len, -1)  # (B, H, L, Dv)


def probabilities(query: Tensor, key: Tensor, mask: Tensor | None, alive: Tensor | None, scale: float) -> Tensor:
    """Attention probabilities softmax(Q K^T * scale + mask), zero on rows with no key.

    Shape:
        query (B, H, L, D), key (B, K, S, D), mask broadcastable to (B, H, L, S),
        alive (..., L, 1) -> (B, H, L, S).
    """
    return softmax_rows(scores(scaled_query(query, scale), key), mask, alive)


def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` with grouped-query heads on every supported torch.

    A query row holding a NaN gives a NaN output row, as the math path computes it: PyTorch's
    CPU flash kernel returns a zero row there (its online softmax never sees a finite maximum
    and takes the row for fully masked), so the NaN is put back from the query.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:
        if _HAS_GQA:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                enable_gqa=True,
            )  # (B, H, L, Dv)
            return _nan_rows_of(query, output)
        key = expand_kv(key, heads)  # (B, H, S, D)
        value = expand_kv(value, heads)  # (B, H, S, Dv)
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )  # (B, H, L, Dv)
    return _nan_rows_of(query, output)


def _nan_rows_of(query: Tensor, output: Tensor) -> Tensor:
    """``output`` with NaN in every row whose query holds a NaN.

    Shape:
        query (B, H, L, D), output (B, H, L, Dv) -> (B, H, L, Dv).
    """
    return output.masked_fill(query.isnan().any(dim=-1, keepdim=True), float("nan"))  # (B, H, L, Dv)
