"""``shard_heads_``: Megatron-style tensor parallelism over attention heads, on DTensor."""

from __future__ import annotations

import math

from torch import nn

from headwise.errors import divisors
from headwise.modules import Attention, FeedForward, GatedFeedForward, MultiheadAttention

__all__ = ["shard_heads_"]


def shard_heads_(model: nn.Module, mesh) -> dict[str, int]:
    """Split every attention layer's heads (and every feed-forward's hidden units) over ``mesh``, in place.

    Each :class:`headwise.Attention` gets PyTorch's ``parallelize_module`` plan of Megatron-LM:
    ``q_proj``, ``k_proj``, ``v_proj`` column-wise (rank r computes query heads
    ``[r H/T, (r+1) H/T)`` and kv heads ``[r K/T, (r+1) K/T)``, T = ``mesh.size()``; the
    groups of grouped-query attention stay whole) and ``out_proj`` row-wise (one all-reduce
    per layer).  Attention itself then runs on the rank's *local heads* as plain tensors
    (``use_local_output=True``: on torch's CPU build SDPA does not take DTensors).  Every
    :class:`~headwise.modules.blocks.FeedForward` gets ``up`` column-wise and ``down``
    row-wise, every :class:`~headwise.modules.GatedFeedForward` ``gate`` and ``up`` column-wise
    and ``down`` row-wise.  Norms, embeddings and everything else stay replicated.

    Afterwards a layer's ``num_heads``/``num_kv_heads`` are its local counts (read from the
    local shards of its projection weights; its forward reads them from the projections'
    outputs), ``head_gate`` holds the local heads' gates, and ``new_cache`` allocates local heads.
    Weights are DTensors; ``param.grad.full_tensor()`` gives a whole gradient.  Every rank
    must give the same inputs (the model's input is replicated over ``mesh``).  For data
    parallelism on top, shard over the ``"tp"`` dimension of a 2-D mesh and wrap with
    ``fully_shard(model, mesh=mesh["dp"])`` (FSDP2) or ``DistributedDataParallel(model,
    device_mesh=mesh["dp"])`` (build the optimizer before the first forward: torch's DDP x TP
    trains the DTensors' local shards, and after a forward ``parameters()`` lists them no more).

    Args:
        model: a module containing :class:`headwise.Attention` layers (a block, an encoder,
            :class:`headwise.models.BertModel`, or one layer).
        mesh: a 1-D ``torch.distributed.device_mesh.DeviceMesh`` (the tensor-parallel ranks).

    Returns:
        how many modules were sharded: ``{"attention": ..., "feed_forward": ...}``.

    Raises:
        ValueError: when T does not divide a layer's H or K (or a feed-forward's hidden size),
            when the model contains a packed-projection :class:`headwise.MultiheadAttention`,
            or when the model is already sharded or quantized; nothing changes then.

    Shape:
        the model's own shapes; inside attention (B, H/T, L, D) per rank.
    """
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(
            f"mesh must be a torch.distributed.device_mesh.DeviceMesh, got {type(mesh).__name__}; "
            "build one with init_device_mesh('cpu', (tp_size,))."
        )
    if mesh.ndim != 1:
        raise ValueError(
            f"mesh has {mesh.ndim} dimensions {tuple(mesh.mesh.shape)}; shard_heads_ takes the 1-D "
            "tensor-parallel mesh, e.g. mesh['tp'] of a ('dp', 'tp') mesh."
        )
    attention, feed_forward = _plan(model, mesh.size())
    _apply(attention, feed_forward, mesh)
    return {"attention": len(attention), "feed_forward": len(feed_forward)}


def _plan(model: nn.Module, size: int) -> tuple[list[Attention], list[FeedForward | GatedFeedForward]]:
    """The modules to shard, after checking every one of them (nothing changes on an error)."""
    for name, param in model.named_parameters():
        if type(param) is not nn.Parameter:
            raise ValueError(
                f"parameter {name!r} is a {type(param).__name__}, not a plain nn.Parameter: the model "
                "is already sharded or quantized; shard_heads_ takes a float model, once."
            )
    attention: list[Attention] = []
    feed_forward: list[FeedForward | GatedFeedForward] = []
    for name, module in model.named_modules():
        where = name or "model"
        if isinstance(module, MultiheadAttention) or type(module) is nn.MultiheadAttention:
            raise ValueError(
                f"{where} is a {type(module).__name__}, whose packed in_proj_weight cannot be split by "
                "heads column-wise; shard_heads_ shards headwise.Attention (separate q/k/v projections)."
            )
        if isinstance(module, Attention):
            heads, kv_heads = module.num_heads, module.num_kv_heads
            if module.kv_index is not None:
                raise ValueError(
                    f"{where} has kv groups of unequal size (kv_index {list(module.kv_index)}, query heads pruned "
                    "inside groups); shard_heads_ splits whole groups of equal size. Prune the same number of "
                    "query heads from every group, or whole groups."
                )
            if heads % size or kv_heads % size:
                sizes = ", ".join(str(d) for d in divisors(math.gcd(heads, kv_heads)))
                raise ValueError(
                    f"{where} has num_heads={heads} and num_kv_heads={kv_heads}, but the tensor-parallel "
                    f"size is {size}: each rank needs whole kv groups ({heads}/{size} and {kv_heads}/{size} "
                    f"are not whole); world sizes that work for this layer: {sizes}."
                )
            attention.append(module)
        elif isinstance(module, (FeedForward, GatedFeedForward)):
            hidden = module.up.out_features
            if hidden % size:
                raise ValueError(
                    f"{where} has hidden size {hidden}, not divisible by the tensor-parallel size {size}."
                )
            feed_forward.append(module)
    if not attention:
        raise ValueError(f"{type(model).__name__} contains no headwise.Attention layer to shard.")
    return attention, feed_forward


def _apply(attention: list[Attention], feed_forward: list[FeedForward | GatedFeedForward], mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    size, rank = mesh.size(), mesh.get_local_rank()
    for layer in attention:
        heads = layer.num_heads
        parallelize_module(
            layer,
            mesh,
            {
                "q_proj": ColwiseParallel(use_local_output=True),
                "k_proj": ColwiseParallel(use_local_output=True),
                "v_proj": ColwiseParallel(use_local_output=True),
                "out_proj": RowwiseParallel(use_local_output=True),
            },
        )
        local = heads // size
        gate = layer.head_gate
        layer.head_gate = nn.Parameter(
            gate.detach()[rank * local : (rank + 1) * local].clone(), requires_grad=gate.requires_grad
        )  # (H/T,)
    for block in feed_forward:
        plan = {"up": ColwiseParallel(use_local_output=True), "down": RowwiseParallel(use_local_output=True)}
        if isinstance(block, GatedFeedForward):
            plan["gate"] = ColwiseParallel(use_local_output=True)
        parallelize_module(block, mesh, plan)

