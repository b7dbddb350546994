"""Architecture specs, and the one loader and saver they share.

A :class:`ArchitectureSpec` says everything that differs between architectures: how
config.json maps to a config, how to build the network, which checkpoint key each of the
network's parameters has (key templates with a ``{}`` layer placeholder), which keys carry
no weights, which parameters are tied, and hints for error messages.  :func:`load_network`
builds the network on the ``meta`` device, checks every name, shape and dtype of the
source against it (nothing is read before all of them pass, so a bad checkpoint never
half-loads), then reads and assigns.  :func:`checkpoint_state` is its mirror for saving.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headwise.errors import CheckpointError, fmt_shape
from headwise.models._sources import FLOAT_DTYPES, TensorSource
from headwise.modules import Attention

__all__ = ["ArchitectureSpec", "checkpoint_state", "load_network"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What headwise needs to know to load and save one architecture.

    Args:
        name: the architecture's name in messages ("BERT", "Llama").
        model_types: config.json ``model_type`` values it reads.
        network: the class of the network it builds (for :func:`headwise.models.save`).
        read_config: ``(raw config.json dict, path) -> config``; raises CheckpointError
            naming the path and the key.
        write_config: ``config -> config.json dict`` (with ``model_type`` and ``architectures``).
        build: ``(config, *, dtype) -> network`` (called on the ``meta`` device).
        modules: (headwise module path, checkpoint module path) templates; ``{}`` is the layer
            index; parameter names (``weight``, ``bias``) are appended to both.
        ignored: regular expressions of checkpoint keys that carry no weights (buffers some
            checkpoints store).
        tied: headwise parameter -> the parameter it shares when ``is_tied(config)``; the
            checkpoint may omit the tied one.
        is_tied: whether the config ties them.
        dtype_key: the checkpoint key whose stored dtype is the model's default dtype.
        shape_hint: ``(checkpoint key, config) -> str`` appended to a shape mismatch.
        unexpected_hint: ``(checkpoint key, config) -> str`` appended to an unexpected tensor.
        layers_described: ``config -> str``, what config.json describes, for a missing tensor.
        from_checkpoint: ``(config, checkpoint keys) -> config``, for what only the checkpoint
            says (BERT: whether it has a pooler).
        unpruned: ``config -> config`` with every layer's unpruned head counts.
        head_layout: ``config -> ((query heads, kv heads), ...)`` per attention layer of the
            unpruned model, in network order (saving with ``full_heads``).
    """

    name: str
    model_types: tuple[str, ...]
    network: type[nn.Module]
    read_config: Callable[[dict[str, Any], Path], Any]
    write_config: Callable[[Any], dict[str, Any]]
    build: Callable[..., nn.Module]
    modules: tuple[tuple[str, str], ...]
    dtype_key: str
    ignored: tuple[str, ...] = ()
    tied: Mapping[str, str] = field(default_factory=dict)
    is_tied: Callable[[Any], bool] = lambda config: False
    shape_hint: Callable[[str, Any], str] = lambda key, config: " (from config.json's sizes)."
    unexpected_hint: Callable[[str, Any], str] = lambda key, config: ""
    layers_described: Callable[[Any], str] = lambda config: "the architecture"
    from_checkpoint: Callable[[Any, set[str]], Any] = lambda config, keys: config
    unpruned: Callable[[Any], Any] = lambda config: config
    head_layout: Callable[[Any], tuple[tuple[int, int], ...]] = lambda config: ()

    def __post_init__(self) -> None:
        patterns = []
        for ours, theirs in self.modules:
            regex = re.compile(re.escape(ours).replace(r"\{\}", r"(\d+)") + r"\.(\w+)")
            patterns.append((regex, theirs))
        object.__setattr__(self, "_patterns", tuple(patterns))
        object.__setattr__(self, "_ignored", tuple(re.compile(p) for p in self.ignored))
        layered = [re.escape(theirs).replace(r"\{\}", r"(\d+)") for _, theirs in self.modules if "{}" in theirs]
        object.__setattr__(self, "_layer_key", re.compile(rf"(?:{'|'.join(layered)})\.\w+") if layered else None)

    def checkpoint_key(self, name: str) -> str | None:
        """The checkpoint key of a network state-dict key, or None for headwise-only state (head gates)."""
        for regex, theirs in self._patterns:  # type: ignore[attr-defined]
            match = regex.fullmatch(name)
            if match is not None:
                *layer, leaf = match.groups()
                return f"{theirs.format(*layer)}.{leaf}"
        return None

    def is_ignored(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self._ignored)  # type: ignore[attr-defined]

    def checkpoint_layers(self, keys: list[str]) -> int:
        """How many layers checkpoint ``keys`` hold weights of (distinct layer indices in the key templates)."""
        pattern = self._layer_key  # type: ignore[attr-defined]
        if pattern is None:
            return 0
        layers = set()
        for key in keys:
            match = pattern.fullmatch(key)
            if match is not None:
                layers.add(next(group for group in match.groups() if group is not None))
        return len(layers)


