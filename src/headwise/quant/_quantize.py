"""``quantize_``: int8 projections and 8-bit embedding tables through PyTorch's and torchao's kernels."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from headwise.modules import Linear, MultiheadAttention
from headwise.quant._config import QuantConfig

__all__ = ["QuantizedMultiheadAttention", "load_quantized", "quantize_", "save_quantized"]

_log = logging.getLogger("headwise.quant")
_LINEARS = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear, Linear)
_FORMAT = "headwise.quant/1"


class QuantizedMultiheadAttention(MultiheadAttention):
    """The drop-in :class:`headwise.MultiheadAttention` with its input projections split for quantization.

    PyTorch's layer packs the query, key and value projections into one ``in_proj_weight``
    parameter that it passes to ``F.linear``, so module-based quantizers (torchao's
    ``quantize_`` and ``torch.ao``'s ``quantize_dynamic`` both swap ``nn.Linear`` modules)
    leave it in float.  :func:`quantize_` turns the packed weight (or the separate
    ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when ``kdim``/``vdim`` differ)
    into three modules ``q_proj``, ``k_proj``, ``v_proj`` (rows ``[0, e)``, ``[e, 2e)``,
    ``[2e, 3e)`` of the packed weight, e = H*D), the layout of :class:`headwise.Attention`,
    and quantizes them with ``out_proj``.  Everything else (arguments, masks, weights,
    ``bias_k``/``bias_v``, ``add_zero_attn``) is the drop-in's own forward.  Inference only;
    its ``state_dict`` keys are ``q_proj.*``, ``k_proj.*``, ``v_proj.*``, ``out_proj.*``.

    Shape:
        as :meth:`headwise.MultiheadAttention.forward`.
    """

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module

    def project(
        self, query: Tensor, key: Tensor, value: Tensor, *, same_qkv: bool, same_kv: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Three quantized projections (the packed matmul has no quantized module).

        Shape:
            query (B, L, E), key (B, S, kdim), value (B, S, vdim) -> (B, L, H*D), (B, S, H*D), (B, S, H*D).
        """
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)

    def compute_tensor(self) -> Tensor:
        return self._dtype_probe  # the float dtype and device the layer computes in


def _split_in_proj_(layer: MultiheadAttention) -> None:
    """Replace the packed (or separate) input projection parameters by three ``nn.Linear``."""
    e = layer.num_heads * layer.head_dim  # H*D: embed_dim, or less after pruning
    if layer._qkv_same_embed_dim:
        weights = layer.in_proj_weight.detach().split(e)  # 3 x (e, E)
    else:
        weights = (layer.q_proj_weight.detach(), layer.k_proj_weight.detach(), layer.v_proj_weight.detach())
    bias = layer.in_proj_bias
    biases = (None, None, None) if bias is None else bias.detach().split(e)  # 3 x (e,)
    probe = torch.empty(0, dtype=weights[0].dtype, device=weights[0].device)
    layer.__class__ = QuantizedMultiheadAttention
    projections = []
    for w, b in zip(weights, biases, strict=True):
        linear = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w)
            if b is not None:
                linear.bias.copy_(b)
        projections.append(linear.train(layer.training))
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
        setattr(layer, name, None)  # registered as None: no longer in the state_dict
    layer.q_proj, layer.k_proj, layer.v_proj = projections
    layer.register_buffer("_dtype_probe", probe, persistent=False)


