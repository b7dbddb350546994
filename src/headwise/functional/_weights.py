"""Head-averaged attention weights without holding every head's L x S map.

``torch.nn.MultiheadAttention`` returns weights averaged over heads by default.  The
straightforward way builds all H maps (and autograd keeps them for backward).  Here
the average is built a block of query rows and one head at a time, and the backward
pass recomputes each block's probabilities instead of storing them: memory is the
(B, L, S) result plus one block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headwise.functional._backends.math import scaled_query, scores_of, softmax_rows
from headwise.functional._dispatch import PreparedMask

#: Elements of one block of per-head scores, (B, H, rows, S), in backward.  On the CPU 2**20
#: floats (4 MiB in fp32) stay in cache between the softmax and the head average; on an
#: accelerator each block costs kernel launches, so blocks are 64x larger there (256 MiB in fp32).
BLOCK_ELEMENTS = 1 << 20
ACCELERATOR_BLOCK_FACTOR = 64
#: Elements of one head's scores for a block of query rows, (B, rows, S), in forward, which
#: runs the heads of a block one after another.  A head at a time lets the block have 8x to 12x
#: more rows for the same memory, so each Q K^T product is larger and closer to the CPU's matmul
#: rate: the drop-in's default call went from 1.10x to 1.28x torch's speed at L=4096 in inference
#: (`headwise bench mha`).  Among 2**20 to 2**22 floats, 2**21 (8 MiB in fp32) did best at
#: (B, H, L) = (1, 12, 4096) and within 6% of the best at (4, 8, 512) and (1, 8, 2048) on this
#: project's 2-core Xeon (`benchmarks/tuning.py weights`).
HEAD_BLOCK_ELEMENTS = 1 << 21


def _blocks(query: Tensor, key_len: int, *, one_head: bool = False) -> list[tuple[int, int]]:
    """Blocks of query rows whose scores, all heads' (or ``one_head``'s), fit the element budget.

    On an accelerator both get ``BLOCK_ELEMENTS * ACCELERATOR_BLOCK_FACTOR``: one head's
    block holds as much memory as all heads' did before heads were taken one at a time.
    """
    batch, heads, query_len, _ = query.shape
    if query.device.type != "cpu":
        budget = BLOCK_ELEMENTS * ACCELERATOR_BLOCK_FACTOR
    else:
        budget = HEAD_BLOCK_ELEMENTS if one_head else BLOCK_ELEMENTS
    step = max(1, budget // max(1, batch * (1 if one_head else heads) * key_len))
    return [(start, min(start + step, query_len)) for start in range(0, query_len, step)]


def _rows(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Rows ``start:stop`` of a (..., L or 1, X) tensor; broadcast rows stay as they are."""
    if t is None or t.shape[-2] == 1:
        return t
    return t[..., start:stop, :]


