"""Linear attention in O(L) memory: elu+1 (Katharopoulos et al. 2020) and Performer random features.

Softmax attention weights exp(q . k * scale) are replaced by phi(q) . phi(k) for a
positive feature map phi (applied to ``q * sqrt(scale)`` and ``k * sqrt(scale)``):

    out_i = sum_j phi(q_i) . phi(k_j) v_j / sum_j phi(q_i) . phi(k_j)

over the keys j query i may attend.  Non-causal, the sums over keys are computed once,
phi(K)^T V (M x Dv per head), so time and memory are O(L).  Causal, the keys are cut
into chunks: within a chunk a small (C, C) lower-triangular product, across chunks
prefix sums of phi(K)^T V; O(L) too.  The recurrent form (decoding) keeps the two running
sums as its state, O(1) per token, and gives the same outputs as the parallel form.
:func:`linear_attention_reference` is the quadratic form the tests compare with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise.errors import ShapeError, fmt_shape
from headwise.functional.kernels import expand_kv
from headwise.variants.stats import weights_refused

__all__ = [
    "EluFeatureMap",
    "LinearAttention",
    "LinearState",
    "RandomFeatureMap",
    "linear_attention",
    "linear_attention_reference",
    "recurrent_linear_attention",
]

FeatureMap = Callable[..., Tensor]


class EluFeatureMap(nn.Module):
    """phi(x) = elu(x) + 1, positive everywhere (Katharopoulos et al. 2020).

    Shape:
        (..., D) -> (..., M) with M = D.
    """

    def forward(self, x: Tensor, *, is_query: bool = False) -> Tensor:
        return F.elu(x).add_(1.0)  # in place on elu's fresh output (its backward keeps the input)


class RandomFeatureMap(nn.Module):
    """Performer's positive random features (FAVOR+, Choromanski et al. 2021).

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(M), so that E[phi(q) . phi(k)] = exp(q . k): an
    unbiased estimate of the softmax kernel, which is what lets a model trained with
    softmax attention run with it.  W is (M, D), drawn once from ``seed``; with
    ``orthogonal=True`` its rows come in orthogonal blocks (lower variance).  For
    queries the largest exponent of each row is subtracted first (it cancels in the
    normalization, and keeps exp finite).  W is a non-persistent buffer: it follows
    ``.to(device)`` but is not in the state dict.

    Shape:
        (..., D) -> (..., M).
    """

    def __init__(self, head_dim: int, num_features: int = 256, *, seed: int = 0, orthogonal: bool = True) -> None:
        super().__init__()
        for name, value in (("head_dim", head_dim), ("num_features", num_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        generator = torch.Generator().manual_seed(seed)
        if orthogonal:
            blocks = []
            for _ in range(math.ceil(num_features / head_dim)):
                gaussian = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64)
                q, _ = torch.linalg.qr(gaussian)  # (D, D) orthogonal
                blocks.append(q.T)
            rows = torch.cat(blocks)[:num_features]  # (M, D) unit rows, orthogonal within a block
            norms = torch.randn(num_features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
            projection = rows * norms[:, None]  # (M, D) with Gaussian row norms
        else:
            projection = torch.randn(num_features, head_dim, generator=generator, dtype=torch.float64)  # (M, D)
        self.register_buffer("projection", projection.float(), persistent=False)
        self.head_dim, self.num_features, self.orthogonal = head_dim, num_features, orthogonal

    def forward(self, x: Tensor, *, is_query: bool = False) -> Tensor:
        if x.shape[-1] != self.head_dim:
            raise ShapeError(
                f"RandomFeatureMap was built for head_dim={self.head_dim} but got inputs of shape "
                f"{fmt_shape(x.shape)}; build it with RandomFeatureMap(head_dim={x.shape[-1]})."
            )
        projection = self.projection.to(x.dtype)
        logits = x @ projection.T - 0.5 * (x * x).sum(dim=-1, keepdim=True)  # (..., M)
        if is_query:
            logits = logits - logits.amax(dim=-1, keepdim=True).detach()  # cancels in the normalization
        return torch.exp(logits) / math.sqrt(self.num_features)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}, orthogonal={self.orthogonal}"


class LinearState:
    """The recurrent state of causal linear attention: running sums over the keys seen so far.

    ``numerator`` = sum_j phi(k_j) v_j^T, ``denominator`` = sum_j phi(k_j); ``length``
    counts the positions folded in (read by :class:`headwise.Attention` for rotary
    positions).  Empty until the first update, which sizes it.

    Shape:
        numerator (B, H, M, Dv), denominator (B, H, M).
    """

    def __init__(self) -> None:
        self.numerator: Tensor | None = None
        self.denominator: Tensor | None = None
        self.length = 0

    def reset(self) -> None:
        """Forget every position."""
        self.numerator, self.denominator, self.length = None, None, 0


def _features(
    feature_map: FeatureMap, query: Tensor, key: Tensor, scale: float | None
) -> tuple[Tensor, Tensor]:
    """phi(Q sqrt(scale)), phi(K sqrt(scale)), checked positive.

    Shape:
        query (B, H, L, D), key (B, K, S, D) -> (B, H, L, M), (B, K, S, M).
    """
    root = (1.0 / math.sqrt(query.shape[-1]) if scale is None else scale) ** 0.5
    phi_q = feature_map(query * root, is_query=True)  # (B, H, L, M)
    phi_k = feature_map(key * root, is_query=False)  # (B, K, S, M)
    for name, phi, x in (("query", phi_q, query), ("key", phi_k, key)):
        if not isinstance(phi, Tensor) or phi.shape[:-1] != x.shape[:-1]:
            got = fmt_shape(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
            raise ShapeError(
                f"feature_map turned {name} {fmt_shape(x.shape)} into {got}; it must keep every "
                "dimension but the last: (..., D) -> (..., M)."
            )
    lowest = torch.minimum(phi_q.detach().min(), phi_k.detach().min())
    if bool(lowest < 0):
        raise ValueError(
            f"feature_map gave negative values (min {lowest.item():.4g}); linear attention needs "
            "phi(x) >= 0 so that every weight phi(q) . phi(k) is a non-negative attention weight. "
            "Use EluFeatureMap, RandomFeatureMap, or e.g. relu/exp."
        )
    return phi_q, phi_k


def _key_keep(attn_mask: Tensor | None, phi_k: Tensor, query: Tensor, keys: slice | None = None) -> Tensor:
    """phi(K) with masked keys zeroed.  Only per-key masks (padding) are possible in O(L).

    Shape:
        attn_mask broadcastable to (B, H, 1, S), bool; phi_k (B, H, S, M) -> (B, H, S, M).
    """
    if attn_mask is None:
        return phi_k
    batch, heads, _, _ = query.shape
    if not isinstance(attn_mask, Tensor) or attn_mask.dtype != torch.bool:
        got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
        raise TypeError(f"linear attention takes a bool attn_mask (True = may attend), got {got}.")
    if attn_mask.dim() >= 2 and attn_mask.shape[-2] != 1:
        raise ShapeError(
            f"attn_mask has shape {fmt_shape(attn_mask.shape)}; linear attention never forms the (L, S) "
            "map, so it takes only per-key masks broadcastable to (B, H, 1, S), e.g. (B, 1, 1, S) padding "
            "(use is_causal=True for causality)."
        )
    mask = attn_mask if keys is None else attn_mask[..., keys]
    keep = mask.transpose(-1, -2).to(phi_k.dtype)  # (..., S, 1)
    try:
        torch.broadcast_shapes(keep.shape, phi_k.shape)
    except RuntimeError:
        raise ShapeError(
            f"attn_mask has shape {fmt_shape(attn_mask.shape)}, which does not broadcast to (B, H, 1, S) = "
            f"{fmt_shape((batch, heads, 1, phi_k.shape[-2]))}."
        ) from None
    return phi_k * keep  # (B, H, S, M)


def _divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator per row; rows with no key (denominator 0) give zeros."""
    tiny = torch.finfo(denominator.dtype).tiny
    return numerator / denominator.clamp_min(tiny).unsqueeze(-1)


