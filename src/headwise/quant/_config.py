"""``QuantConfig``: what :func:`headwise.quant.quantize_` does to a model."""

from __future__ import annotations

from dataclasses import dataclass

from headwise._workflow import WorkflowConfig

__all__ = ["MODES", "QuantConfig"]

#: The quantization modes, each with the library that runs it (see :class:`QuantConfig`).
MODES = ("int8_weight_only", "int8_dynamic")


@dataclass(frozen=True)
class QuantConfig(WorkflowConfig):
    """How :func:`headwise.quant.quantize_` quantizes a model.

    Args:
        mode: ``"int8_weight_only"`` (default): int8 weights (per row), float activations,
            through torchao's ``Int8WeightOnlyConfig``; any device and float dtype.  On
            all-MiniLM-L6-v2 its sentence embeddings stay at cosine >= 0.999 to float32 (pydoc
            sentences), at 0.77x-0.94x float32's encode speed on a 2-core Xeon (``headwise bench quant``).
            ``"int8_dynamic"``: int8 weights (per output channel) and int8 activations
            quantized per batch at run time, through PyTorch's fbgemm kernels
            (``torch.ao.nn.quantized.dynamic.Linear``; torchao's dynamic-activation config has
            no fast CPU kernel and ran ~27x slower than float32 there); CPU float32 only.  It
            was 1.5x-1.6x faster than float32 on MiniLM, but the per-tensor activation scales
            cost accuracy in BERT's feed-forward layers: cosine 0.95 (min) / 0.98 (mean) to
            float32, below the 0.99 the default keeps; it is not the default for that reason.
        embeddings: also store ``nn.Embedding`` tables in 8 bits per entry (PyTorch's quantized
            ``Embedding``: a float scale and offset per row, rows dequantized after lookup;
            CPU float32 tables only, so pass ``embeddings=False`` for a GPU or bf16 model).
            Word embeddings are about half of a BERT-small checkpoint; without this a
            quantized all-MiniLM-L6-v2 is only ~1.6x smaller than float32.
    """

    mode: str = "int8_weight_only"
    embeddings: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"QuantConfig.mode must be one of {MODES}, got {self.mode!r}.")
        if not isinstance(self.embeddings, bool):
            raise TypeError(f"QuantConfig.embeddings must be a bool, got {self.embeddings!r}.")
        self._check_version()
