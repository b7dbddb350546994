"""``Linear``: ``torch.nn.Linear`` whose product with a few rows streams the weight faster on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear"]


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same constructor, parameters, ``state_dict`` and results), tuned for decoding.

    A decoding step multiplies every weight by a few rows (B x 1), so it is bound by how fast
    the product streams the weight from memory.  ``F.linear``'s matrix-vector product streams
    about 12 GB/s on the AMD EPYC (Zen 4) of this project's machines, with 1 thread or 2; the
    same product as a batch of two row blocks of the weight (``torch.baddbmm`` over a view,
    no copy) streams 25 GB/s with 1 thread and 32 to 40 GB/s with 2 (``benchmarks/tuning.py
    gemv``), which halves SmolLM2-135M's decoding step.  So a CPU call with at most
    ``_few_rows`` rows (B * L) of float32 or float64 takes that product; every other call
    (more rows, other dtypes or devices, quantized or sharded weights, which are tensor
    subclasses) is ``F.linear``.  Both give the same result up to float rounding, with autograd.

    Shape:
        (..., in_features) -> (..., out_features).
    """

    #: rows up to which the blocked product runs (measured: 1.33x at 8 rows, even at 32)
    _few_rows = 8

    def forward(self, input: Tensor) -> Tensor:
        weight = self.weight
        out_features, in_features = weight.shape
        if (
            input.device.type != "cpu"
            or weight.dtype not in (torch.float32, torch.float64)
            or type(weight.data) is not torch.Tensor  # quantized or sharded weights run their own kernels
            or not weight.is_contiguous()
            or out_features % 2
            or input.dim() == 0
            or input.shape[-1] != in_features  # F.linear says what is wrong
            or input.numel() > self._few_rows * in_features
        ):
            return F.linear(input, weight, self.bias)
        rows = input.numel() // in_features
        flat = input.reshape(rows, in_features)  # (R, K)
        blocks = weight.view(2, out_features // 2, in_features)  # (2, N/2, K): two row blocks, a view
        columns = flat.t().unsqueeze(0).expand(2, in_features, rows)  # (2, K, R)
        if self.bias is None:
            out = torch.bmm(blocks, columns)  # (2, N/2, R)
        else:
            out = torch.baddbmm(self.bias.view(2, out_features // 2, 1), blocks, columns)  # (2, N/2, R)
        return out.view(out_features, rows).t().reshape(*input.shape[:-1], out_features)  # (..., N)
