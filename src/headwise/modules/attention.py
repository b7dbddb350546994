"""``headwise.Attention``: batch-first attention with grouped-query heads, gates and a KV cache."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from headwise.errors import ShapeError, divisors, fmt_shape, heads_do_not_divide
from headwise.functional import attention
from headwise.modules.cache import KVCache
from headwise.modules.linear import Linear
from headwise.modules.rotary import RotaryEmbedding, positions_for

__all__ = ["Attention", "AttentionVariant"]


class AttentionVariant(Protocol):
    """What :class:`Attention` calls in place of full attention when given a ``variant``.

    The variant receives the layer's projected (and rotated, normed) heads and the layer's
    ``scale`` and returns
    ``(output (B, H, L, Dv), weights or None)``; it must reuse
    :func:`headwise.functional.attention` or be a different attention (linear), never a
    copy of it.  ``new_cache`` returns its decoding state (or raises if it has none).
    """

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, *, attn_mask: Tensor | None, is_causal: bool,
        scale: float | None, dropout_p: float, need_weights: bool, cache: Any,
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
        kv_index: for groups of unequal size (query heads pruned inside kv groups, see
            :func:`headwise.heads.prune_heads_`), the kv head each query head reads, one entry
            per query head; ``None`` (the default) is groups of H/K consecutive query heads.
        head_dim: D.  Default E / H (then H must divide E).
        bias: biases in the q/k/v/out projections.
        scale: multiplies Q K^T; ``None`` means ``1 / sqrt(D)`` (pass ``1.0`` for unscaled
            dot products, e.g. with QK-norm or to study the scaling factor).
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
    (H*D -> E), all ordinary modules called as such (hooks, quantized or tensor-parallel
    projections work), and ``head_gate`` (H,), ones, multiplying each head's output; it
    does not train by default (``requires_grad=False``): set it to mask heads, or make it
    require grad to score heads.  Head counts are read from the projections' outputs, so
    layers pruned to different sizes are ordinary.  Per-token decoding overhead is
    ``torch.compile``'s job: a compiled decoding step runs without recompiling (docs/design.md).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        kv_index: tuple[int, ...] | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        variant: nn.Module | None = None,
        scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        head_dim = _check_sizes(embed_dim, num_heads, num_kv_heads, head_dim, kv_index)
        for name, p in (("dropout", dropout), ("head_dropout", head_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}.")
        if scale is not None and not (
            isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0 and math.isfinite(scale)
        ):
            raise ValueError(
                f"scale must be a positive finite number or None (1/sqrt(head_dim) = {1 / math.sqrt(head_dim):.6g}), "
                f"got {scale!r}."
            )
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self._head_dim = head_dim
        self.q_proj = Linear(embed_dim, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = Linear(embed_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.out_proj = Linear(num_heads * head_dim, embed_dim, bias=bias, **factory)
        self.head_gate = nn.Parameter(torch.ones(num_heads, **factory), requires_grad=False)
        self.dropout = dropout
        self.head_dropout = head_dropout
        self.rotary = rotary
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.variant = variant
        self.scale = None if scale is None else float(scale)
        self.kv_index = None if kv_index is None else tuple(kv_index)

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def num_heads(self) -> int:
        """H, the query heads this layer computes (on a tensor-parallel rank: its own)."""
        return _output_rows(self.q_proj) // self._head_dim

    @property
    def num_kv_heads(self) -> int:
        """K, the key/value heads this layer computes (on a tensor-parallel rank: its own)."""
        return _output_rows(self.k_proj) // self._head_dim

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A preallocated :class:`KVCache` sized for this layer (or the variant's decoding state)."""
        gate = self.head_gate  # a plain tensor of the layer's dtype and device, also when projections are quantized
        if self.variant is not None:
            kv_heads = self.num_kv_heads if self.kv_index is None else self.num_heads  # variants get mapped heads
            return self.variant.new_cache(
                batch_size, max_len, num_kv_heads=kv_heads, head_dim=self.head_dim,
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
            need_weights: also return per-head attention weights.
            position_ids: positions of the queries for rotary embeddings, (L,) or (B, L)
                (e.g. left-padded batches); default ``cache.length + arange(L)``.  Keys of
                self-attention take the same positions.

        Returns:
            ``(out, weights)``, weights ``None`` unless ``need_weights``.

        Shape:
            x (B, L, E), context (B, S, E) -> out (B, L, E), weights (B, H, L, S).
        """
        gate = self.head_gate
        if not (context is None and x.dim() == 3 and x.shape[-1] == self.embed_dim and x.dtype == gate.dtype):
            self._check_input(x, context, gate)  # gate: the layer's dtype, also with quantized projections
        batch, query_len, _ = x.shape
        source = x if context is None else context
        key_len, head_dim = source.shape[1], self.head_dim
        q = self.q_proj(x)  # (B, L, H*D); H from the output: pruned and tensor-parallel layers alike
        k, v = self.k_proj(source), self.v_proj(source)  # (B, S, K*D) each
        heads, kv_heads = q.shape[-1] // head_dim, k.shape[-1] // head_dim
        q = q.view(batch, query_len, heads, head_dim).transpose(1, 2)  # (B, H, L, D)
        k = k.view(batch, key_len, kv_heads, head_dim).transpose(1, 2)  # (B, K, S, D)
        v = v.view(batch, key_len, kv_heads, head_dim).transpose(1, 2)  # (B, K, S, D)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.rotary is not None:
            offset = 0 if cache is None else cache.length
            if position_ids is None:
                position_ids = positions_for(query_len, offset, x.device)  # (L,)
            key_positions = position_ids if context is None else positions_for(key_len, offset, x.device)
            q, k = self.rotary(q, k, position_ids, key_positions)
        dropout_p = self.dropout if self.training else 0.0
        if self.variant is None:
            if cache is not None:
                k, v = cache.update(k, v)  # (B, K, S_total, D)
            out, weights = attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale, dropout_p=dropout_p,
                need_weights=need_weights, kv_index=self.kv_index,
            )  # (B, H, L, D), (B, H, L, S) or None
        else:
            if self.kv_index is not None:  # a variant sees one kv head per query head
                index = torch.tensor(self.kv_index, device=k.device)  # (H,)
                k, v = k.index_select(1, index), v.index_select(1, index)  # (B, H, S, D)
            out, weights = self.variant(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale, dropout_p=dropout_p,
                need_weights=need_weights, cache=cache,
            )  # (B, H, L, D), None
        gate = gate.view(heads, 1, 1) if gate.dtype == out.dtype else gate.to(out.dtype).view(heads, 1, 1)  # (H, 1, 1)
        if self.training and self.head_dropout > 0.0:
            keep = torch.rand(batch, heads, 1, 1, device=out.device) >= self.head_dropout  # (B, H, 1, 1)
            gate = gate * keep.to(out.dtype) / (1.0 - self.head_dropout)  # (B, H, 1, 1)
        out = (out * gate).transpose(1, 2).reshape(batch, query_len, heads * head_dim)  # (B, L, H*D)
        return self.out_proj(out), weights

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

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            + ("" if self.kv_index is None else f"kv_index={list(self.kv_index)}, ")
            + f"head_dim={self.head_dim}, dropout={self.dropout}, head_dropout={self.head_dropout}"
            + ("" if self.scale is None else f", scale={self.scale}")
        )


def _output_rows(proj: nn.Module) -> int:
    """Output features of a projection as this process computes them.

    A tensor-parallel projection (``headwise.parallel.shard_heads_``) holds a DTensor weight
    whose local shard gives the rank's rows; other projections, float or quantized, say
    ``out_features``.
    """
    to_local = getattr(getattr(proj, "weight", None), "to_local", None)
    if callable(to_local):
        return to_local().shape[0]
    return proj.out_features


def _check_sizes(
    embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int | None, kv_index: tuple[int, ...] | None
) -> int:
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if kv_index is not None:
        values = list(kv_index)
        if len(values) != num_heads or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_kv_heads for i in values
        ):
            raise ValueError(
                f"kv_index must give each of the num_heads={num_heads} query heads a kv head in "
                f"0..{num_kv_heads - 1}, got {values}."
            )
    elif num_heads % num_kv_heads != 0:
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
