"""Transformer blocks and stacks built from :class:`headwise.Attention`.

Pre-norm and post-norm are two classes rather than a flag.  Collaborators
(attention, feed-forward, norms) are injected; :func:`encoder_block` and
:func:`decoder_block` build the usual configurations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from headwise.modules.attention import Attention
from headwise.modules.cache import KVCache
from headwise.modules.linear import Linear
from headwise.modules.rotary import RotaryEmbedding

__all__ = [
    "CausalDecoder",
    "Encoder",
    "FeedForward",
    "GatedFeedForward",
    "PostNormBlock",
    "PreNormBlock",
    "decoder_block",
    "encoder_block",
]


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear -> activation -> dropout -> Linear.

    Shape:
        (B, L, E) -> (B, L, E).
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        *,
        activation: Callable[[Tensor], Tensor] | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.up = Linear(embed_dim, hidden_dim, bias=bias, **factory)
        self.down = Linear(hidden_dim, embed_dim, bias=bias, **factory)
        self.activation = activation if activation is not None else nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.activation(self.up(x))
        return self.down(self.dropout(hidden) if self.dropout.p > 0 else hidden)


class GatedFeedForward(nn.Module):
    """Gated feed-forward (GLU family; SwiGLU with SiLU, as in Llama): down(act(gate(x)) * up(x)).

    Shape:
        (B, L, E) -> (B, L, E).
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        *,
        activation: Callable[[Tensor], Tensor] | None = None,
        dropout: float = 0.0,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.gate = Linear(embed_dim, hidden_dim, bias=bias, **factory)
        self.up = Linear(embed_dim, hidden_dim, bias=bias, **factory)
        self.down = Linear(hidden_dim, embed_dim, bias=bias, **factory)
        self.activation = activation if activation is not None else nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.activation(self.gate(x)) * self.up(x)
        return self.down(self.dropout(hidden) if self.dropout.p > 0 else hidden)