def _check_common(query: Tensor, key: Tensor, value: Tensor, dropout_p: float) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = fmt_shape(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ShapeError(f"{name} has shape {got} but linear attention expects 4-D (B, heads, length, D).")
    if key.shape[:3] != value.shape[:3] or query.shape[0] != key.shape[0] or query.shape[-1] != key.shape[-1]:
        raise ShapeError(
            f"query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)}, value {fmt_shape(value.shape)} do not "
            "fit (B, H, L, D), (B, K, S, D), (B, K, S, Dv)."
        )
    if key.shape[1] == 0 or query.shape[1] % key.shape[1] != 0:
        raise ShapeError(f"key/value heads K={key.shape[1]} must divide query heads H={query.shape[1]}.")
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p}: linear attention forms no attention probabilities to drop; "
            "set the layer's dropout to 0 (or call model.eval())."
        )


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    feature_map: FeatureMap | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    chunk_size: int = 128,
    dropout_p: float = 0.0,
) -> Tensor:
    """Linear attention, O(L) time and memory; equal to :func:`linear_attention_reference`.

    Args:
        query, key, value: the projected heads (grouped-query heads allowed).
        feature_map: phi, called as ``phi(x, is_query=...)``; must be >= 0.  Default
            :class:`EluFeatureMap`.
        attn_mask: per-key bool mask (True = may attend) broadcastable to (B, H, 1, S),
            e.g. padding; a per-query mask would need the L x S map.
        is_causal: query i (key position S - L + i) sees keys up to its own position,
            by chunked prefix sums.
        scale: the softmax scale, split as sqrt(scale) on each of q and k; ``None`` =
            1/sqrt(D).
        chunk_size: C, positions per chunk of the causal form.
        dropout_p: must be 0 (there are no probabilities to drop).

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """
    _check_common(query, key, value, dropout_p)
    chunk = _check_chunk(chunk_size)
    feature_map = EluFeatureMap() if feature_map is None else feature_map
    phi_q, phi_k = _features(feature_map, query, key, scale)
    heads = query.shape[1]
    phi_k = _key_keep(attn_mask, expand_kv(phi_k, heads), query)  # (B, H, S, M)
    value = expand_kv(value, heads)  # (B, H, S, Dv)
    if not is_causal:
        numerator = phi_q @ (phi_k.transpose(-2, -1) @ value)  # (B, H, L, Dv)
        denominator = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)  # (B, H, L, 1)
        return _divide(numerator, denominator.squeeze(-1))
    prefix = key.shape[-2] - query.shape[-2]
    if prefix < 0:
        raise ShapeError(f"causal linear attention needs L <= S, got L={query.shape[-2]}, S={key.shape[-2]}.")
    state = (
        phi_k[:, :, :prefix].transpose(-2, -1) @ value[:, :, :prefix],  # (B, H, M, Dv)
        phi_k[:, :, :prefix].sum(dim=-2),  # (B, H, M)
    )
    out, _ = _causal_chunks(phi_q, phi_k[:, :, prefix:], value[:, :, prefix:], state, chunk)
    return out


