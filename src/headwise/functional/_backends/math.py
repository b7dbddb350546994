"""The explicit math backend: the test oracle and the only one that returns weights.

softmax(Q K^T * scale + mask) V, written out step by step.  It supports every
feature (weights, grouped-query heads, masks, dropout) on every dtype and device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from headwise.functional._dispatch import AttentionRequest, PreparedMask


def expand_kv(x: Tensor, num_heads: int) -> Tensor:
    """Repeat each kv head for the H/K query heads that share it.

    Shape:
        x (B, K, S, D) -> (B, H, S, D); query head h uses kv head h // (H/K).
    """
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


def scores_of(query: Tensor, key: Tensor) -> Tensor:
    """Q K^T for grouped heads without repeating the kv heads.

    Shape:
        query (B, H, L, D) (already scaled), key (B, K, S, D) -> (B, H, L, S) contiguous.
    """
    batch, heads, query_len, head_dim = query.shape
    kv_heads, key_len = key.shape[1], key.shape[2]
    if kv_heads == heads:
        return torch.matmul(query, key.transpose(-2, -1))  # (B, H, L, S)
    groups = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, groups * query_len, head_dim)  # (B, K, G*L, D)
    scores = torch.matmul(grouped, key.transpose(-2, -1))  # (B, K, G*L, S)
    return scores.view(batch, heads, query_len, key_len)  # (B, H, L, S)


def softmax_rows(scores: Tensor, mask: Tensor | None, alive: Tensor | None) -> Tensor:
    """softmax(scores + mask) over keys, zero on rows with no key.  Fills ``scores`` in place.

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


def probabilities(query: Tensor, key: Tensor, prepared: PreparedMask, scale: float) -> Tensor:
    """Attention probabilities softmax(Q K^T * scale + mask), zero on rows with no key.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, H, L, S).
    """
    scores = scores_of(scaled_query(query, scale), key)  # (B, H, L, S)
    return softmax_rows(scores, prepared.mask, prepared.alive)


class MathBackend:
    name = "math"

    def check(self, request: AttentionRequest) -> str | None:
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        prepared = request.prepared_mask(fused_causal=False)
        probs = probabilities(request.query, request.key, prepared, request.scale)  # (B, H, L, S)
        if request.dropout_p > 0.0:
            probs = F.dropout(probs, p=request.dropout_p, training=True)
        return weighted_values(probs, request.value), probs if request.need_weights else None


BACKEND = MathBackend()
