"""One validated call of :func:`headwise.functional.attention`: what backends receive.

Backends import :class:`AttentionRequest` and :class:`PreparedMask` from here, never the
dispatcher.  :func:`build_request` validates the arguments (every message names the
layout and the fix); :meth:`AttentionRequest.prepared_mask` folds ``attn_mask`` and
``is_causal`` into one mask for a kernel and opens the rows that keep no key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from headwise.errors import ShapeError, fmt_shape
from headwise.functional import _masks, kernels

__all__ = ["AttentionRequest", "PreparedMask", "Signature", "build_request"]

#: What selecting a backend may depend on: need_weights, average_weights, dropout on, mask kind
#: (None, "bool", "float" or "float+grad"), is_causal, dtype and device type.
Signature = tuple[bool, bool, bool, "str | None", bool, torch.dtype, str]


@dataclass(slots=True)
class PreparedMask:
    """A request's masks folded into one, ready for a kernel.

    ``mask`` is None, or bool (True = may attend) or additive float, broadcastable to
    (B, H, L, S).  ``is_causal`` is True only when the kernel itself should apply the
    (square) causal mask.  ``alive`` is None, or (..., L, 1) bool: the rows that keep at
    least one key; the other rows were opened in ``mask`` and must be zeroed in the output.
    """

    mask: Tensor | None
    is_causal: bool
    alive: Tensor | None


_NO_MASK = PreparedMask(None, False, None)


@dataclass(slots=True)
class AttentionRequest:
    """One validated call of :func:`headwise.functional.attention`.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv), attn_mask
        broadcastable to (B, H, L, S).
    """

    query: Tensor
    key: Tensor
    value: Tensor
    attn_mask: Tensor | None = None
    is_causal: bool = False
    scale: float = 1.0
    dropout_p: float = 0.0
    need_weights: bool = False
    average_weights: bool = False

    @property
    def signature(self) -> Signature:
        """The static properties a backend's ``check`` may read (see :data:`Signature`)."""
        mask = self.attn_mask
        if mask is None:
            kind = None
        elif mask.dtype == torch.bool:
            kind = "bool"
        else:
            kind = "float+grad" if mask.requires_grad else "float"
        query = self.query
        return (
            self.need_weights, self.average_weights, self.dropout_p > 0.0, kind, self.is_causal, query.dtype,
            query.device.type,
        )

    def prepared_mask(self, *, fused_causal: bool) -> PreparedMask:
        """Fold ``attn_mask`` and ``is_causal`` into one mask for a kernel.

        With ``fused_causal=True`` a plain square causal call is left to the kernel.  Rows
        that keep no key are opened (they attend every key) and reported in ``alive``.
        """
        query_len = self.query.shape[-2]
        mask = self.attn_mask
        # a single query at the bottom-right corner sees every key: causal adds nothing
        is_causal = self.is_causal and query_len != 1
        if mask is None and not is_causal:
            return _NO_MASK
        key_len = self.key.shape[-2]
        if is_causal:
            if mask is None and fused_causal and query_len == key_len:
                return PreparedMask(None, True, None)
            causal = _masks.causal_mask(query_len, key_len, device=self.query.device)  # (L, S)
            if mask is None and query_len <= key_len:
                return PreparedMask(causal, False, None)  # every row keeps a key
            mask = _masks.merge_masks(mask, causal, dtype=self.query.dtype)
        alive = _masks.row_alive(mask)  # (..., L, 1)
        return PreparedMask(_masks.open_dead_rows(mask, alive), False, alive)


def build_request(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    need_weights: bool,
    average_weights: bool,
    kv_index: Sequence[int] | None = None,
) -> AttentionRequest:
    """Validate the arguments of :func:`headwise.functional.attention` and bundle them.

    With ``kv_index`` (query head h reads kv head ``kv_index[h]``) the key and value heads are
    mapped to the query heads here, explicitly, so every backend receives one kv head per
    query head.
    """
    if kv_index is not None:
        key, value = _mapped_kv(query, key, value, kv_index)
    _check_qkv(query, key, value)
    if attn_mask is not None:
        _check_mask(attn_mask, query, key)
    for name, flag in (("is_causal", is_causal), ("need_weights", need_weights), ("average_weights", average_weights)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}.")
    if average_weights and not need_weights:
        raise ValueError("average_weights=True averages the returned weights; it needs need_weights=True.")
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}.")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    elif not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(
            f"scale must be a positive finite number, got {scale!r}; leave it None for 1/sqrt(head_dim)="
            f"{1.0 / math.sqrt(query.shape[-1]):.6g}."
        )
    return AttentionRequest(
        query, key, value, attn_mask, is_causal, float(scale), float(dropout_p), need_weights, average_weights
    )


