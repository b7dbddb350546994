"""Per-head statistics of long inputs, chunked over queries: never an L x S map.

Entropy of each attention row, mean distance |i - j| it attends over, and the norm of
the head's output, each averaged over the (real) queries.  The weights of a block of
``chunk_size`` query rows are built, reduced and dropped before the next block, so
memory is O(chunk_size * S) whatever L is.  Works for full attention, a
:class:`~headwise.variants.SlidingWindow` (its mask rows) and a
:class:`~headwise.variants.LinearAttention` (its normalized phi(q) . phi(k) rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from headwise.errors import ShapeError, fmt_shape
from headwise.functional import attention, merge_masks
from headwise.functional.kernels import expand_kv

__all__ = ["LongHeadStatistics", "streaming_head_statistics"]


@dataclass(frozen=True)
class LongHeadStatistics:
    """Per-head means over the real queries of each sequence.

    Attributes:
        entropy: entropy of the attention row in nats (0 = one key, log S = uniform).
        distance: mean |i - j| in positions between a query and the keys it attends.
        output_norm: L2 norm of the head's output vector (weights @ V).
        num_queries: real queries averaged over, per sequence.

    Shape:
        entropy, distance, output_norm (B, H); num_queries (B,).
    """

    entropy: Tensor
    distance: Tensor
    output_norm: Tensor
    num_queries: Tensor


def streaming_head_statistics(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    variant: nn.Module | None = None,
    query_mask: Tensor | None = None,
    chunk_size: int = 256,
) -> LongHeadStatistics:
    """Entropy, mean distance and output norm per head, chunked over queries.

    Args:
        query, key, value: the projected heads of one layer.
        attn_mask: bool (True = may attend) or additive, broadcastable to (B, H, L, S).
        is_causal: bottom-right aligned causal mask, built per chunk.
        scale: ``None`` = 1/sqrt(D).
        variant: ``None`` (full softmax attention), a ``SlidingWindow`` or a
            ``LinearAttention``: the statistics of the attention that variant computes.
        query_mask: (B, L) bool, the queries to average over (e.g. not padding).
        chunk_size: query rows per chunk; peak memory is about B * H * chunk_size * S.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> statistics (B, H).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    batch, heads, query_len, _ = query.shape
    key_len = key.shape[-2]
    if query_mask is not None and (query_mask.shape != (batch, query_len) or query_mask.dtype != torch.bool):
        raise ShapeError(
            f"query_mask has shape {fmt_shape(query_mask.shape)} and dtype {query_mask.dtype}; expected bool "
            f"(B, L) = {fmt_shape((batch, query_len))}, True for the queries to average over."
        )
    device, acc = query.device, torch.float64
    value = expand_kv(value, heads)  # (B, H, S, Dv)
    offset = key_len - query_len
    columns = torch.arange(key_len, device=device)  # (S,)
    sums = torch.zeros(3, batch, heads, dtype=acc, device=device)  # entropy, distance, norm
    with torch.no_grad():
        for start in range(0, query_len, chunk_size):
            end = min(start + chunk_size, query_len)
            positions = torch.arange(start, end, device=device) + offset  # (c,)
            weights = _chunk_weights(
                query, key, (start, end), positions, columns, attn_mask, is_causal, scale, variant
            )  # (B, H, c, S)
            plogp = torch.special.xlogy(weights, weights)  # (B, H, c, S), 0 log 0 = 0
            gap = (positions[:, None] - columns[None, :]).abs().to(weights.dtype)  # (c, S)
            out = weights @ value  # (B, H, c, Dv)
            rows = torch.ones(batch, end - start, dtype=acc, device=device) if query_mask is None else (
                query_mask[:, start:end].to(acc)
            )  # (B, c)
            per_row = torch.stack([-plogp.sum(-1), (weights * gap).sum(-1), out.norm(dim=-1)]).to(acc)  # (3, B, H, c)
            sums += (per_row * rows[None, :, None, :]).sum(dim=-1)
    count = (
        torch.full((batch,), query_len, dtype=acc, device=device) if query_mask is None else query_mask.sum(1).to(acc)
    )  # (B,)
    means = (sums / count.clamp_min(1)[None, :, None]).to(query.dtype)  # (3, B, H)
    return LongHeadStatistics(means[0], means[1], means[2], count.long())


def _chunk_weights(
    query: Tensor,
    key: Tensor,
    rows: tuple[int, int],
    positions: Tensor,
    columns: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    variant: nn.Module | None,
) -> Tensor:
    """Attention weights of query rows ``rows``.  Shape: -> (B, H, c, S)."""
    start, end = rows
    if variant is not None and hasattr(variant, "chunk_weights"):
        return variant.chunk_weights(query, key, rows, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    mask = None
    if variant is not None and hasattr(variant, "chunk_mask"):
        mask = variant.chunk_mask(
            rows, query.shape[-2], key.shape[-2], is_causal=is_causal, device=query.device
        )  # (c, S)
    elif variant is not None:
        raise TypeError(
            f"variant {type(variant).__name__} has neither chunk_mask nor chunk_weights; streaming statistics "
            "support full attention, SlidingWindow and LinearAttention."
        )
    elif is_causal:
        mask = columns[None, :] <= positions[:, None]  # (c, S)
    if attn_mask is not None:
        user = attn_mask[..., start:end, :] if attn_mask.dim() >= 2 and attn_mask.shape[-2] != 1 else attn_mask
        mask = merge_masks(mask, user, dtype=query.dtype)
    chunk = query[:, :, start:end]  # (B, H, c, D)
    _, weights = attention(chunk, key, key, attn_mask=mask, scale=scale, need_weights=True)  # (B, H, c, S)
    return weights


def weights_refused(variant: str) -> ValueError:
    """The error a long-sequence variant gives for ``need_weights=True``: it never forms an L x S map."""
    return ValueError(
        f"{variant} never forms attention weights (need_weights=True would be an L x S map); "
        "use headwise.variants.streaming_head_statistics for per-head statistics of long inputs."
    )
