"""Quantization: int8 projections and embedding tables, with the field's kernels.

``quantize_(model, QuantConfig(...))`` converts every ``nn.Linear``, the packed input
projection of the drop-in ``MultiheadAttention``, and (by default) the embedding tables;
``save_quantized``/``load_quantized`` store the result for ``torch.load(weights_only=True)``.
Needs the ``quant`` extra (torchao) for weight-only int8 (the default mode).
"""

from headwise.quant._config import MODES, QuantConfig
from headwise.quant._quantize import QuantizedMultiheadAttention, load_quantized, quantize_, save_quantized

__all__ = ["MODES", "QuantConfig", "QuantizedMultiheadAttention", "load_quantized", "quantize_", "save_quantized"]