def _check_chunk(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    return chunk_size


def _causal_chunks(
    phi_q: Tensor, phi_k: Tensor, value: Tensor, state: tuple[Tensor, Tensor], chunk: int
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Causal linear attention of L new positions after an initial state, chunk by chunk.

    Each chunk attends its own keys through a (C, C) lower-triangular product and the
    earlier chunks through the running sums (the prefix sums), which it then updates.
    A loop over L / C chunks holds one (M, Dv) state at a time, rather than materializing
    every chunk's prefix sum (that costs more memory traffic than the products).

    Shape:
        phi_q, phi_k (B, H, L, M), value (B, H, L, Dv), state ((B, H, M, Dv), (B, H, M))
        -> (B, H, L, Dv), and the state after the L positions.
    """
    numerator_state, denominator_state = state
    denominator_state = denominator_state.unsqueeze(-1)  # (B, H, M, 1)
    # without autograd, chunks are written into one preallocated output (no list + cat copy)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (phi_q, phi_k, value, numerator_state))
    output = None if grad else value.new_empty(*phi_q.shape[:3], value.shape[-1])  # (B, H, L, Dv)
    outputs = []
    for start in range(0, phi_q.shape[-2], chunk):
        q = phi_q[:, :, start : start + chunk]  # (B, H, c, M)
        k = phi_k[:, :, start : start + chunk]  # (B, H, c, M)
        v = value[:, :, start : start + chunk]  # (B, H, c, Dv)
        within = (q @ k.transpose(-2, -1)).tril_()  # (B, H, c, c)
        numerator = q @ numerator_state + within @ v  # (B, H, c, Dv)
        denominator = q @ denominator_state + within.sum(dim=-1, keepdim=True)  # (B, H, c, 1)
        if output is None:
            outputs.append(_divide(numerator, denominator.squeeze(-1)))
        else:
            output[:, :, start : start + chunk] = _divide(numerator, denominator.squeeze(-1))
        numerator_state = numerator_state + k.transpose(-2, -1) @ v  # (B, H, M, Dv)
        denominator_state = denominator_state + k.sum(dim=-2).unsqueeze(-1)  # (B, H, M, 1)
    if output is None:
        output = torch.cat(outputs, dim=2) if outputs else value.new_zeros(value.shape)  # (B, H, L, Dv)
    return output, (numerator_state, denominator_state.squeeze(-1))


def recurrent_linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    state: LinearState,
    *,
    feature_map: FeatureMap | None = None,
    attn_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Causal linear attention as an RNN: one position at a time, updating ``state`` in place.

    Each new position adds phi(k) v^T and phi(k) to the state, then reads
    phi(q) . state.  Equal to ``linear_attention(..., is_causal=True)`` over the whole
    sequence; O(1) memory per step.

    Args:
        attn_mask: per-key bool mask for the L new keys, broadcastable to (B, H, 1, L).

    Shape:
        query (B, H, L, D), key (B, K, L, D), value (B, K, L, Dv) -> (B, H, L, Dv);
        state.numerator (B, H, M, Dv), state.denominator (B, H, M).
    """
    _check_common(query, key, value, 0.0)
    if query.shape[-2] != key.shape[-2]:
        raise ShapeError(
            f"the recurrent form takes as many new keys as queries, got L={query.shape[-2]}, S={key.shape[-2]}."
        )
    feature_map = EluFeatureMap() if feature_map is None else feature_map
    phi_q, phi_k = _features(feature_map, query, key, scale)
    heads = query.shape[1]
    phi_k = _key_keep(attn_mask, expand_kv(phi_k, heads), query)  # (B, H, L, M)
    value = expand_kv(value, heads)  # (B, H, L, Dv)
    batch, _, length, features = phi_q.shape
    if state.numerator is None:
        state.numerator = phi_q.new_zeros(batch, heads, features, value.shape[-1])  # (B, H, M, Dv)
        state.denominator = phi_q.new_zeros(batch, heads, features)  # (B, H, M)
    elif state.numerator.shape != (batch, heads, features, value.shape[-1]):
        raise ShapeError(
            f"LinearState holds (B, H, M, Dv) = {fmt_shape(state.numerator.shape)} but the new positions "
            f"give {fmt_shape((batch, heads, features, value.shape[-1]))}; use one state per layer."
        )
    outputs = []
    for t in range(length):
        k_t, v_t, q_t = phi_k[:, :, t], value[:, :, t], phi_q[:, :, t]  # (B, H, M), (B, H, Dv), (B, H, M)
        state.numerator = state.numerator + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B, H, M, Dv)
        state.denominator = state.denominator + k_t  # (B, H, M)
        numerator = (q_t.unsqueeze(-2) @ state.numerator).squeeze(-2)  # (B, H, Dv)
        denominator = (q_t * state.denominator).sum(dim=-1)  # (B, H)
        outputs.append(_divide(numerator, denominator))
    state.length += length
    return torch.stack(outputs, dim=2)  # (B, H, L, Dv)


def linear_attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    feature_map: FeatureMap | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    rows: tuple[int, int] | None = None,
    return_weights: bool = False,
) -> Tensor:
    """The quadratic form of linear attention: the (L, S) weights phi(Q) phi(K)^T, normalized.

    The oracle for :func:`linear_attention` (O(L * S) memory: for tests and short inputs).
    ``rows=(start, end)`` computes only those query rows; ``return_weights`` returns the
    normalized weights instead of the output.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv),
        or weights (B, H, L, S).
    """
    _check_common(query, key, value, 0.0)
    feature_map = EluFeatureMap() if feature_map is None else feature_map
    query_len, key_len = query.shape[-2], key.shape[-2]
    start, end = (0, query_len) if rows is None else rows
    phi_q, phi_k = _features(feature_map, query[:, :, start:end], key, scale)
    heads = query.shape[1]
    phi_k = _key_keep(attn_mask, expand_kv(phi_k, heads), query)  # (B, H, S, M)
    weights = phi_q @ phi_k.transpose(-2, -1)  # (B, H, l, S)
    if is_causal:
        positions = torch.arange(start, end, device=query.device) + key_len - query_len  # (l,)
        weights = weights * (torch.arange(key_len, device=query.device)[None, :] <= positions[:, None])
    total = weights.sum(dim=-1)  # (B, H, l)
    if return_weights:
        return weights / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(-1)  # (B, H, l, S)
    return _divide(weights @ expand_kv(value, heads), total)  # (B, H, l, Dv)


