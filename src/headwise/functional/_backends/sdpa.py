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
        query, key, value = request.query, request.key, request.value
        if request.num_kv_heads == request.num_heads:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=prepared.mask, dropout_p=request.dropout_p,
                is_causal=prepared.is_causal, scale=request.scale,
            )  # (B, H, L, Dv)
        elif _HAS_GQA:
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=prepared.mask, dropout_p=request.dropout_p,
                is_causal=prepared.is_causal, scale=request.scale, enable_gqa=True,
            )  # (B, H, L, Dv)
        else:
            key = expand_kv(key, request.num_heads)  # (B, H, S, D)
            value = expand_kv(value, request.num_heads)  # (B, H, S, Dv)
            output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=prepared.mask, dropout_p=request.dropout_p,
                is_causal=prepared.is_causal, scale=request.scale,
            )  # (B, H, L, Dv)
        if prepared.alive is not None:
            output = output * prepared.alive  # rows with no key become zero
        return output, None


    def run_plain(self, query: Tensor, key: Tensor, value: Tensor, is_causal: bool) -> Tensor | None:
        """The common call (no mask, no dropout, default scale, no weights), without building a request.

        Returns ``None`` where that call needs the general path: a causal call with
        1 < L != S (its bottom-right mask), or grouped-query heads on a torch without
        ``enable_gqa``.  The inputs must already be validated.

        Shape:
            query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
        """
        query_len = query.shape[-2]
        if is_causal and query_len != 1 and query_len != key.shape[-2]:
            return None
        causal = is_causal and query_len != 1  # one query at the bottom-right sees every key
        if query.shape[1] == key.shape[1]:
            return F.scaled_dot_product_attention(query, key, value, is_causal=causal)  # (B, H, L, Dv)
        if _HAS_GQA:
            return F.scaled_dot_product_attention(query, key, value, is_causal=causal, enable_gqa=True)
        return None


BACKEND = SdpaBackend()