def _expected(spec: ArchitectureSpec, network: nn.Module, config: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Checkpoint key -> (network key, shape) for every parameter the checkpoint must hold."""
    skipped = set(spec.tied) if spec.is_tied(config) else set()
    expected = {}
    for name, tensor in network.state_dict().items():
        key = spec.checkpoint_key(name)
        if key is not None and name not in skipped:
            expected[key] = (name, tuple(tensor.shape))
    return expected


def load_network(
    spec: ArchitectureSpec,
    config: Any,
    source: TensorSource,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    config_path: Path | None = None,
) -> nn.Module:
    """Build ``spec``'s network for ``config`` and fill it from ``source``, checking everything first.

    The network comes back in eval mode (as from transformers' ``from_pretrained``), its
    head gates ones, on ``device`` in ``dtype`` (default: the stored dtype of ``spec.dtype_key``).
    ``config_path`` is where the config came from, for messages (default: the source's file).
    """
    keys = set(source.keys())
    config = spec.from_checkpoint(config, keys)
    stored = source.dtype(spec.dtype_key) if spec.dtype_key in keys else torch.float32
    dtype = dtype if dtype is not None else (stored if isinstance(stored, torch.dtype) else torch.float32)
    with torch.device("meta"):
        try:
            network = spec.build(config, dtype=dtype)
        except (RuntimeError, TypeError) as err:  # on meta nothing is allocated: only sizes past int64 fail here
            if "overflow" not in str(err).lower():
                raise
            reason = str(err).splitlines()[0]
            raise CheckpointError(
                f"{config_path or source.path}: its sizes ({spec.layers_described(config)}) give tensors too large "
                f"to exist ({reason}); it does not describe the weights in {source.path}."
            ) from err
    expected = _expected(spec, network, config)
    _check(spec, config, source, keys, expected)
    state = {name: source.read(key).to(device=device, dtype=dtype) for key, (name, _) in expected.items()}
    for module_name, module in network.named_modules():
        if isinstance(module, Attention):
            prefix = f"{module_name}." if module_name else ""
            state[f"{prefix}head_gate"] = torch.ones(module.head_gate.shape, device=device, dtype=dtype)
    if spec.is_tied(config):
        for name, shared in spec.tied.items():
            state[name] = state[shared]
    network.load_state_dict(state, strict=True, assign=True)
    if spec.is_tied(config):
        for name, shared in spec.tied.items():  # one Parameter again, as the config says
            module_path, _, leaf = name.rpartition(".")
            setattr(network.get_submodule(module_path), leaf, network.get_parameter(shared))
    return network.eval()


def _check(
    spec: ArchitectureSpec,
    config: Any,
    source: TensorSource,
    keys: set[str],
    expected: dict[str, tuple[str, tuple[int, ...]]],
) -> None:
    path = source.path
    missing = sorted(set(expected) - keys)
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f"; config.json describes {spec.layers_described(config)}, stored with transformers' "
            f"{spec.name} key names."
        )
    tied = {spec.checkpoint_key(name) for name in spec.tied}
    unexpected = sorted(k for k in keys - set(expected) - tied if not spec.is_ignored(k))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensor {unexpected[0]!r}"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            + f", not part of a {spec.name} network. {spec.unexpected_hint(unexpected[0], config)}".rstrip()
        )
    for key, (_, shape) in expected.items():
        if source.shape(key) != shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {fmt_shape(source.shape(key))}, expected {fmt_shape(shape)}"
                f"{spec.shape_hint(key, config)}"
            )
        if not isinstance(source.dtype(key), torch.dtype):
            raise CheckpointError(
                f"{path}: tensor {key!r} has dtype {source.dtype(key)}, expected a float dtype "
                f"({', '.join(FLOAT_DTYPES)})."
            )


def checkpoint_state(
    spec: ArchitectureSpec,
    network: nn.Module,
    config: Any,
    *,
    full_heads: tuple[tuple[int, int], ...] | None = None,
) -> dict[str, Tensor]:
    """The network's weights under checkpoint key names, head gates folded into ``out_proj``.

    A gate scales its head's output before ``out_proj``, which is the same as scaling that
    head's columns of ``out_proj.weight``, so gates fold exactly.  With ``full_heads`` (one
    query-head count per attention layer, in network order) every pruned layer is padded back
    with all-zero heads: zero query, key and value rows and zero output columns; such a head
    attends uniformly to zero values and adds nothing, so the outputs are the pruned model's,
    in the unpruned shapes.  ``full_heads`` gives (query heads, kv heads) per attention layer,
    in network order; each kv group is padded to its full size, then zero groups follow, so
    query head h still uses kv head h // (H/K).

    Shape:
        each layer's out_proj weight is (E, H_l * D), or (E, full_heads[l][0] * D).
    """
    skipped = set(spec.tied) if spec.is_tied(config) else set()
    state = {}
    for name, tensor in network.state_dict().items():
        key = spec.checkpoint_key(name)
        if key is not None and name not in skipped:
            state[name] = tensor.detach()
    layers = [(name, m) for name, m in network.named_modules() if isinstance(m, Attention)]
    if full_heads is not None and len(full_heads) != len(layers):
        raise ValueError(f"full_heads has {len(full_heads)} counts for {len(layers)} attention layers.")
    for index, (name, layer) in enumerate(layers):
        prefix = f"{name}." if name else ""
        out = f"{prefix}out_proj.weight"
        gate = layer.head_gate.detach().to(state[out].dtype).repeat_interleave(layer.head_dim)  # (H*D,)
        state[out] = state[out] * gate  # (E, H*D)
        if full_heads is not None and full_heads[index] != (layer.num_heads, layer.num_kv_heads):
            _pad_heads(state, prefix, layer, full_heads[index])
    return {spec.checkpoint_key(name): t.to("cpu").contiguous() for name, t in state.items()}


def _pad_heads(state: dict[str, Tensor], prefix: str, layer: Attention, full: tuple[int, int]) -> None:
    """Pad one layer's projections in ``state`` to ``full`` = (H, K) heads with zero heads.

    The layer's query heads are grouped by the kv head they read (its ``kv_index``, or groups of
    H'/K' consecutive heads); each kept group is padded with zero heads to G = H / K, then K - K'
    zero groups follow, so query head h of the padded layer reads kv head h // G.
    """
    heads, kv_heads, head_dim = layer.num_heads, layer.num_kv_heads, layer.head_dim
    full_heads, full_kv = full
    full_group = full_heads // full_kv
    group_of = (
        list(layer.kv_index) if layer.kv_index is not None else [h // (heads // kv_heads) for h in range(heads)]
    )
    members = [[h for h in range(heads) if group_of[h] == j] for j in range(kv_heads)]
    if kv_heads > full_kv or full_heads % full_kv or any(len(m) > full_group for m in members):
        raise ValueError(
            f"cannot pad {prefix or 'the layer'} from {heads} query heads in {kv_heads} groups to "
            f"{full_heads} query heads in {full_kv} groups."
        )
    slots = [slot for j, m in enumerate(members) for slot in (j * full_group + i for i in range(len(m)))]
    order = [h for m in members for h in m]  # query heads, group by group

    def padded_q(t: Tensor) -> Tensor:  # (H'*D, ...) -> (H*D, ...)
        rest = t.shape[1:]
        heads_in = t.reshape(heads, head_dim, *rest)[order]  # (H', D, ...), group by group
        out = t.new_zeros(full_heads, head_dim, *rest)
        out[slots] = heads_in
        return out.reshape(full_heads * head_dim, *rest)  # (H*D, ...)

    def padded_kv(t: Tensor) -> Tensor:  # (K'*D, ...) -> (K*D, ...)
        return torch.cat([t, t.new_zeros((full_kv - kv_heads) * head_dim, *t.shape[1:])])

    for proj, pad in (("q_proj", padded_q), ("k_proj", padded_kv), ("v_proj", padded_kv)):
        for leaf in ("weight", "bias"):
            key = f"{prefix}{proj}.{leaf}"
            if key in state:
                state[key] = pad(state[key])
    out = f"{prefix}out_proj.weight"
    state[out] = padded_q(state[out].T).T  # (E, H*D)