class LinearAttention(nn.Module):
    """Linear attention for :class:`headwise.Attention`'s ``variant``.

    ``Attention(..., variant=LinearAttention())`` (elu+1) or
    ``LinearAttention(RandomFeatureMap(head_dim, 256))`` (Performer), or
    :func:`headwise.variants.use_variant_` on a trained model: the layer keeps its
    projections.  ``layer.new_cache(B, N)`` gives a :class:`LinearState` for decoding;
    a step of one token is the recurrent form, several tokens the chunked form starting
    from the state.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """

    def __init__(self, feature_map: FeatureMap | None = None, *, chunk_size: int = 128) -> None:
        super().__init__()
        if feature_map is not None and not callable(feature_map):
            raise TypeError(f"feature_map must be callable (x, *, is_query) -> phi(x), got {feature_map!r}.")
        self.feature_map = EluFeatureMap() if feature_map is None else feature_map
        self.chunk_size = _check_chunk(chunk_size)

    def new_cache(self, batch_size: int, max_len: int, *, num_kv_heads: int, head_dim: int, dtype, device) -> LinearState:
        """An empty :class:`LinearState` (its size does not depend on ``max_len``)."""
        return LinearState()

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        dropout_p: float = 0.0,
        need_weights: bool = False,
        cache: LinearState | None = None,
    ) -> tuple[Tensor, None]:
        """Linear attention of the projected heads; with ``cache``, causal decoding from its state.

        Shape:
            query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv), None.
        """
        if need_weights:
            raise weights_refused("LinearAttention")
        if cache is None:
            out = linear_attention(
                query, key, value, feature_map=self.feature_map, attn_mask=attn_mask, is_causal=is_causal,
                scale=scale, chunk_size=self.chunk_size, dropout_p=dropout_p,
            )
            return out, None
        if not isinstance(cache, LinearState):
            raise TypeError(
                f"LinearAttention decodes with a LinearState, got {type(cache).__name__}; use layer.new_cache(...)."
            )
        if not is_causal and query.shape[-2] != 1:
            raise ValueError(
                "decoding with a LinearState is causal: pass is_causal=True (or one token per step)."
            )
        _check_common(query, key, value, dropout_p)
        new = key.shape[-2]
        if attn_mask is not None:
            attn_mask = attn_mask[..., -new:]  # the new keys' columns
        if new == 1:
            out = recurrent_linear_attention(
                query, key, value, cache, feature_map=self.feature_map, attn_mask=attn_mask, scale=scale
            )
            return out, None
        phi_q, phi_k = _features(self.feature_map, query, key, scale)
        heads = query.shape[1]
        phi_k = _key_keep(attn_mask, expand_kv(phi_k, heads), query)  # (B, H, L, M)
        value = expand_kv(value, heads)  # (B, H, L, Dv)
        batch, _, _, features = phi_q.shape
        if cache.numerator is None:
            state = (phi_q.new_zeros(batch, heads, features, value.shape[-1]), phi_q.new_zeros(batch, heads, features))
        else:
            state = (cache.numerator, cache.denominator)
        out, (cache.numerator, cache.denominator) = _causal_chunks(phi_q, phi_k, value, state, self.chunk_size)
        cache.length += new
        return out, None

    def chunk_weights(
        self, query: Tensor, key: Tensor, rows: tuple[int, int], *, attn_mask: Tensor | None, is_causal: bool,
        scale: float | None,
    ) -> Tensor:
        """Rows ``rows`` of the normalized weights this variant implies (for chunked statistics).

        Shape:
            query (B, H, L, D), key (B, K, S, D) -> (B, H, end - start, S).
        """
        return linear_attention_reference(
            query, key, key, feature_map=self.feature_map, attn_mask=attn_mask, is_causal=is_causal,
            scale=scale, rows=rows, return_weights=True,
        )

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"