def _mapped_kv(query: Tensor, key: Tensor, value: Tensor, kv_index: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Key and value with one head per query head, by ``kv_index``.  Shape: -> (B, H, S, D) each."""
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (query, key, value)):
        return key, value  # _check_qkv explains what is wrong
    heads, kv_heads = query.shape[1], key.shape[1]
    if isinstance(kv_index, (str, bytes)) or not isinstance(kv_index, Sequence):
        raise TypeError(f"kv_index must be a sequence of kv head indices (one per query head), got {type(kv_index).__name__}.")
    values = list(kv_index)
    if len(values) != heads or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < kv_heads for i in values):
        raise ShapeError(
            f"kv_index must give, for each of the H={heads} query heads, a kv head in 0..{kv_heads - 1} "
            f"(K={kv_heads}); got {values}."
        )
    index = torch.tensor(values, dtype=torch.long, device=key.device)  # (H,)
    return kernels.expand_kv(key, heads, index), kernels.expand_kv(value, heads, index)  # (B, H, S, D) each


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    # One cheap test for the common, valid call; the detailed checks below only run when it fails.
    try:
        batch, heads, _, head_dim = query.shape
        k_batch, kv_heads, key_len, k_dim = key.shape
        v_batch, v_heads, v_len, _ = value.shape
        dtype = query.dtype
        if (
            batch == k_batch == v_batch
            and kv_heads == v_heads
            and key_len == v_len
            and k_dim == head_dim
            and kv_heads > 0
            and heads % kv_heads == 0
            and dtype.is_floating_point
            and key.dtype == dtype
            and value.dtype == dtype
            and query.device == key.device == value.device
        ):
            return
    except (AttributeError, ValueError, TypeError):
        pass
    _explain_bad_qkv(query, key, value)


def _explain_bad_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            layout = "(B, H, L, D)" if name == "query" else "(B, K, S, D)"
            raise ShapeError(
                f"{name} has shape {fmt_shape(t.shape)} but attention expects 4-D {layout}. "
                "Split heads first, e.g. x.view(B, L, H, D).transpose(1, 2), or use "
                "headwise.MultiheadAttention / headwise.Attention for (B, L, E) inputs."
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}.")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}."
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}."
        )
    batch, heads, _, head_dim = query.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ShapeError(
            f"batch sizes differ: query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)}, "
            f"value {fmt_shape(value.shape)}; all three are (B, heads, length, head_dim)."
        )
    if key.shape[:3] != value.shape[:3]:
        raise ShapeError(
            f"key {fmt_shape(key.shape)} and value {fmt_shape(value.shape)} must agree on "
            "(B, K, S): one value per key."
        )
    if key.shape[-1] != head_dim:
        raise ShapeError(
            f"query head_dim {head_dim} != key head_dim {key.shape[-1]} (query "
            f"{fmt_shape(query.shape)}, key {fmt_shape(key.shape)}); layout is (B, H, L, D)."
        )
    kv_heads = key.shape[1]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ShapeError(
            f"query has H={heads} heads but key/value have K={kv_heads}; K must divide H "
            "(grouped-query attention shares each kv head among H/K query heads)."
        )


def _check_mask(mask: Tensor, query: Tensor, key: Tensor) -> None:
    batch, heads, query_len, _ = query.shape
    key_len = key.shape[-2]
    full = (batch, heads, query_len, key_len)
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(mask).__name__}.")
    if mask.dtype != torch.bool and mask.dtype != query.dtype:
        raise TypeError(
            f"attn_mask has dtype {mask.dtype}; expected torch.bool (True = may attend) or "
            f"an additive mask of the query's dtype {query.dtype}."
        )
    if mask.device != query.device:
        raise ValueError(f"attn_mask is on {mask.device} but query is on {query.device}.")
    ok = mask.dim() <= 4 and all(
        m in (1, f) for m, f in zip(reversed(mask.shape), reversed(full), strict=False)
    )
    if not ok:
        raise ShapeError(
            f"attn_mask has shape {fmt_shape(mask.shape)}, which does not broadcast to "
            f"(B, H, L, S) = {fmt_shape(full)}. Expected e.g. (L, S) = {fmt_shape(full[2:])}, "
            f"(B, 1, 1, S) = {fmt_shape((batch, 1, 1, key_len))} for padding, or "
            f"(B, H, L, S) = {fmt_shape(full)}."
        )
