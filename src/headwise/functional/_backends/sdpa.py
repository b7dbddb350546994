"""PyTorch's fused ``F.scaled_dot_product_attention`` (flash / memory-efficient / CPU flash)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from headwise.functional._backends.math import expand_kv
from headwise.functional._dispatch import AttentionRequest

# enable_gqa arrived in torch 2.5; older releases get the kv heads repeated here.
_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class SdpaBackend:
    name = "sdpa"

    def check(self, request: AttentionRequest) -> str | None:
        if request.need_weights:
            return "F.scaled_dot_product_attention returns no attention weights (need_weights=True)"
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        prepared = request.prepared_mask(fused_causal=True)
        output = _fused(
            request.query, request.key, request.value, attn_mask=prepared.mask, dropout_p=request.dropout_p,
            is_causal=prepared.is_causal, scale=request.scale,
        )  # (B, H, L, Dv)
        if prepared.alive is not None:
            output = output * prepared.alive  # rows with no key become zero
        return output, None

    def run_plain(self, query: Tensor, key: Tensor, value: Tensor, is_causal: bool) -> Tensor | None:
        """The common call (no mask, no dropout, default scale, no weights), without building a request.

        Returns ``None`` where that call needs the general path: a causal call with
        1 < L != S (its bottom-right mask).  The inputs must already be validated.

        Shape:
            query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
        """
        query_len = query.shape[-2]
        if is_causal and query_len != 1 and query_len != key.shape[-2]:
            return None
        causal = is_causal and query_len != 1  # one query at the bottom-right sees every key
        if query.shape[1] == key.shape[1]:  # the kernel's own defaults for the rest (a decoding step's cost)
            return F.scaled_dot_product_attention(query, key, value, is_causal=causal)  # (B, H, L, Dv)
        return _fused(query, key, value, is_causal=causal)  # (B, H, L, Dv)


def _fused(
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

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:
        if _HAS_GQA:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                enable_gqa=True,
            )  # (B, H, L, Dv)
        key = expand_kv(key, heads)  # (B, H, S, D)
        value = expand_kv(value, heads)  # (B, H, S, Dv)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )  # (B, H, L, Dv)


BACKEND = SdpaBackend()
