"""``prune_heads_``: remove attention heads physically, and find the layers it works on."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from headwise.modules import Attention, MultiheadAttention

__all__ = ["attention_layers", "head_counts", "kv_heads_of", "prune_heads_"]

#: The layer types whose heads headwise can remove.
AttentionLayer = Attention | MultiheadAttention


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention layers of ``model`` that layer indices refer to, as ``(name, module)``.

    A model with an ``attention_layers`` property (the BERT encoder of
    :mod:`headwise.models`) gives its layers in that order; otherwise every
    :class:`headwise.Attention` and :class:`headwise.MultiheadAttention` in the order
    of ``model.named_modules()``.  ``model`` may itself be one layer (index 0, name ``""``).

    Shape:
        -> a list with one entry per attention layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    names = {module: name for name, module in model.named_modules()}
    ordered = getattr(model, "attention_layers", None)
    if isinstance(ordered, Sequence) and not isinstance(model, nn.MultiheadAttention):
        return [(names[m], m) for m in ordered]
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (Attention, MultiheadAttention))]


def head_counts(model: nn.Module) -> list[int]:
    """Each attention layer's number of query heads, in the order of :func:`attention_layers`.

    Shape:
        -> [H_0, H_1, ...].
    """
    return [layer.num_heads for _, layer in attention_layers(model)]


def prune_heads_(model: nn.Module, heads: Mapping[int | str, Sequence[int]]) -> None:
    """Remove attention heads from ``model`` in place, physically.

    The removed heads' rows of the query projection, their columns of the output
    projection and their ``head_gate`` entries are dropped; attention then runs on
    fewer heads.  The result equals the unpruned model with those heads masked
    (``head_gate = 0``), up to float rounding.

    * :class:`headwise.Attention`, grouped-query included: a kv head goes when all of
      its query heads go, and is kept otherwise.  Every kept kv head must keep the same
      number of query heads (the layer's groups stay equal); otherwise the call is refused.
    * :class:`headwise.MultiheadAttention`: ``num_heads`` shrinks, ``head_dim`` and
      ``embed_dim`` stay (``in_proj_weight`` becomes (3 H' D, E), ``out_proj.weight``
      (E, H' D)).  The pruned layer no longer loads a torch state dict of the unpruned
      size; a plain ``torch.nn.MultiheadAttention`` is refused (its forward assumes
      H D = E): convert it first with :func:`headwise.replace_mha_`.
    * Models: the keys index :func:`attention_layers` (for the BERT encoder, layer i) or
      name a submodule (``"network.encoder.blocks.3.attention"``).  Every module with a
      ``refresh_head_counts()`` method (the networks of :mod:`headwise.models`, whose configs
      list each layer's head count) is told afterwards, so saving writes the new counts.

    Removing every head of a layer is refused: a layer keeps at least one head.  So is
    pruning a quantized layer (:func:`headwise.quant.quantize_`): its int8 weights cannot
    be sliced; prune the float model first, then quantize.  Everything is validated
    before anything changes, so a bad request leaves the model as it was.  Parameters are modified in place (same modules, new ``Parameter``
    objects): rebuild optimizers after pruning.

    Args:
        model: a model, or a single attention layer (key ``0``).
        heads: layer index or module name -> indices of the heads to remove, counted in
            the layer's current heads.

    Shape:
        a layer with H query heads of dim D ends with H - len(heads[layer]) heads of dim D.
    """
    plan = _plan(model, heads)
    for layer, drop in plan:
        if isinstance(layer, Attention):
            _prune_attention(layer, drop)
        else:
            _prune_multihead(layer, drop)
    if plan:
        for module in model.modules():  # networks whose config lists each layer's head count
            refresh = getattr(module, "refresh_head_counts", None)
            if callable(refresh):
                refresh()


def _plan(model: nn.Module, heads: Mapping[int | str, Sequence[int]]) -> list[tuple[nn.Module, list[int]]]:
    """Validate the whole request; return (layer, sorted heads to remove) for layers that change."""
    if not isinstance(heads, Mapping):
        raise TypeError(
            f"heads must be a mapping {{layer index or module name: [head indices]}}, got "
            f"{type(heads).__name__}; e.g. prune_heads_(model, {{0: [1, 5]}})."
        )
    layers = attention_layers(model)
    plan: list[tuple[nn.Module, list[int]]] = []
    seen: dict[int, object] = {}
    for key, indices in heads.items():
        name, layer = _resolve(model, layers, key)
        if id(layer) in seen:
            raise ValueError(
                f"layer {key!r} and layer {seen[id(layer)]!r} are the same attention layer ({name!r}); "
                "list each layer once."
            )
        seen[id(layer)] = key
        drop = _check_indices(key, layer, indices)
        if drop:
            _check_float_weights(key, name, layer)
            plan.append((layer, drop))
    return plan


def _check_float_weights(key: int | str, name: str, layer: nn.Module) -> None:
    """Refuse a layer whose projections are not float ``nn.Linear`` / ``nn.Parameter`` (quantized, sharded)."""
    tensors: list[tuple[str, object]] = []
    # headwise.quant splits the drop-in's packed in_proj into q_proj, k_proj, v_proj modules
    if isinstance(layer, Attention) or hasattr(layer, "q_proj"):
        projections = ("q_proj", "k_proj", "v_proj", "out_proj")
    else:
        projections = ("out_proj",)
        packed = (
            ["in_proj_weight"]
            if layer._qkv_same_embed_dim
            else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        )
        tensors += [(p, getattr(layer, p)) for p in packed]
    problem = None
    for proj in projections:
        module = getattr(layer, proj)
        if not isinstance(module, nn.Linear):
            problem = f"{proj} is a {module._get_name()}"
            break
        tensors.append((f"{proj}.weight", module.weight))
    if problem is None:
        problem = next(
            (f"{label} is a {type(t).__name__}" for label, t in tensors if type(t) is not nn.Parameter), None
        )
    if problem is not None:
        raise ValueError(
            f"layer {key!r} ({name or type(layer).__name__!r}) cannot be pruned: {problem}, not a float "
            "nn.Linear with an nn.Parameter weight (the layer was quantized, or sharded), and prune_heads_ "
            "slices float weights. Prune before quantizing: prune_heads_ on the float model, then "
            "headwise.quant.quantize_ (for a saved int8 model: prune the float model the same way, then "
            "load_quantized)."
        )


def _resolve(model: nn.Module, layers: list[tuple[str, nn.Module]], key: int | str) -> tuple[str, nn.Module]:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"layer keys must be int indices or module names, got {type(key).__name__} {key!r}.")
    if isinstance(key, int):
        if not layers:
            raise ValueError(
                f"{type(model).__name__} has no headwise attention layer (headwise.Attention or "
                "headwise.MultiheadAttention); convert torch's layers with headwise.replace_mha_ first."
            )
        if not 0 <= key < len(layers):
            raise ValueError(
                f"layer index {key} is out of range: the model has {len(layers)} attention layers "
                f"(indices 0..{len(layers) - 1}; no negative indices)."
            )
        return layers[key]
    modules = dict(model.named_modules())
    if key not in modules:
        close = difflib.get_close_matches(key, [n for n, _ in layers], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"no submodule named {key!r} in {type(model).__name__}; its attention layers are "
            f"{[n for n, _ in layers][:8]}{' ...' if len(layers) > 8 else ''}.{hint}"
        )
    layer = modules[key]
    if not isinstance(layer, (Attention, MultiheadAttention)):
        extra = ""
        if isinstance(layer, nn.MultiheadAttention):
            extra = (
                " torch's nn.MultiheadAttention assumes num_heads * head_dim == embed_dim; convert it "
                "with headwise.replace_mha_(model) first."
            )
        raise TypeError(
            f"{key!r} is a {type(layer).__name__}, not an attention layer headwise can prune "
            f"(headwise.Attention or headwise.MultiheadAttention).{extra}"
        )
    return key, layer


def _check_indices(key: int | str, layer: nn.Module, indices: Sequence[int]) -> list[int]:
    num_heads = layer.num_heads
    if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, Tensor, set, frozenset)):
        raise TypeError(f"heads[{key!r}] must be a sequence of head indices, got {type(indices).__name__}.")
    values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    bad = [h for h in values if isinstance(h, bool) or not isinstance(h, int)]
    if bad:
        raise TypeError(f"heads[{key!r}] must hold ints, got {bad[0]!r} ({type(bad[0]).__name__}).")
    outside = [h for h in values if not 0 <= h < num_heads]
    if outside:
        raise ValueError(
            f"heads[{key!r}] has head index {outside[0]} but the layer has {num_heads} heads "
            f"(indices 0..{num_heads - 1}; no negative indices); indices count the layer's current heads."
        )
    if len(set(values)) != len(values):
        dup = next(h for h in values if values.count(h) > 1)
        raise ValueError(f"heads[{key!r}] lists head {dup} more than once: {values}; list each head once.")
    if len(values) == num_heads:
        raise ValueError(
            f"heads[{key!r}] removes all {num_heads} heads of the layer; a layer keeps at least one head. "
            "Keep one head, or set head_gate to zero to silence the whole sublayer."
        )
    drop = sorted(values)
    return drop


def _rows(heads: list[int], head_dim: int, device: torch.device) -> Tensor:
    """Row indices of ``heads`` in a (H*D, ...) projection weight.

    Shape:
        -> (len(heads) * D,)
    """
    base = torch.tensor(heads, device=device) * head_dim  # (h,)
    return (base[:, None] + torch.arange(head_dim, device=device)).reshape(-1)  # (h*D,)


def _replace(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))


def kv_heads_of(layer: Attention) -> list[int]:
    """The kv head each query head of ``layer`` reads.

    Shape:
        -> [K index of query head 0, ..., of query head H-1].
    """
    if layer.kv_index is not None:
        return list(layer.kv_index)
    group = layer.num_heads // layer.num_kv_heads
    return [h // group for h in range(layer.num_heads)]


@torch.no_grad()
def _prune_attention(layer: Attention, drop: list[int]) -> None:
    heads, head_dim = layer.num_heads, layer.head_dim
    kv_of = kv_heads_of(layer)
    keep = [h for h in range(heads) if h not in drop]
    kv_keep = sorted({kv_of[h] for h in keep})  # a kv head goes when all of its query heads go
    index = [kv_keep.index(kv_of[h]) for h in keep]  # (H',): the new kv head of each kept query head
    group, rest = divmod(len(keep), len(kv_keep))
    layer.kv_index = None if rest == 0 and index == [i // group for i in range(len(keep))] else tuple(index)
    device = layer.q_proj.weight.device
    q_rows, kv_rows = _rows(keep, head_dim, device), _rows(kv_keep, head_dim, device)
    for proj, rows in ((layer.q_proj, q_rows), (layer.k_proj, kv_rows), (layer.v_proj, kv_rows)):
        _replace(proj, "weight", proj.weight[rows])  # (h*D, E)
        if proj.bias is not None:
            _replace(proj, "bias", proj.bias[rows])  # (h*D,)
        proj.out_features = rows.numel()
    _replace(layer.out_proj, "weight", layer.out_proj.weight[:, q_rows])  # (E, H'*D)
    layer.out_proj.in_features = q_rows.numel()
    _replace(layer, "head_gate", layer.head_gate[torch.tensor(keep, device=device)])  # (H',)


@torch.no_grad()
def _prune_multihead(layer: MultiheadAttention, drop: list[int]) -> None:
    heads, head_dim = layer.num_heads, layer.head_dim
    width = heads * head_dim
    keep = [h for h in range(heads) if h not in drop]
    rows = _rows(keep, head_dim, layer.out_proj.weight.device)
    packed = torch.cat([rows, rows + width, rows + 2 * width])  # (3*H'*D,)
    if layer._qkv_same_embed_dim:
        _replace(layer, "in_proj_weight", layer.in_proj_weight[packed])  # (3*H'*D, E)
    else:
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            _replace(layer, name, getattr(layer, name)[rows])  # (H'*D, E|kdim|vdim)
    if layer.in_proj_bias is not None:
        _replace(layer, "in_proj_bias", layer.in_proj_bias[packed])  # (3*H'*D,)
    for name in ("bias_k", "bias_v"):
        if getattr(layer, name) is not None:
            _replace(layer, name, getattr(layer, name)[..., rows])  # (1, 1, H'*D)
    _replace(layer.out_proj, "weight", layer.out_proj.weight[:, rows])  # (E, H'*D)
    layer.out_proj.in_features = rows.numel()
    layer.num_heads = len(keep)
