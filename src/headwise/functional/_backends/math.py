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


def probabilities(query: Tensor, key: Tensor, prepared: PreparedMask, scale: float) -> Tensor:
    """Attention probabilities softmax(Q K^T * scale + mask), zero on rows with no key.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, H, L, S).
    """
    key = expand_kv(key, query.shape[1])  # (B, H, S, D)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (B, H, L, S)
    mask = prepared.mask
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    if scores.dtype in (torch.float16, torch.bfloat16):
        probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    else:
        probs = torch.softmax(scores, dim=-1)
    if prepared.alive is not None:
        probs = probs * prepared.alive  # rows with no key become zero
    return probs


class MathBackend:
    name = "math"

    def check(self, request: AttentionRequest) -> str | None:
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        prepared = request.prepared_mask(fused_causal=False)
        probs = probabilities(request.query, request.key, prepared, request.scale)  # (B, H, L, S)
        if request.dropout_p > 0.0:
            probs = F.dropout(probs, p=request.dropout_p, training=True)
        value = expand_kv(request.value, request.num_heads)  # (B, H, S, Dv)
        output = torch.matmul(probs, value)  # (B, H, L, Dv)
        return output, probs if request.need_weights else None


BACKEND = MathBackend()
