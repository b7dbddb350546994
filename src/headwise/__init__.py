"""headwise: multi-head attention for PyTorch, done head by head."""

from headwise import functional
from headwise.errors import BackendError, CheckpointError, ShapeError, TorchCompatError, TorchCompatShapeError
from headwise.functional import attention, explain
from headwise.modules import Attention, KVCache, MultiheadAttention, RotaryEmbedding, replace_mha_
from headwise.quant import QuantConfig, quantize_

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "BackendError",
    "CheckpointError",
    "KVCache",
    "MultiheadAttention",
    "QuantConfig",
    "RotaryEmbedding",
    "ShapeError",
    "TorchCompatError",
    "TorchCompatShapeError",
    "__version__",
    "attention",
    "explain",
    "functional",
    "quantize_",
    "replace_mha_",
]
