"""Head-averaged attention weights without holding every head's L x S map.

``torch.nn.MultiheadAttention`` returns weights averaged over heads by default.  The
straightforward way builds all H maps (and autograd keeps them for backward).  Here
the average is built a block of query rows at a time, and the backward pass
recomputes each block's probabilities instead of storing them: memory is the
(B, L, S) result plus one block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headwise.functional._backends.math import expand_kv, probabilities
from headwise.functional._dispatch import PreparedMask

#: Elements of one block of per-head scores, (B, H, rows, S); 2**22 floats = 16 MiB in fp32.
BLOCK_ELEMENTS = 1 << 22


def _rows_per_block(batch: int, heads: int, key_len: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, batch * heads * key_len))


def _slice_rows(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Rows ``start:stop`` of a (..., L or 1, X) tensor; broadcast rows stay as they are."""
    if t is None or t.shape[-2] == 1:
        return t
    return t[..., start:stop, :]


class _MeanHeadWeights(torch.autograd.Function):
    """mean over heads of softmax(Q K^T * scale + mask), built and differentiated block-wise."""

    @staticmethod
    def forward(ctx, query, key, mask, alive, scale):  # type: ignore[override]
        batch, heads, query_len, _ = query.shape
        key_len = key.shape[-2]
        step = _rows_per_block(batch, heads, key_len)
        out = query.new_empty(batch, query_len, key_len)  # (B, L, S)
        for start in range(0, query_len, step):
            stop = min(start + step, query_len)
            prepared = PreparedMask(_slice_rows(mask, start, stop), False, _slice_rows(alive, start, stop))
            probs = probabilities(query[:, :, start:stop], key, prepared, scale)  # (B, H, rows, S)
            out[:, start:stop] = probs.mean(dim=1)  # (B, rows, S)
        ctx.save_for_backward(query, key, mask, alive)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, mask, alive = ctx.saved_tensors
        scale = ctx.scale
        batch, heads, query_len, _ = query.shape
        kv_heads, key_len = key.shape[1], key.shape[-2]
        key_h = expand_kv(key, heads)  # (B, H, S, D)
        grad_query = torch.zeros_like(query) if ctx.needs_input_grad[0] else None
        grad_key_h = torch.zeros_like(key_h) if ctx.needs_input_grad[1] else None
        step = _rows_per_block(batch, heads, key_len)
        for start in range(0, query_len, step):
            stop = min(start + step, query_len)
            prepared = PreparedMask(_slice_rows(mask, start, stop), False, _slice_rows(alive, start, stop))
            q_block = query[:, :, start:stop]  # (B, H, rows, D)
            probs = probabilities(q_block, key, prepared, scale)  # (B, H, rows, S)
            grad_probs = grad_out[:, None, start:stop] / heads  # (B, 1, rows, S)
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
            grad_scores = grad_scores * scale  # (B, H, rows, S)
            if grad_query is not None:
                grad_query[:, :, start:stop] = grad_scores @ key_h  # (B, H, rows, D)
            if grad_key_h is not None:
                grad_key_h += grad_scores.transpose(-2, -1) @ q_block  # (B, H, S, D)
        grad_key = None
        if grad_key_h is not None:
            grad_key = grad_key_h.view(batch, kv_heads, heads // kv_heads, key_len, -1).sum(2)  # (B, K, S, D)
        return grad_query, grad_key, None, None, None


def mean_head_weights(query: Tensor, key: Tensor, prepared: PreparedMask, scale: float) -> Tensor:
    """Head-averaged attention probabilities, block-wise in forward and backward.

    No gradient flows to the mask.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, L, S).
    """
    return _MeanHeadWeights.apply(query, key, prepared.mask, prepared.alive, scale)
