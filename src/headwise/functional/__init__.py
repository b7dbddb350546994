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
every backend, never NaN, forward and backward; a query row holding a NaN gives a NaN
output row on every backend (NaN in, NaN out), fused or not.

:func:`attention` dispatches to a backend (:data:`PRIORITY`): ``"sdpa"``, PyTorch's
fused kernel, when no weights are returned; ``"weights"`` when they are (memory-lean:
averaged weights never hold every head's map); ``"math"``, the explicit reference that
supports everything and is the tests' oracle.  :func:`explain` says which one a call
uses and why the others cannot.  :mod:`headwise.functional.kernels` holds the pieces
the backends and the variants share.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from headwise.functional import _dispatch
from headwise.functional._dispatch import PRIORITY, Explanation
from headwise.functional._masks import causal_mask, from_torch_bool_mask, merge_masks
from headwise.functional._request import build_request

__all__ = [
    "PRIORITY",
    "Explanation",
    "attention",
    "causal_mask",
    "explain",
    "from_torch_bool_mask",
    "merge_masks",
]

#: Names this module had before, and what replaces each.
_REPLACED = {
    "attention_weights": "attention(q, k, v, need_weights=True)[1] (average_weights=True for the head mean)",
    "attention_mean_weights": "attention(q, k, v, need_weights=True, average_weights=True)",
    "needs_autograd": "nothing: the 'weights' backend decides privately how to build the weights",
    "small_weight_maps": "nothing: the 'weights' backend decides privately how to build the weights",
    "SMALL_WEIGHT_MAPS": "WeightsBackend(small_maps=...) in headwise.functional._backends.weights",
}


def __getattr__(name: str) -> object:
    if name in _REPLACED:
        raise AttributeError(f"headwise.functional.{name} was removed; use {_REPLACED[name]}.")
    raise AttributeError(f"module 'headwise.functional' has no attribute {name!r}")


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
    average_weights: bool = False,
    kv_index: Sequence[int] | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention, softmax(Q K^T * scale + mask) V, per head.

    Args:
        query, key, value: the projected heads.  K may be smaller than H
            (grouped-query / multi-query attention): query head ``h`` uses kv head
            ``h // (H / K)``, or ``kv_index[h]`` when given.
        attn_mask: ``None``; a bool mask, ``True`` = may attend; or a float mask of the
            query's dtype added to the scores.  Broadcastable to (B, H, L, S).
        is_causal: query ``i`` attends keys ``j <= i + S - L`` (bottom-right aligned: equal
            to the usual lower triangle when L == S, and right for decoding with a cache
            of earlier keys).  Combines with ``attn_mask``.
        scale: multiplies Q K^T; ``None`` means ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities.  Pass 0 in evaluation.
        need_weights: also return the attention probabilities (after dropout: the ones the
            output used).
        average_weights: return the weights averaged over heads, (B, L, S), which is what
            ``torch.nn.MultiheadAttention`` returns by default; built without holding every
            head's map.  Needs ``need_weights``.
        kv_index: for groups of unequal size (query heads pruned inside kv groups), the kv
            head each query head reads, one entry per query head; K need not divide H then.
            The heads are mapped explicitly before any backend runs.
        backend: ``"auto"`` (the first in :data:`PRIORITY` that can run), ``"sdpa"``,
            ``"weights"`` or ``"math"``.  A named backend that cannot serve the call raises
            :class:`~headwise.errors.BackendError` with the reason.

    Returns:
        ``(output, weights)``; ``weights`` is ``None`` unless ``need_weights``.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) ->
        output (B, H, L, Dv), weights (B, H, L, S), or (B, L, S) with ``average_weights``.
    """
    request = build_request(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
        need_weights=need_weights, average_weights=average_weights, kv_index=kv_index,
    )
    return _dispatch.select(request, backend).run(request)


def explain(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    average_weights: bool = False,
    backend: str = "auto",
) -> Explanation:
    """Say which backend ``attention(...)`` with these arguments would use, and why.

    Takes the same arguments as :func:`attention`.  Returns an :class:`Explanation` whose
    ``reasons`` maps every backend to ``None`` (it can run) or the reason it cannot;
    ``backend`` is the one the call would use.
    """
    request = build_request(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
        need_weights=need_weights, average_weights=average_weights,
    )
    return _dispatch.explain(request, backend)