def _mean_probs_by_head(
    query: Tensor,
    key: Tensor,
    scale: float,
    mask: Tensor | None,
    alive: Tensor | None,
    weights: Tensor,
    value: Tensor | None = None,
    output: Tensor | None = None,
) -> None:
    """Fill ``weights`` with the head-averaged probabilities (and ``output`` with P V when given).

    A block of query rows at a time, and within it one head at a time: each head's
    (B, rows, S) probabilities are added into the block's rows of ``weights`` (and
    multiplied by that head's values into its slice of ``output``), then
    dropped.  Inputs are read where they lie: a head's rows of ``query`` and its
    ``key``/``value`` are strided views (no copies), the scale is applied inside the
    Q K^T product, and the softmax runs in place in one reused scores buffer.

    Shape:
        query (B, H, L, D), key (B, K, S, D), mask broadcastable to
        (B, H, L, S), alive broadcastable to (B, H, L, 1), value (B, K, S, Dv) ->
        weights (B, L, S), output (B, H, L, Dv).
    """
    batch, heads, query_len, _ = query.shape
    kv_heads, key_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    key_t = key.transpose(-2, -1)  # (B, K, D, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = ~mask  # True = masked, for masked_fill_; inverted before broadcasting, at its own size
        mask = mask.broadcast_to((batch, heads, query_len, key_len))  # a view
    if alive is not None:
        alive = alive.broadcast_to((batch, heads, query_len, 1))  # a view
    low_precision = weights.dtype.itemsize < 4  # half types: add the heads up in float32
    blocks = _blocks(query, key_len, one_head=True)
    buffer = query.new_empty(batch * (blocks[0][1] - blocks[0][0]) * key_len)  # every head's scores in turn
    # each head's (B, L, X) view, taken once: at short lengths the per-head slicing is a visible cost
    query_heads = query.unbind(1)  # H x (B, L, D)
    key_t_heads = key_t.unbind(1)  # K x (B, D, S)
    value_heads = value.unbind(1) if value is not None else None  # K x (B, S, Dv)
    output_heads = output.unbind(1) if output is not None else None  # H x (B, L, Dv)
    mask_heads = mask.unbind(1) if mask is not None else None  # H x (B, L, S)
    alive_heads = alive.unbind(1) if alive is not None else None  # H x (B, L, 1)
    whole = len(blocks) == 1
    for start, stop in blocks:
        rows = weights[:, start:stop]  # (B, rows, S)
        block = rows.float() if low_precision else rows  # (B, rows, S)
        scores = buffer[: batch * (stop - start) * key_len].view(batch, stop - start, key_len)  # (B, rows, S)
        for h in range(heads):
            q_h = query_heads[h] if whole else query_heads[h][:, start:stop]  # (B, rows, D)
            torch.baddbmm(scores, q_h, key_t_heads[h // groups], beta=0.0, alpha=scale, out=scores)  # (B, rows, S)
            if mask_heads is not None:
                head_mask = mask_heads[h] if whole else mask_heads[h][:, start:stop]  # (B, rows, S)
                if head_mask.dtype == torch.bool:
                    scores.masked_fill_(head_mask, float("-inf"))
                else:
                    scores.add_(head_mask)
            torch.softmax(scores, dim=-1, out=scores)  # half types accumulate in float32 inside the kernel
            if alive_heads is not None:
                scores.mul_(alive_heads[h] if whole else alive_heads[h][:, start:stop])  # rows with no key become zero
            if value_heads is not None and output_heads is not None:
                # (bmm's out= into the strided slice is slower than a new product and a copy)
                out_h = output_heads[h] if whole else output_heads[h][:, start:stop]  # (B, rows, Dv)
                out_h.copy_(torch.bmm(scores, value_heads[h // groups]))
            if h == 0:
                block.copy_(scores)
            else:
                block.add_(scores)
        block.div_(heads)
        if low_precision:
            rows.copy_(block)


def _block_probs(q_scaled: Tensor, key: Tensor, mask: Tensor | None, alive: Tensor | None, start: int, stop: int) -> Tensor:
    scores = scores_of(q_scaled[:, :, start:stop], key)  # (B, H, rows, S)
    return softmax_rows(scores, _rows(mask, start, stop), _rows(alive, start, stop))


class _MeanHeadWeights(torch.autograd.Function):
    """mean over heads of softmax(Q K^T * scale + mask), built and differentiated block-wise."""

    @staticmethod
    def forward(ctx, query, key, mask, alive, scale):  # type: ignore[override]
        batch, _, query_len, _ = query.shape
        key_len = key.shape[-2]
        out = query.new_empty(batch, query_len, key_len)  # (B, L, S)
        _mean_probs_by_head(query, key, scale, mask, alive, out)
        ctx.save_for_backward(query, key, mask, alive)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, mask, alive = ctx.saved_tensors
        scale = ctx.scale
        batch, heads, _, head_dim = query.shape
        kv_heads, key_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        q_scaled = scaled_query(query, scale)  # (B, H, L, D)
        key = key.contiguous()
        grad_query = torch.empty_like(q_scaled) if ctx.needs_input_grad[0] else None
        grad_key = torch.zeros_like(key) if ctx.needs_input_grad[1] else None
        for start, stop in _blocks(query, key_len):
            rows = stop - start
            probs = _block_probs(q_scaled, key, mask, alive, start, stop)  # (B, H, rows, S)
            grad_probs = grad_out[:, None, start:stop] / heads  # (B, 1, rows, S)
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))  # (B, H, rows, S)
            grad_scores = grad_scores.view(batch, kv_heads, groups * rows, key_len)  # (B, K, G*rows, S)
            if grad_query is not None:
                block = torch.matmul(grad_scores, key) * scale  # (B, K, G*rows, D)
                grad_query[:, :, start:stop] = block.view(batch, heads, rows, head_dim)
            if grad_key is not None:
                q_block = q_scaled[:, :, start:stop].reshape(batch, kv_heads, groups * rows, head_dim)  # (B, K, G*rows, D)
                grad_key += torch.matmul(grad_scores.transpose(-2, -1), q_block)  # (B, K, S, D)
        return grad_query, grad_key, None, None, None


def mean_head_weights(query: Tensor, key: Tensor, prepared: PreparedMask, scale: float) -> Tensor:
    """Head-averaged attention probabilities, block-wise in forward and backward.

    No gradient flows to the mask.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, L, S).
    """
    return _MeanHeadWeights.apply(query, key, prepared.mask, prepared.alive, scale)


def output_and_mean_weights(
    query: Tensor, key: Tensor, value: Tensor, prepared: PreparedMask, scale: float
) -> tuple[Tensor, Tensor]:
    """Output and head-averaged probabilities in one pass, for inference.

    Each head's probabilities for a block of query rows are computed once and used for
    both that head's output rows and the averaged weights, then dropped: one Q K^T for
    both, and never more than one head's block of a map.  No autograd.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv)
        -> output (B, H, L, Dv), weights (B, L, S).
    """
    batch, heads, query_len, _ = query.shape
    # laid out (B, L, H, Dv), the order the heads are gathered in for the output projection
    output = query.new_empty(batch, query_len, heads, value.shape[-1]).transpose(1, 2)  # (B, H, L, Dv)
    weights = query.new_empty(batch, query_len, key.shape[2])  # (B, L, S)
    _mean_probs_by_head(query, key, scale, prepared.mask, prepared.alive, weights, value, output)
    return output, weights
