"""Attention weights beside the output, without holding more of the L x S maps than needed.

``torch.nn.MultiheadAttention`` returns weights averaged over heads by default; built
the straightforward way that means every head's map, kept by autograd for backward.
This backend serves calls that return weights (no dropout, no trainable float mask;
those go to the math path) and picks privately how:

* no autograd (inference): averaged weights and the output come from one pass a block of
  query rows and one head at a time, so only one head's block of a map exists; per-head
  weights from one math pass (the maps are the result);
* autograd, small maps (B*H*L*S up to ``small_maps``): one math pass, whose maps autograd
  keeps (measured on CPU: 1.6x faster than the fused kernel plus recomputed weights);
* autograd, larger maps: the output from the fused kernel (its backward stores no map) and
  the weights beside it; averaged weights are built block-wise and their backward
  recomputes each block, so memory is the (B, L, S) result plus one block.
* under ``torch.jit.trace``: one math pass whatever the grad mode, so that the traced graph
  is the one the trace's check (a second run without autograd) records.

The budgets are arguments of :class:`WeightsBackend`; the registered instance uses the
defaults measured in ``benchmarks/tuning.py`` (docs/design.md lists them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from headwise.functional import kernels
from headwise.functional._request import AttentionRequest

__all__ = ["WeightsBackend"]


class WeightsBackend:
    """Weights-returning attention with memory-lean averaged weights.

    Args:
        small_maps: with autograd, calls with at most this many map elements (B*H*L*S) take
            one math pass.
        block_elements: elements of one block of all heads' scores, (B, H, rows, S), in the
            backward of averaged weights.  On the CPU 2**20 floats (4 MiB in fp32) stay in cache
            between the softmax and the head average.
        head_block_elements: elements of one head's scores for a block of query rows,
            (B, rows, S), in the forward of averaged weights, which runs the heads of a block
            one after another: blocks get 8x to 12x more rows for the same memory, so each
            Q K^T product is larger and closer to the CPU's matmul rate.
        accelerator_block_factor: on accelerators each block costs kernel launches, so both
            budgets are ``block_elements`` times this there.
    """

    name = "weights"

    def __init__(
        self,
        *,
        small_maps: int = 1 << 21,
        block_elements: int = 1 << 20,
        head_block_elements: int = 1 << 21,
        accelerator_block_factor: int = 64,
    ) -> None:
        self.small_maps = small_maps
        self.block_elements = block_elements
        self.head_block_elements = head_block_elements
        self.accelerator_block_factor = accelerator_block_factor

    def check(self, request: AttentionRequest) -> str | None:
        need_weights, _, dropout, mask_kind, *_ = request.signature
        if not need_weights:
            return "no weights are asked for (need_weights=False); the fused kernel serves the call"
        if dropout:
            return "dropout with weights: the weights returned must be the ones the output used (math path)"
        if mask_kind == "float+grad":
            return "a float mask that requires grad needs autograd through every head's map (math path)"
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        query, key, value, scale = request.query, request.key, request.value, request.scale
        prepared = request.prepared_mask(fused_causal=False)
        mask, alive = prepared.mask, prepared.alive
        grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
        batch, heads, query_len, _ = query.shape
        small = batch * heads * query_len * key.shape[-2] <= self.small_maps
        # torch.jit.trace records one path and checks it against a second trace run without
        # autograd: traced, the graph must not depend on grad mode, so it is one math pass
        tracing = torch.jit.is_tracing()
        if not grad and request.average_weights and not tracing:
            return self._output_and_mean(query, key, value, mask, alive, scale)
        if not grad or small or tracing:  # one math pass gives both
            probs = kernels.probabilities(query, key, mask, alive, scale)  # (B, H, L, S)
            output = kernels.weighted_values(probs, value)  # (B, H, L, Dv)
            return output, probs.mean(dim=1) if request.average_weights else probs
        fused = request.prepared_mask(fused_causal=True)
        output = kernels.sdpa(query, key, value, attn_mask=fused.mask, is_causal=fused.is_causal, scale=scale)
        if fused.alive is not None:
            output = output * fused.alive  # rows with no key become zero
        if request.average_weights:
            weights = _MeanHeadWeights.apply(query, key, mask, alive, scale, self)  # (B, L, S)
        else:
            weights = kernels.probabilities(query, key, mask, alive, scale)  # (B, H, L, S)
        return output, weights

    def _blocks(self, query: Tensor, key_len: int, *, one_head: bool) -> list[tuple[int, int]]:
        """Blocks of query rows whose scores, all heads' (or one head's), fit the element budget."""
        batch, heads, query_len, _ = query.shape
        if query.device.type != "cpu":
            budget = self.block_elements * self.accelerator_block_factor
        else:
            budget = self.head_block_elements if one_head else self.block_elements
        step = max(1, budget // max(1, batch * (1 if one_head else heads) * key_len))
        return [(start, min(start + step, query_len)) for start in range(0, query_len, step)]

    def _output_and_mean(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, alive: Tensor | None, scale: float
    ) -> tuple[Tensor, Tensor]:
        """Output and head-averaged probabilities in one pass, without autograd.

        Shape:
            query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv)
            -> output (B, H, L, Dv), weights (B, L, S).
        """
        batch, heads, query_len, _ = query.shape
        # laid out (B, L, H, Dv), the order the heads are gathered in for the output projection
        output = query.new_empty(batch, query_len, heads, value.shape[-1]).transpose(1, 2)  # (B, H, L, Dv)
        weights = query.new_empty(batch, query_len, key.shape[2])  # (B, L, S)
        self._mean_probs_by_head(query, key, scale, mask, alive, weights, value, output)
        return output, weights

    def _mean_probs_by_head(
        self,
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
        multiplied by that head's values into its slice of ``output``), then dropped.
        Inputs are read where they lie (a head's rows of ``query`` and its ``key``/``value``
        are strided views), the scale is applied inside the Q K^T product, and the softmax
        runs in place in one reused scores buffer.

        Shape:
            query (B, H, L, D), key (B, K, S, D), mask broadcastable to (B, H, L, S),
            alive broadcastable to (B, H, L, 1), value (B, K, S, Dv) -> weights (B, L, S),
            output (B, H, L, Dv).
        """
        batch, heads, query_len, _ = query.shape
        kv_heads, key_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = ~mask  # True = masked, for masked_fill_; inverted before broadcasting, at its own size
            mask = mask.broadcast_to((batch, heads, query_len, key_len))  # a view
        if alive is not None:
            alive = alive.broadcast_to((batch, heads, query_len, 1))  # a view
        low_precision = weights.dtype.itemsize < 4  # half types: add the heads up in float32
        blocks = self._blocks(query, key_len, one_head=True)
        buffer = query.new_empty(batch * (blocks[0][1] - blocks[0][0]) * key_len)  # every head's scores in turn
        # each head's (B, L, X) view, taken once
        query_heads = query.unbind(1)  # H x (B, L, D)
        key_t_heads = key.transpose(-2, -1).unbind(1)  # K x (B, D, S)
        value_heads = value.unbind(1) if value is not None else None  # K x (B, S, Dv)
        output_heads = output.unbind(1) if output is not None else None  # H x (B, L, Dv)
        mask_heads = mask.unbind(1) if mask is not None else None  # H x (B, L, S)
        alive_heads = alive.unbind(1) if alive is not None else None  # H x (B, L, 1)
        for start, stop in blocks:
            rows = weights[:, start:stop]  # (B, rows, S)
            block = rows.float() if low_precision else rows  # (B, rows, S)
            scores = buffer[: batch * (stop - start) * key_len].view(batch, stop - start, key_len)  # (B, rows, S)
            for h in range(heads):
                torch.baddbmm(
                    scores, query_heads[h][:, start:stop], key_t_heads[h // groups], beta=0.0, alpha=scale, out=scores
                )  # (B, rows, S)
                if mask_heads is not None:
                    head_mask = mask_heads[h][:, start:stop]  # (B, rows, S)
                    if head_mask.dtype == torch.bool:
                        scores.masked_fill_(head_mask, float("-inf"))
                    else:
                        scores.add_(head_mask)
                torch.softmax(scores, dim=-1, out=scores)  # half types accumulate in float32 inside the kernel
                if alive_heads is not None:
                    scores.mul_(alive_heads[h][:, start:stop])  # rows with no key become zero
                if value_heads is not None and output_heads is not None:
                    # (bmm's out= into the strided slice is slower than a new product and a copy)
                    output_heads[h][:, start:stop].copy_(torch.bmm(scores, value_heads[h // groups]))  # (B, rows, Dv)
                if h == 0:
                    block.copy_(scores)
                else:
                    block.add_(scores)
            block.div_(heads)
            if low_precision:
                rows.copy_(block)


class _MeanHeadWeights(torch.autograd.Function):
    """mean over heads of softmax(Q K^T * scale + mask), built and differentiated block-wise.  No gradient to the mask."""

    @staticmethod
    def forward(ctx, query, key, mask, alive, scale, backend):  # type: ignore[override]
        batch, _, query_len, _ = query.shape
        out = query.new_empty(batch, query_len, key.shape[-2])  # (B, L, S)
        backend._mean_probs_by_head(query, key, scale, mask, alive, out)
        ctx.save_for_backward(query, key, mask, alive)
        ctx.scale, ctx.backend = scale, backend
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        query, key, mask, alive = ctx.saved_tensors
        scale = ctx.scale
        batch, heads, _, head_dim = query.shape
        kv_heads, key_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        q_scaled = kernels.scaled_query(query, scale)  # (B, H, L, D)
        key = key.contiguous()
        grad_query = torch.empty_like(q_scaled) if ctx.needs_input_grad[0] else None
        grad_key = torch.zeros_like(key) if ctx.needs_input_grad[1] else None
        for start, stop in ctx.backend._blocks(query, key_len, one_head=False):
            rows = stop - start
            probs = kernels.softmax_rows(
                kernels.scores(q_scaled[:, :, start:stop], key), _rows(mask, start, stop), _rows(alive, start, stop)
            )  # (B, H, rows, S)
            grad_probs = grad_out[:, None, start:stop] / heads  # (B, 1, rows, S)
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))  # (B, H, rows, S)
            grad_scores = grad_scores.view(batch, kv_heads, groups * rows, key_len)  # (B, K, G*rows, S)
            if grad_query is not None:
                block = torch.matmul(grad_scores, key) * scale  # (B, K, G*rows, D)
                grad_query[:, :, start:stop] = block.view(batch, heads, rows, head_dim)
            if grad_key is not None:
                q_block = q_scaled[:, :, start:stop].reshape(batch, kv_heads, groups * rows, head_dim)  # (B, K, G*rows, D)
                grad_key += torch.matmul(grad_scores.transpose(-2, -1), q_block)  # (B, K, S, D)
        return grad_query, grad_key, None, None, None, None


def _rows(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Rows ``start:stop`` of a (..., L or 1, X) tensor; broadcast rows stay as they are."""
    if t is None or t.shape[-2] == 1:
        return t
    return t[..., start:stop, :]


BACKEND = WeightsBackend()
