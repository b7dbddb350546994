"""The attention core: one entry point over PyTorch's fused kernels and an explicit math path.

Shape letters, used in every docstring of headwise:

====  =====================================================
B     batch size
L     query length (target sequence)
S     key/value length (source sequence)
E     embedding dimension (``embed_dim``)
H     query heads (``num_heads``)
K     key/value heads (``num_kv_heads``); K divides H
D     head dimension (``head_dim``)
====  =====================================================

Internal layout is (B, H, L, D).  Masks have one polarity: a boolean mask is
``True`` where a query *may attend* a key; a floating mask is added to the scores.
A query row whose keys are all masked gives a zero output row and zero weights on
every backend, never NaN, forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headwise.functional._dispatch import PRIORITY, Explanation, build_request, explain, run_plain, select
from headwise.functional._masks import causal_mask, from_torch_bool_mask, merge_masks

__all__ = [
    "PRIORITY",
    "Explanation",
    "attention",
    "attention_mean_weights",
    "attention_weights",
    "causal_mask",
    "explain",
    "from_torch_bool_mask",
    "merge_masks",
    "needs_autograd",
    "small_weight_maps",
]


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention, softmax(Q K^T * scale + mask) V, per head.

    Args:
        query, key, value: the projected heads.  K may be smaller than H
            (grouped-query / multi-query attention): query head ``h`` uses kv head
            ``h // (H / K)``.
        attn_mask: ``None``; a bool mask, ``True`` = may attend; or a float mask of the
            query's dtype added to the scores.  Broadcastable to (B, H, L, S).
        is_causal: query ``i`` attends keys ``j <= i + S - L`` (bottom-right aligned: equal
            to the usual lower triangle when L == S, and right for decoding with a cache
            of earlier keys).  Combines with ``attn_mask``.
        scale: multiplies Q K^T; ``None`` means ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities.  Pass 0 in evaluation.
        need_weights: also return the attention probabilities (after dropout).  Only the
            ``"math"`` backend returns them; ``"auto"`` then picks it.
        backend: ``"auto"`` (first in :data:`PRIORITY` that can run), ``"sdpa"`` or
            ``"math"``.  A named backend that cannot serve the call raises
            :class:`~headwise.errors.BackendError` with the reason.

    Returns:
        ``(output, weights)``; ``weights`` is ``None`` unless ``need_weights``.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) ->
        output (B, H, L, Dv), weights (B, H, L, S).
    """
    if attn_mask is None and scale is None and not need_weights and dropout_p == 0.0 and backend == "auto":
        output = run_plain(query, key, value, is_causal)  # the common call, decoding steps included
        if output is not None:
            return output, None
    request = build_request(
        query,
        key,
        value,
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        dropout_p=dropout_p,
        need_weights=need_weights,
    )
    return select(request, backend).run(request)


def attention_weights(
    query: Tensor,
    key: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    average_heads: bool = False,
) -> Tensor:
    """Attention probabilities alone, with the same masks and conventions as :func:`attention`.

    With ``average_heads=True`` the mean over heads is built a block of query rows at
    a time and its backward recomputes the blocks, so only the (B, L, S) result is
    held, never every head's map.  Use this beside a fused ``attention`` call when
    both the output and the weights are wanted.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, H, L, S), or (B, L, S) averaged.
    """
    from headwise.functional._backends.math import probabilities
    from headwise.functional._weights import mean_head_weights

    request = build_request(
        query,
        key,
        key,
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        dropout_p=0.0,
        need_weights=True,
    )
    prepared = request.prepared_mask(fused_causal=False)
    if average_heads:
        mask_needs_grad = prepared.mask is not None and prepared.mask.requires_grad
        if not mask_needs_grad:
            return mean_head_weights(query, key, prepared, request.scale)
        # a trainable float mask needs autograd through the mask: build the full maps
        return probabilities(query, key, prepared, request.scale).mean(dim=1)  # (B, L, S)
    return probabilities(query, key, prepared, request.scale)  # (B, H, L, S)


def needs_autograd(*tensors: Tensor) -> bool:
    """Whether autograd will record an operation on ``tensors`` (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


#: Training with weights returned: up to this many map elements (B * H * L * S), one math pass
#: that keeps every head's map for backward beats the fused kernel plus recomputed weights
#: (measured on CPU: 1.6x faster at 1-2 M elements, even at 8 M, slower beyond); kept at 2 M
#: so that the maps held for backward stay small (a few MiB).
SMALL_WEIGHT_MAPS = 2**21


def small_weight_maps(query: Tensor, key: Tensor) -> bool:
    """Whether every head's (L, S) map of this call has at most :data:`SMALL_WEIGHT_MAPS` elements in all.

    Shape:
        query (B, H, L, D), key (B, K, S, D).
    """
    batch, heads, query_len, _ = query.shape
    return batch * heads * query_len * key.shape[-2] <= SMALL_WEIGHT_MAPS


def attention_mean_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention output and the attention weights averaged over heads, memory-lean.

    This is what ``torch.nn.MultiheadAttention`` returns by default.  Neither path ever
    holds every head's L x S map at once:

    * when autograd needs the result, the output comes from the fused kernel (its
      backward stores no L x S map) and the averaged weights are computed beside it by
      :func:`attention_weights` (block-wise, recomputed in backward); except for small
      maps (:func:`small_weight_maps`), where one math pass is faster and holding the
      maps costs little;
    * otherwise (inference) both come from one block-wise pass of the math path, which
      computes Q K^T once for the two of them.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv)
        -> output (B, H, L, Dv), weights (B, L, S).
    """
    from headwise.functional._weights import output_and_mean_weights

    if needs_autograd(query, key, value):
        if small_weight_maps(query, key):  # one math pass (Q K^T once) is faster, and its maps are small
            output, weights = attention(
                query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, need_weights=True,
                backend="math",
            )  # (B, H, L, Dv), (B, H, L, S)
            return output, weights.mean(dim=1)  # (B, L, S)
        output, _ = attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
        weights = attention_weights(query, key, attn_mask=attn_mask, is_causal=is_causal, scale=scale, average_heads=True)
        return output, weights
    request = build_request(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=0.0, need_weights=True
    )
    return output_and_mean_weights(query, key, value, request.prepared_mask(fused_causal=False), request.scale)
