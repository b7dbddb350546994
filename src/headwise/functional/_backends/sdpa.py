"""PyTorch's fused ``F.scaled_dot_product_attention`` (flash / memory-efficient / CPU flash)."""

from __future__ import annotations

from torch import Tensor

from headwise.functional._request import AttentionRequest
from headwise.functional.kernels import sdpa


class SdpaBackend:
    name = "sdpa"

    def check(self, request: AttentionRequest) -> str | None:
        if request.need_weights:
            return "F.scaled_dot_product_attention returns no attention weights (need_weights=True)"
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        prepared = request.prepared_mask(fused_causal=True)
        output = sdpa(
            request.query, request.key, request.value, attn_mask=prepared.mask, dropout_p=request.dropout_p,
            is_causal=prepared.is_causal, scale=request.scale,
        )  # (B, H, L, Dv)
        if prepared.alive is not None:
            output = output * prepared.alive  # rows with no key become zero
        return output, None


BACKEND = SdpaBackend()
