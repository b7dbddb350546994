"""``headwise.Attention``: batch-first attention with grouped-query heads, gates and a KV cache."""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module
from torch.utils.weak import WeakIdKeyDictionary

from headwise.errors import ShapeError, divisors, fmt_shape, heads_do_not_divide
from headwise.functional import attention
from headwise.modules.cache import KVCache
from headwise.modules.rotary import RotaryEmbedding, positions_for

__all__ = ["Attention", "AttentionVariant"]


class AttentionVariant(Protocol):
    """What :class:`Attention` calls in place of full attention when given a ``variant``.

    The variant receives the layer's projected (and rotated, normed) heads and returns
    ``(output (B, H, L, Dv), weights or None)``; it must reuse
    :func:`headwise.functional.attention` or be a different attention (linear), never a
    copy of it.  ``new_cache`` returns its decoding state (or raises if it has none).
    """

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, *, attn_mask: Tensor | None, is_causal: bool,
        dropout_p: float, need_weights: bool, cache: Any,
    ) -> tuple[Tensor, Tensor | None]: ...

    def new_cache(
        self, batch_size: int, max_len: int, *, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
        device: torch.device,
    ) -> Any: ...


class Attention(nn.Module):
    """Multi-head attention on (B, L, E) inputs, head by head.

    Args:
        embed_dim: E, input and output feature size.
        num_heads: H, query heads.
        num_kv_heads: K, key/value heads shared by groups of H/K query heads
            (grouped-query; 1 = multi-query).  Default H.
        head_dim: D.  Default E / H (then H must divide E).
        bias: biases in the q/k/v/out projections.
        dropout: dropout on attention probabilities (training only).
        head_dropout: DropHead (Zhou et al. 2020): in training each head of each sample is
            dropped with this probability and the kept heads are rescaled by 1 / (1 - p).
        rotary: an injected :class:`~headwise.modules.rotary.RotaryEmbedding` (or ``None``).
        q_norm, k_norm: injected per-head norms (QK-norm), e.g. ``nn.RMSNorm(head_dim)``.
        variant: an injected attention computation replacing full attention on the same
            projections, e.g. ``headwise.variants.SlidingWindow(64, 64)`` or
            ``headwise.variants.LinearAttention()`` (see :class:`AttentionVariant`);
            ``None`` = :func:`headwise.functional.attention`.

    Parameters: ``q_proj`` (E -> H*D), ``k_proj`` and ``v_proj`` (E -> K*D), ``out_proj``
    (H*D -> E), and ``head_gate`` (H,), ones, multiplying each head's output; it does not
    train by default (``requires_grad=False``): set it to mask heads, or make it require
    grad to score heads.  Head counts are read from the weights, so layers pruned to
    different sizes are ordinary.

    The q/k/v weights (and biases) are separate parameters whose memory is rows of one
    tensor, so that a forward that records no gradient for them (inference, frozen
    weights) projects with one matrix product (with ``context``: one for q, one for k and
    v); on CPU from :data:`PACKED_MIN_ROWS` rows (B * S) on, not in decoding steps.
    Before using it, forward checks by pointer that the parameters still are those rows,
    so a weight written in place is seen at once; after anything that gives them memory
    of their own (``.to()``, ``load_state_dict(..., assign=True)``, copying, pruning) the
    layer packs them again, and until then (or with hooks, quantized or sharded
    projections, under ``torch.compile``) it calls each projection: the same result.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        variant: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        head_dim = _check_sizes(embed_dim, num_heads, num_kv_heads, head_dim)
        for name, p in (("dropout", dropout), ("head_dropout", head_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}.")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self._head_dim = head_dim
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **factory)
        self.head_gate = nn.Parameter(torch.ones(num_heads, **factory), requires_grad=False)
        self.dropout = dropout
        self.head_dropout = head_dropout
        self.rotary = rotary
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.variant = variant
        self._packed: weakref.ref[_Packed] | None = None
        self.register_load_state_dict_post_hook(_pack_after_load)
        self._pack_projections()

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self._head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.k_proj.out_features // self._head_dim

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A preallocated :class:`KVCache` sized for this layer (or the variant's decoding state)."""
        gate = self.head_gate  # a plain tensor of the layer's dtype and device, also when projections are quantized
        if self.variant is not None:
            return self.variant.new_cache(
                batch_size, max_len, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                dtype=gate.dtype, device=gate.device,
            )
        return KVCache(batch_size, max_len, self.num_kv_heads, self.head_dim, dtype=gate.dtype, device=gate.device)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` to ``context`` (or to itself).

        Args:
            x: the queries' inputs.
            context: keys' and values' inputs; ``None`` for self-attention.
            attn_mask: bool ``True`` = may attend, or an additive float mask;
                broadcastable to (B, H, L, S), e.g. (B, 1, 1, S) for padding.  With a
                cache, S counts every cached position.
            is_causal: causal mask, bottom-right aligned (new queries see the whole cache).
            cache: a :class:`KVCache`; the new keys and values are appended to it.  With a
                ``variant``, the state its ``new_cache`` made (via :meth:`new_cache`).
            need_weights: also return per-head attention weights (math backend).
            position_ids: positions of the queries for rotary embeddings; default
                ``cache.length + arange(L)``.

        Returns:
            ``(out, weights)``, weights ``None`` unless ``need_weights``.

        Shape:
            x (B, L, E), context (B, S, E) -> out (B, L, E), weights (B, H, L, S).
        """
        modules = self._modules  # submodules and the gate read once, without nn.Module.__getattr__
        q_proj, k_proj, v_proj = modules["q_proj"], modules["k_proj"], modules["v_proj"]
        gate = self._parameters.get("head_gate")
        if gate is None:  # replaced by a plain tensor attribute
            gate = self.head_gate
        if not (  # the common self-attention call passes; the detailed checks run otherwise
            context is None and x.dim() == 3 and x.shape[-1] == self.embed_dim and x.dtype == gate.dtype
        ):
            self._check_input(x, context, gate)  # gate: the layer's dtype, also with quantized projections
        batch, query_len, _ = x.shape
        source = x if context is None else context
        head_dim = self._head_dim
        heads, kv_heads = q_proj.out_features // head_dim, k_proj.out_features // head_dim
        direct = _direct_calls_allowed()
        packed = self._packed
        if packed is not None and direct and (batch * source.shape[1] >= PACKED_MIN_ROWS or not x.is_cpu):
            packed = packed()
            if packed is not None:
                packed = packed.usable(q_proj, k_proj, v_proj)
        else:
            packed = None
        if packed is None:
            q, k, v = _project(q_proj, x, direct), _project(k_proj, source, direct), _project(v_proj, source, direct)
        elif context is None:  # one matrix product for q, k and v: (B, L, H*D + 2*K*D)
            # contiguous: F.linear runs a strided 3-D input as a batched product over an expanded weight
            q, k, v = F.linear(x.contiguous(), packed.weight, packed.bias).split_with_sizes(packed.sizes, dim=-1)
        else:
            q = _project(q_proj, x, direct)
            k, v = F.linear(source.contiguous(), packed.kv_weight, packed.kv_bias).split_with_sizes(
                packed.sizes[1:], dim=-1
            )
        q = q.view(batch, query_len, heads, head_dim).transpose(1, 2)  # (B, H, L, D)
        k = k.view(batch, source.shape[1], kv_heads, head_dim).transpose(1, 2)  # (B, K, S, D)
        v = v.view(batch, source.shape[1], kv_heads, head_dim).transpose(1, 2)  # (B, K, S, D)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        offset = 0 if cache is None else cache.length
        if self.rotary is not None:
            if position_ids is None:
                position_ids = positions_for(query_len, offset, x.device)  # (L,)
            key_positions = position_ids if context is None else positions_for(k.shape[2], offset, x.device)
            q, k = self.rotary(q, k, position_ids, key_positions)
        training = self.training
        dropout_p = self.dropout if training else 0.0
        if self.variant is None:
            if cache is not None:
                k, v = cache.update(k, v)  # (B, K, S_total, D)
            out, weights = attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p, need_weights=need_weights
            )  # (B, H, L, D), (B, H, L, S) or None
        else:
            out, weights = self.variant(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p, need_weights=need_weights,
                cache=cache,
            )  # (B, H, L, D), None
        gate = gate if gate.dtype == out.dtype else gate.to(out.dtype)  # (H,)
        drop_heads = training and self.head_dropout > 0.0
        if torch.is_grad_enabled() or drop_heads:
            out = out * gate.view(heads, 1, 1)  # (B, H, L, D)
            if drop_heads:
                keep = torch.rand(batch, heads, 1, 1, device=out.device) >= self.head_dropout  # (B, H, 1, 1)
                out = out * keep.to(out.dtype) / (1.0 - self.head_dropout)
            out = out.transpose(1, 2).reshape(batch, query_len, heads * head_dim)  # (B, L, H*D)
        else:  # nothing recorded (inference, decoding): gate in place, or while gathering the heads
            gathered = out.transpose(1, 2)  # (B, L, H, D)
            if gathered.is_contiguous():  # e.g. one query (decoding): the gathering is free
                out = gathered.mul_(gate.view(heads, 1))
            else:  # one pass instead of a multiplication and a copy
                out = torch.mul(gathered, gate.view(heads, 1), out=out.new_empty(gathered.shape))
            out = out.view(batch, query_len, heads * out.shape[-1])  # (B, L, H*D)
        return _project(self.out_proj, out, direct), weights

    def _check_input(self, x: Tensor, context: Tensor | None, weight: Tensor) -> None:
        """The detailed checks behind ``forward``'s inline test of the common call."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ShapeError(
                f"x has shape {fmt_shape(x.shape)} but Attention expects (batch, seq, {self.embed_dim}) "
                "(always batch first)."
            )
        if context is not None and (
            context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.embed_dim
        ):
            raise ShapeError(
                f"context has shape {fmt_shape(context.shape)} but x is {fmt_shape(x.shape)}; "
                f"expected (batch={x.shape[0]}, source seq, {self.embed_dim})."
            )
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's weights are {weight.dtype}; convert one of them."
            )

    @torch.no_grad()
    def _pack_projections(self) -> None:
        """Make the q/k/v weights (and biases) rows of one tensor; a no-op when they already are.

        Leaves the layer unpacked (each projection called on its own) when the three are not
        plain ``nn.Linear`` with ``nn.Parameter`` weights of one dtype and device.
        """
        self._packed = None
        projections = [self._modules.get(name) for name in ("q_proj", "k_proj", "v_proj")]
        if any(type(proj) is not nn.Linear for proj in projections):
            return
        weights = [proj._parameters.get("weight") for proj in projections]
        biases = [proj._parameters.get("bias") for proj in projections]
        if any(type(w) is not nn.Parameter for w in weights):
            return
        if not (all(b is None for b in biases) or all(type(b) is nn.Parameter for b in biases)):
            return
        first = weights[0]
        tensors = weights + [b for b in biases if b is not None]
        if first.is_meta or any(
            t.dtype != first.dtype or t.device != first.device or t.layout != torch.strided for t in tensors
        ):
            return
        if any(w.dim() != 2 or w.shape[1] != first.shape[1] for w in weights):
            return
        existing = _HELD_BY.get(weights[0])
        if existing is not None and existing.holds(weights, biases):  # e.g. a shallow copy of this layer
            self._packed = weakref.ref(existing)
            return
        weight = _as_rows_of_one(weights)  # (H*D + 2*K*D, E)
        bias = None if biases[0] is None else _as_rows_of_one(biases)  # (H*D + 2*K*D,)
        packed = _Packed(weight, bias, weights)
        for w in weights:  # the parameters keep it alive, the layer does not: see _Packed
            _HELD_BY[w] = packed
        self._packed = weakref.ref(packed)

    def _apply(self, fn: Any, recurse: bool = True) -> Attention:
        module = super()._apply(fn, recurse)
        self._pack_projections()  # .to(), .half(), ... give each parameter its own memory
        return module

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_packed"] = None  # a weak reference; rebuilt from the parameters by __setstate__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._pack_projections()  # copies (deepcopy, pickling) give each parameter its own memory

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, dropout={self.dropout}, head_dropout={self.head_dropout}"
        )


class _Packed:
    """The q/k/v weights and biases of an :class:`Attention` as rows of one tensor each.

    It lives as long as one of the q/k/v weight parameters does (``_HELD_BY``); the layer
    refers to it weakly, so that it never keeps memory alive that the parameters no longer
    use (after a projection is quantized, sharded or replaced).
    """

    __slots__ = ("__weakref__", "bias", "kv_bias", "kv_weight", "offsets", "shapes", "sizes", "weight")

    def __init__(self, weight: Tensor, bias: Tensor | None, weights: list[nn.Parameter]) -> None:
        q_size, k_size, v_size = (w.shape[0] for w in weights)
        row, item = weight.stride(0) * weight.element_size(), weight.element_size()
        self.weight = weight  # (H*D + 2*K*D, E); q_proj, k_proj and v_proj's weights are its rows
        self.bias = bias  # (H*D + 2*K*D,)
        self.kv_weight = weight[q_size:]  # (2*K*D, E), the k and v rows
        self.kv_bias = None if bias is None else bias[q_size:]  # (2*K*D,)
        self.sizes = (q_size, k_size, v_size)  # H*D, K*D, K*D
        self.shapes = (weights[0].shape, weights[1].shape, weights[2].shape)
        # bytes from the start to k's and v's weight rows, then to their bias entries
        self.offsets = (q_size * row, (q_size + k_size) * row, q_size * item, (q_size + k_size) * item)

    def holds(self, weights: list[nn.Parameter], biases: list[nn.Parameter | None]) -> bool:
        """Whether ``weights`` and ``biases`` (q, k, v) are still these rows."""
        start = self.weight.data_ptr()
        if [w.data_ptr() for w in weights] != [start, start + self.offsets[0], start + self.offsets[1]]:
            return False
        if (weights[0].shape, weights[1].shape, weights[2].shape) != self.shapes:
            return False
        if self.bias is None:
            return all(b is None for b in biases)
        start = self.bias.data_ptr()
        return [None if b is None else b.data_ptr() for b in biases] == [
            start, start + self.offsets[2], start + self.offsets[3]
        ]

    def usable(self, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module) -> _Packed | None:
        """``self`` when the projections are hook-free ``nn.Linear`` whose parameters are still
        these rows and no gradient is recorded for them; else ``None``.

        While ``self`` lives, its memory does, so no other tensor can start at one of its
        addresses: equal pointers mean the same memory, whatever was written to it since.
        """
        if not (_hook_free(q_proj) and _hook_free(k_proj) and _hook_free(v_proj)) or torch.compiler.is_compiling():
            return None
        params = (q_proj._parameters, k_proj._parameters, v_proj._parameters)
        weights = [p.get("weight") for p in params]
        biases = [p.get("bias") for p in params]
        if any(w is None for w in weights) or not self.holds(weights, biases):
            return None
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*weights, *biases)):
            return None  # the gradient must reach each parameter
        return self


# On CPU, a call with fewer rows (B * S) than this projects q, k and v apart.  Such products
# are bound by reading the weights, and in decoding (E=512, H=8, B from 1 to 16 rows a step) one
# product over the packed rows ran 4% to 8% slower in wall time on this project's 2-core Xeon;
# at 16 and 46 rows of MiniLM-sized layers the two were even, at 32 x 56 rows the packed product
# was 6% to 8% faster, and in the pruned MiniLM's attention sublayers (`headwise bench prune`) it
# took the speed-up over the unpruned model from 1.62-1.74x to 1.72-1.83x.  Measured with
# `benchmarks/tuning.py rows`.
PACKED_MIN_ROWS = 32

# each packed q/k/v weight parameter -> its _Packed; an entry goes with its parameter
_HELD_BY: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _as_rows_of_one(tensors: list[nn.Parameter]) -> Tensor:
    """A tensor whose consecutive rows are ``tensors``; each of them points into it afterwards.

    Shape:
        (n_i, E)... -> (sum n_i, E), or (n_i,)... -> (sum n_i,)
    """
    first = tensors[0]
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    stride = (first.shape[1], 1) if first.dim() == 2 else (1,)
    storage, offset = first.untyped_storage(), first.storage_offset()
    position = offset
    for t in tensors:  # already rows of one storage: packed before, or moved in place (share_memory_())
        if not (
            t.is_contiguous() and t.untyped_storage().data_ptr() == storage.data_ptr() and t.storage_offset() == position
        ):
            break
        position += t.numel()
    else:
        return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, offset, shape, stride)
    packed = torch.cat([t.detach() for t in tensors])
    start = 0
    for t in tensors:
        t.data = packed[start : start + t.shape[0]]
        start += t.shape[0]
    return packed


def _pack_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post hook: ``assign=True`` replaces the parameters."""
    module._pack_projections()


def _hook_free(proj: nn.Module) -> bool:
    """A plain ``nn.Linear`` that no module hook and no ``proj.compile()`` applies to."""
    return (
        type(proj) is nn.Linear
        and proj._compiled_call_impl is None
        and not (proj._forward_hooks or proj._forward_pre_hooks or proj._backward_hooks or proj._backward_pre_hooks)
    )


def _direct_calls_allowed() -> bool:
    """No module hook is registered globally and no ``torch.jit.trace`` is recording (see :func:`_project`)."""
    return not (
        _GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1] or _GLOBAL_HOOKS[2] or _GLOBAL_HOOKS[3]
        or torch._C._get_tracing_state()
    )


def _project(proj: nn.Module, x: Tensor, direct: bool) -> Tensor:
    """``proj(x)``, without ``nn.Module.__call__`` for a plain ``nn.Linear`` that nothing hooks into.

    The same test as torch's own hook-free shortcut in ``Module._call_impl`` (``direct``:
    no global hooks, no tracing; then no hooks on the module, not compiled), then
    ``F.linear`` on its parameters, which is what ``nn.Linear.forward`` does: the same
    result, about 2 us less per call, a sixth of a decoding step's overhead.  Anything
    else (a quantized or tensor-parallel projection, hooks, ``proj.compile()``, a
    subclass) is called as a module.
    """
    if direct and _hook_free(proj):
        params = proj._parameters
        weight = params.get("weight")
        if weight is not None and "bias" in params:
            return F.linear(x, weight, params["bias"])
    return proj(x)


# torch's registries of global module hooks (dicts filled in place by torch.nn.modules.module's
# register_module_*_hook functions), read by _direct_calls_allowed
_GLOBAL_HOOKS = (
    _torch_module._global_forward_hooks,
    _torch_module._global_forward_pre_hooks,
    _torch_module._global_backward_hooks,
    _torch_module._global_backward_pre_hooks,
)


def _check_sizes(embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int | None) -> int:
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}; each kv head "
            f"serves num_heads / num_kv_heads query heads. Divisors of {num_heads}: "
            f"{', '.join(str(d) for d in divisors(num_heads))}."
        )
    if head_dim is None:
        if embed_dim % num_heads != 0:
            raise ValueError(heads_do_not_divide(embed_dim, num_heads, suggest_head_dim=True))
        return embed_dim // num_heads
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}.")
    return head_dim