def _modules_with_parents(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(qualified name, parent, attribute name, module) for every module below ``model``."""
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            yield (f"{parent_name}.{name}" if parent_name else name), parent, name, child


def _check_model(model: nn.Module, config: QuantConfig) -> None:
    """Every reason the model cannot be quantized, before anything changes."""
    if type(model) in (*_LINEARS, nn.Embedding):
        raise ValueError(
            f"model is a bare {type(model).__name__}; quantize_ swaps modules inside a model, so wrap it "
            "(nn.Sequential(layer)) and quantize the wrapper."
        )
    for name, param in model.named_parameters():
        if type(param) is not nn.Parameter:
            raise ValueError(
                f"parameter {name!r} is a {type(param).__name__}, not a plain nn.Parameter: the model is "
                "already quantized or sharded; quantize_ takes a float model (prune first, then quantize once)."
            )
    for name, _, _, module in _modules_with_parents(model):
        if type(module).__module__.startswith("torch.ao.nn.quantized") or isinstance(
            module, QuantizedMultiheadAttention
        ):
            raise ValueError(f"module {name!r} ({type(module).__name__}) is already quantized; quantize_ once.")
        if isinstance(module, nn.Linear) and type(module) not in _LINEARS:
            raise ValueError(
                f"module {name!r} is a {type(module).__name__}, a subclass of nn.Linear whose forward "
                "quantize_ cannot know; replace it by nn.Linear or quantize the model without it."
            )
        if isinstance(module, nn.MultiheadAttention) and type(module) not in (nn.MultiheadAttention, MultiheadAttention):
            raise ValueError(
                f"module {name!r} is a {type(module).__name__}, a subclass of nn.MultiheadAttention; "
                "quantize_ converts torch's layer and headwise.MultiheadAttention only."
            )
    if config.embeddings:
        for name, module in model.named_modules():
            weight = module.weight if type(module) is nn.Embedding else None
            if weight is not None and (weight.dtype != torch.float32 or weight.device.type != "cpu"):
                raise ValueError(
                    f"embeddings=True stores tables with PyTorch's CPU float32 kernel, but {name!r} is "
                    f"{weight.dtype} on {weight.device}; pass QuantConfig(embeddings=False) or call "
                    "model.float().cpu() first."
                )
    if config.mode == "int8_dynamic":
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise ValueError(
                "mode='int8_dynamic' needs PyTorch's fbgemm engine, which this build lacks "
                f"(engines: {torch.backends.quantized.supported_engines}); use mode='int8_weight_only'."
            )
        for name, param in model.named_parameters():
            if param.dtype != torch.float32 or param.device.type != "cpu":
                raise ValueError(
                    f"mode='int8_dynamic' runs PyTorch's CPU float32 kernels, but parameter {name!r} is "
                    f"{param.dtype} on {param.device}; call model.float().cpu() first, or use "
                    "mode='int8_weight_only' (any device and float dtype)."
                )


def quantize_(model: nn.Module, config: QuantConfig | None = None) -> dict[str, int]:
    """Quantize every projection of ``model`` to int8, in place.

    Every ``nn.Linear`` (attention projections, feed-forward, pooler, ``out_proj``) and the
    input projections of every ``nn.MultiheadAttention`` / :class:`headwise.MultiheadAttention`
    (split out of the packed ``in_proj_weight``, see :class:`QuantizedMultiheadAttention`),
    and with ``config.embeddings`` every ``nn.Embedding`` table, get int8 weights; see
    :class:`QuantConfig` for the modes and the libraries that run them.  Norms, biases, head
    gates and the attention itself stay in float.  Pruned models are ordinary (prune first:
    quantized layers cannot be pruned).  The quantized model is for inference.

    The whole model is checked first; on an error nothing has changed.  Save and load with
    :func:`save_quantized` / :func:`load_quantized` (``torch.load(weights_only=True)``).

    Returns:
        how many modules were converted: ``{"linear": ..., "multihead": ..., "embedding": ...}``
        (``linear`` counts the split q/k/v projections of multi-head layers too).

    Shape:
        the model's own shapes are unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a headwise.quant.QuantConfig, got {type(config).__name__}.")
    _check_model(model, config)
    multihead = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    for layer in multihead:
        if type(layer) is nn.MultiheadAttention:
            layer.__class__ = MultiheadAttention  # headwise's forward (same parameters), see replace_mha_
        _split_in_proj_(layer)
    linears = [(p, n, m) for _, p, n, m in _modules_with_parents(model) if type(m) in _LINEARS]
    for _, _, linear in linears:
        if type(linear) is Linear:
            linear.__class__ = nn.Linear  # same parameters; the quantized kernels replace its forward
    embeddings = [(p, n, m) for _, p, n, m in _modules_with_parents(model) if type(m) is nn.Embedding]
    embeddings = embeddings if config.embeddings else []
    if config.mode == "int8_dynamic":
        _dynamic_int8_(linears)
    else:
        _weight_only_int8_(model, [m for _, _, m in linears])
    _int8_tables_(embeddings)
    return {"linear": len(linears), "multihead": len(multihead), "embedding": len(embeddings)}


def _dynamic_int8_(linears: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """PyTorch's dynamically quantized Linear (fbgemm): int8 weights per channel, int8 activations."""
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which has no fast
        # int8 x int8 CPU kernel yet (QuantConfig); the warnings concern that migration.
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        for parent, name, linear in linears:
            linear.qconfig = per_channel_dynamic_qconfig
            setattr(parent, name, nnqd.Linear.from_float(linear))


def _int8_tables_(embeddings: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """PyTorch's quantized Embedding: 8-bit rows with a float scale and offset each.

    Its lookup kernel (``embedding_byte``) gathers the rows, then dequantizes them; torchao's
    int8 tensor dequantizes the whole table on every lookup (74 ms a call for MiniLM's
    30522 x 384 words on the benchmark CPU, against 0.03 ms here).
    """
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import float_qparams_weight_only_qconfig

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        for parent, name, table in embeddings:
            table.qconfig = float_qparams_weight_only_qconfig
            setattr(parent, name, nnq.Embedding.from_float(table))


class _Demote(logging.Filter):
    """Drops a logger's records whose message contains one of ``phrases``, re-logging them at debug level."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(phrase in message for phrase in self.phrases):
            _log.debug("while importing torchao, %s logged: %s", record.name, message)
            return False
        return True


#: What importing torchao logs on a torch it was not built against, by logger: a warning per
#: optional kernel library it cannot load (CUDA / MX kernels; int8 weight-only needs none of
#: them), and torch 2.13's notice that registering an Enum as a pytree constant is deprecated.
_TORCHAO_IMPORT_NOISE = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


@contextlib.contextmanager
def _quiet_torchao_import() -> Iterator[None]:
    """Demote exactly torchao's known import-time log records (above) to debug level, for the import only."""
    filters = [(logging.getLogger(name), _Demote(phrases)) for name, phrases in _TORCHAO_IMPORT_NOISE.items()]
    for logger, noise in filters:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger, noise in filters:
            logger.removeFilter(noise)


def _weight_only_int8_(model: nn.Module, modules: list[nn.Module]) -> None:
    """torchao's int8 weight-only quantization (per row) of exactly ``modules``."""
    with _quiet_torchao_import():
        from torchao.quantization import Int8WeightOnlyConfig
        from torchao.quantization import quantize_ as torchao_quantize_

    chosen = {id(m) for m in modules}
    torchao_quantize_(
        model,
        Int8WeightOnlyConfig(set_inductor_config=False),  # no global inductor settings
        filter_fn=lambda module, _fqn: id(module) in chosen,
    )


def save_quantized(model: nn.Module, path: str | os.PathLike[str], config: QuantConfig) -> Path:
    """Write a quantized model's weights and its config, loadable with ``torch.load(weights_only=True)``.

    Returns the path.

    Shape:
        the model's own shapes are unchanged.
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a headwise.quant.QuantConfig, got {type(config).__name__}.")
    path = Path(path)
    torch.save({"format": _FORMAT, "config": config.to_dict(), "state_dict": model.state_dict()}, path)
    return path


def load_quantized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Quantize the float ``model`` as the file says and load its weights; returns ``model``.

    ``model`` has the architecture that was saved (e.g. ``headwise.models.load()`` and the
    same heads pruned).  The file is read with ``torch.load(weights_only=True)``: no code runs.

    Shape:
        the model's own shapes are unchanged.
    """
    data = torch.load(Path(path), weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a file written by headwise.quant.save_quantized.")
    quantize_(model, QuantConfig.from_dict(data["config"]))
    model.load_state_dict(data["state_dict"], assign=True)
    return model