class _Block(nn.Module):
    def __init__(
        self,
        attention: Attention,
        feed_forward: nn.Module,
        *,
        attention_norm: nn.Module,
        feed_forward_norm: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.feed_forward = feed_forward
        self.attention_norm = attention_norm
        self.feed_forward_norm = feed_forward_norm
        self.dropout = nn.Dropout(dropout)

    def _drop(self, x: Tensor) -> Tensor:
        """Dropout on a sublayer's output (skipped without a module call when p is 0)."""
        return self.dropout(x) if self.dropout.p > 0 else x


class PreNormBlock(_Block):
    """x + Attn(Norm(x)), then x + FF(Norm(x)) (GPT-2, Llama).

    ``forward`` takes :class:`headwise.Attention`'s keywords (``attn_mask``, ``is_causal``,
    ``cache``, ``need_weights``, ``position_ids``) and passes them on.

    Shape:
        x (B, L, E) -> (B, L, E), weights (B, H, L, S) or None.
    """

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        h, weights = self.attention(
            self.attention_norm(x), attn_mask=attn_mask, is_causal=is_causal, cache=cache, need_weights=need_weights,
            position_ids=position_ids,
        )
        x = x + self._drop(h)
        x = x + self._drop(self.feed_forward(self.feed_forward_norm(x)))
        return x, weights


class PostNormBlock(_Block):
    """Norm(x + Attn(x)), then Norm(x + FF(x)) (the original Transformer, BERT).

    Shape:
        x (B, L, E) -> (B, L, E), weights (B, H, L, S) or None.
    """

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        h, weights = self.attention(
            x, attn_mask=attn_mask, is_causal=is_causal, cache=cache, need_weights=need_weights,
            position_ids=position_ids,
        )
        x = self.attention_norm(x + self._drop(h))
        x = self.feed_forward_norm(x + self._drop(self.feed_forward(x)))
        return x, weights


def encoder_block(
    embed_dim: int,
    num_heads: int,
    hidden_dim: int,
    *,
    norm_first: bool = True,
    dropout: float = 0.0,
    num_kv_heads: int | None = None,
    eps: float = 1e-5,
) -> PreNormBlock | PostNormBlock:
    """A bidirectional block with LayerNorm and a GELU feed-forward."""
    cls = PreNormBlock if norm_first else PostNormBlock
    return cls(
        Attention(embed_dim, num_heads, num_kv_heads=num_kv_heads, dropout=dropout),
        FeedForward(embed_dim, hidden_dim, dropout=dropout),
        attention_norm=nn.LayerNorm(embed_dim, eps=eps),
        feed_forward_norm=nn.LayerNorm(embed_dim, eps=eps),
        dropout=dropout,
    )


def decoder_block(
    embed_dim: int,
    num_heads: int,
    hidden_dim: int,
    *,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    rope_base: float | None = 10000.0,
    norm_eps: float = 1e-5,
    dropout: float = 0.0,
    bias: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> PreNormBlock:
    """A Llama-style pre-norm causal block: RMSNorm, grouped-query attention with rotary
    positions, and a SwiGLU feed-forward (:class:`GatedFeedForward`).

    Args:
        embed_dim, num_heads, hidden_dim: E, H and the feed-forward's hidden size.
        num_kv_heads: K (default H).
        head_dim: D (default E / H).
        rope_base: the rotary embedding's wavelength base (Llama 2: 10000; SmolLM2: 100000);
            ``None`` for no rotary positions.
        norm_eps: the RMSNorms' epsilon.
        dropout: dropout on attention probabilities and on each sublayer's output.
        bias: biases in every projection (Llama: none).
    """
    factory = {"device": device, "dtype": dtype}
    attention = Attention(
        embed_dim, num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, bias=bias, dropout=dropout,
        **factory,
    )
    if rope_base is not None:
        attention.rotary = RotaryEmbedding(attention.head_dim, base=rope_base)
    return PreNormBlock(
        attention,
        GatedFeedForward(embed_dim, hidden_dim, dropout=dropout, bias=bias, **factory),
        attention_norm=nn.RMSNorm(embed_dim, eps=norm_eps, **factory),
        feed_forward_norm=nn.RMSNorm(embed_dim, eps=norm_eps, **factory),
        dropout=dropout,
    )


class _Stack(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], *, norm: nn.Module | None = None) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one block, got none.")
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    def _run(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None,
        is_causal: bool,
        caches: Sequence[KVCache] | None,
        need_weights: bool,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        maps: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            x, weights = block(
                x, attn_mask=attn_mask, is_causal=is_causal, cache=cache, need_weights=need_weights,
                position_ids=position_ids,
            )
            if weights is not None:
                maps.append(weights)
        if self.norm is not None:
            x = self.norm(x)
        return x, maps if need_weights else None


class Encoder(_Stack):
    """A stack of bidirectional blocks, with an optional final norm.

    Shape:
        x (B, L, E), attn_mask broadcastable to (B, H, L, L) (True = may attend)
        -> (B, L, E), and with ``need_weights`` one (B, H_l, L, L) map per layer.
    """

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        return self._run(
            x, attn_mask=attn_mask, is_causal=False, caches=None, need_weights=need_weights, position_ids=position_ids
        )


class CausalDecoder(_Stack):
    """A causal stack that decodes token by token with one :class:`KVCache` per layer.

    ``decoder(x)`` runs a full causal pass; ``decoder(x, caches=caches)`` appends ``x``'s
    positions to the caches and attends over everything cached, which gives the same
    result as the full pass, one step at a time.

    ``position_ids`` (L,) or (B, L) go to every layer's rotary embedding (left-padded
    batches); by default each layer counts from its cache's length.

    Shape:
        x (B, L, E) -> (B, L, E), and with ``need_weights`` one (B, H_l, L, S) map per layer.
    """

    def new_caches(self, batch_size: int, max_len: int) -> list[KVCache]:
        """One preallocated cache per layer."""
        return [block.attention.new_cache(batch_size, max_len) for block in self.blocks]

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        need_weights: bool = False,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor] | None]:
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(
                f"got {len(caches)} caches for {len(self.blocks)} layers; use decoder.new_caches(...)."
            )
        return self._run(
            x, attn_mask=attn_mask, is_causal=True, caches=caches, need_weights=need_weights, position_ids=position_ids
        )
