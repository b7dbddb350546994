"""The explicit math backend: the test oracle.

softmax(Q K^T * scale + mask) V, written out step by step with
:mod:`headwise.functional.kernels`.  It supports every feature (weights, averaged
weights, grouped-query heads, masks, dropout) on every dtype and device; the weights
it returns are the ones the output used, dropout included.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from headwise.functional import kernels
from headwise.functional._request import AttentionRequest


class MathBackend:
    name = "math"

    def check(self, request: AttentionRequest) -> str | None:
        return None

    def run(self, request: AttentionRequest) -> tuple[Tensor, Tensor | None]:
        prepared = request.prepared_mask(fused_causal=False)
        probs = kernels.probabilities(
            request.query, request.key, prepared.mask, prepared.alive, request.scale
        )  # (B, H, L, S)
        if request.dropout_p > 0.0:
            probs = F.dropout(probs, p=request.dropout_p, training=True)
        output = kernels.weighted_values(probs, request.value)  # (B, H, L, Dv)
        if not request.need_weights:
            return output, None
        return output, probs.mean(dim=1) if request.average_weights else probs  # (B, L, S) or (B, H, L, S)


BACKEND = MathBackend()
