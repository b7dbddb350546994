"""Sliding-window attention with optional global tokens, block by block in O(L * w).

Query ``i`` (at key position ``p = S - L + i``, bottom-right aligned as everywhere in
headwise) may attend key ``j`` when

* ``p - left <= j <= p + right`` (the band; ``is_causal`` also requires ``j <= p``), or
* ``j`` is a global token (attended by every query), or
* ``p`` is a global token (a global query attends every key),

and, as always, the caller's ``attn_mask`` allows it.  This is Longformer's local +
global pattern.  It is computed a block of queries at a time: each block attends its
band of keys plus the global keys outside the band through
:func:`headwise.functional.attention` with a small (block, band) mask, and the global
queries attend every key in one more call.  Without global tokens or a caller's mask,
the interior blocks (band inside the keys, all with the same mask) go several at a time
into one call, in the batch dimension, which saves Python and kernel launches per
block.  No L x S tensor is built, forward or backward; the result equals the math path
with the dense mask of :func:`window_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from headwise.errors import ShapeError, fmt_shape
from headwise.functional import attention, merge_masks
from headwise.variants.stats import weights_refused

__all__ = ["SlidingWindow", "WindowCache", "sliding_window_attention", "window_mask"]


#: Query rows per block when ``block_size`` is None: at least this many, else half the window width.
_MIN_BLOCK = 128
#: Interior band blocks computed together in one call (each call costs Python and a kernel launch).
_BLOCKS_PER_CALL = 8


def window_mask(
    query_len: int,
    key_len: int,
    *,
    left: int,
    right: int,
    global_tokens: Sequence[int] = (),
    is_causal: bool = False,
    rows: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The dense boolean mask (True = may attend) of a sliding window with global tokens.

    The reference for :func:`sliding_window_attention`, and a helper for code that needs
    a few rows of it: ``rows=(start, end)`` gives only those query rows.

    Shape:
        returns (L, S) bool, or (end - start, S) with ``rows``.
    """
    start, end = (0, query_len) if rows is None else rows
    positions = torch.arange(start, end, device=device) + (key_len - query_len)  # (l,) key positions
    return _allowed(positions, torch.arange(key_len, device=device), left, right, global_tokens, is_causal)


def _allowed(
    rows: Tensor, cols: Tensor, left: int, right: int, global_tokens: Sequence[int], is_causal: bool
) -> Tensor:
    """Which (query position, key position) pairs the pattern allows.

    Shape:
        rows (l,), cols (s,) key positions -> (l, s) bool.
    """
    gap = cols[None, :] - rows[:, None]  # (l, s): key position - query position
    allowed = (gap >= -left) & (gap <= right)  # (l, s) band
    if global_tokens:
        glob = torch.tensor(list(global_tokens), device=rows.device)  # (G,)
        allowed |= torch.isin(cols, glob)[None, :] | torch.isin(rows, glob)[:, None]
    if is_causal:
        allowed &= gap <= 0
    return allowed


def sliding_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    left: int,
    right: int,
    global_tokens: Sequence[int] = (),
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    block_size: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Attention restricted to a band of ``left`` keys before and ``right`` after each query, plus global tokens.

    Equal to ``attention(query, key, value, attn_mask=window_mask(...) & attn_mask, ...)``
    on the math path, forward and backward, in O(L * (w + G)) time and memory
    (w = left + right + block_size, G = number of global tokens).

    Args:
        query, key, value: the projected heads (grouped-query heads allowed).
        left, right: keys before / after each query's own position (``right`` is
            ignored when ``is_causal``); ``left + right + 1`` (``left + 1`` causal) must
            not exceed S: for shorter sequences use full attention.
        global_tokens: key positions (0 .. S-1) that attend to all and are attended by all.
        attn_mask: as in :func:`headwise.functional.attention`, e.g. (B, 1, 1, S)
            padding; sliced per block, so a dense (L, S) mask works but costs its memory.
        is_causal: also require key position <= query position.
        scale: multiplies Q K^T; ``None`` means ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities.
        block_size: query rows per block; default max(128, (left + right) // 2), which
            wastes a third of the products on masked keys and keeps the blocks large.
        backend: passed to :func:`headwise.functional.attention` for every block.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """
    query_len, key_len = query.shape[-2], key.shape[-2]
    left, right, global_tokens, block = _check_window(
        left, right, global_tokens, block_size, query_len, key_len, is_causal
    )
    if is_causal:
        right = 0
    offset = key_len - query_len
    device = query.device
    # without autograd, blocks are written into one preallocated output (no list + cat copy)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, attn_mask)
    )
    output = None if grad else query.new_empty(*query.shape[:3], value.shape[-1])  # (B, H, L, Dv)
    outputs = []
    band_masks: dict[tuple[int, int, int], Tensor] = {}
    plain = not global_tokens and attn_mask is None  # every interior block has the same band mask
    for start, count in _segments(query_len, key_len, block, left, right, plain=plain):
        if count > 1:  # `count` interior band blocks, one call with the blocks in the batch dimension
            layout = (start, count, block, offset, left, right, is_causal)
            out = _band_blocks(
                query, key, value, layout, band_masks, scale=scale, dropout_p=dropout_p, backend=backend
            )  # (B, H, count, block, Dv)
            end = start + count * block
            if output is None:
                outputs.append(out.flatten(2, 3))  # (B, H, count * block, Dv)
            else:
                output[:, :, start:end].unflatten(2, (count, block)).copy_(out)  # (B, H, count, block, Dv)
            continue
        end = min(start + block, query_len)
        band_start = max(0, start + offset - left)
        band_end = min(key_len, end - 1 + offset + right + 1)
        outside = [g for g in global_tokens if g < band_start or g >= band_end]
        cols = torch.arange(band_start, band_end, device=device)  # (s,) key positions of the band
        if outside:
            cols = torch.cat([cols, torch.tensor(outside, dtype=torch.long, device=device)])  # (s + g,)
        rows = torch.arange(start + offset, end + offset, device=device)  # (l,) query positions
        touches_global = any(band_start <= g < band_end or start + offset <= g < end + offset for g in global_tokens)
        if outside or touches_global:
            mask = _allowed(rows, cols, left, right, global_tokens, is_causal)  # (l, s + g)
        else:  # a plain band block: its mask depends only on the block's shape and band offset
            shape = (end - start, band_start - start - offset, band_end - band_start)
            if shape not in band_masks:
                band_masks[shape] = _allowed(rows, cols, left, right, (), is_causal)  # (l, s)
            mask = band_masks[shape]
        mask = merge_masks(mask, _slice_mask(attn_mask, start, end, cols), dtype=query.dtype)
        if outside:
            k_block, v_block = key.index_select(2, cols), value.index_select(2, cols)  # (B, K, s + g, D)
        else:
            k_block, v_block = key[:, :, band_start:band_end], value[:, :, band_start:band_end]  # (B, K, s, D)
        out, _ = attention(
            query[:, :, start:end], k_block, v_block, attn_mask=mask, scale=scale, dropout_p=dropout_p,
            backend=backend,
        )  # (B, H, l, Dv)
        if output is None:
            outputs.append(out)
        else:
            output[:, :, start:end] = out
    if output is None:
        output = torch.cat(outputs, dim=2)  # (B, H, L, Dv)
    global_rows = [g - offset for g in global_tokens if g >= offset]
    if global_rows:
        index = torch.tensor(global_rows, dtype=torch.long, device=device)  # (Gq,) query rows
        positions = index + offset  # (Gq,) their key positions
        everything = torch.arange(key_len, device=device)  # (S,)
        mask = everything[None, :] <= positions[:, None] if is_causal else None  # (Gq, S)
        user = None if attn_mask is None else _slice_rows(attn_mask, index)
        mask = merge_masks(mask, user, dtype=query.dtype)
        out, _ = attention(
            query.index_select(2, index), key, value, attn_mask=mask, scale=scale, dropout_p=dropout_p,
            backend=backend,
        )  # (B, H, Gq, Dv)
        output = output.index_copy(2, index, out) if grad else output.index_copy_(2, index, out)  # (B, H, L, Dv)
    return output


def _segments(
    query_len: int, key_len: int, block: int, left: int, right: int, *, plain: bool
) -> list[tuple[int, int]]:
    """(first query row, number of blocks) per attention call, in order.

    With ``plain`` (no global tokens, no caller mask) the interior blocks, whose band lies
    inside the keys and whose mask is therefore the same, are grouped up to
    ``_BLOCKS_PER_CALL`` per call; every other block is a call of its own.
    """
    offset = key_len - query_len
    starts = range(0, query_len, block)
    if not plain:
        return [(start, 1) for start in starts]
    # block i is interior when it is full and its band is inside the keys:
    # i * block + offset - left >= 0 and (i + 1) * block + offset + right <= key_len (= query_len + offset)
    first = max(0, -((offset - left) // block))  # ceil((left - offset) / block)
    last = (query_len - right) // block  # one past the last interior block
    if last - first < 2:
        return [(start, 1) for start in starts]
    segments = [(i * block, 1) for i in range(first)]
    segments += [(i * block, min(_BLOCKS_PER_CALL, last - i)) for i in range(first, last, _BLOCKS_PER_CALL)]
    return segments + [(start, 1) for start in starts[last:]]


def _band_blocks(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: tuple[int, int, int, int, int, int, bool],
    band_masks: dict[tuple[int, int, int], Tensor],
    *,
    scale: float | None,
    dropout_p: float,
    backend: str,
) -> Tensor:
    """``count`` interior blocks from query row ``start`` in one call: the same math as one call per block.

    ``layout`` is (start, count, block, offset, left, right, is_causal); ``band_masks`` is
    the cache of band masks of one :func:`sliding_window_attention` call, shared with its
    one-block path.

    Each block's band of keys is a window of ``key`` (``unfold``: a view for B = 1), and
    the blocks go to the batch dimension, where they share one (block, band) mask.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, count, block, Dv).
    """
    start, count, block, offset, left, right, is_causal = layout
    batch = query.shape[0]
    band = block + left + right
    band_start = start + offset - left
    shape = (block, -left, band)  # the key of a plain band mask in the per-block path
    if shape not in band_masks:
        rows = torch.arange(start + offset, start + offset + block, device=query.device)  # (block,)
        cols = torch.arange(band_start, band_start + band, device=query.device)  # (band,)
        band_masks[shape] = _allowed(rows, cols, left, right, (), is_causal)  # (block, band)
    span = slice(band_start, band_start + (count - 1) * block + band)
    q = query[:, :, start : start + count * block].unflatten(2, (count, block))  # (B, H, count, block, D)
    q = q.transpose(1, 2).flatten(0, 1)  # (B * count, H, block, D)
    k, v = (
        t[:, :, span].unfold(2, band, block).permute(0, 2, 1, 4, 3).flatten(0, 1)  # (B * count, K, band, D)
        for t in (key, value)
    )
    out, _ = attention(
        q, k, v, attn_mask=band_masks[shape], scale=scale, dropout_p=dropout_p, backend=backend
    )  # (B * count, H, block, Dv)
    return out.unflatten(0, (batch, count)).transpose(1, 2)  # (B, H, count, block, Dv)


def _slice_mask(mask: Tensor | None, start: int, end: int, cols: Tensor) -> Tensor | None:
    """Rows start:end and columns ``cols`` of a mask broadcastable to (B, H, L, S)."""
    if mask is None:
        return None
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        mask = mask[..., start:end, :]  # (..., l, S)
    if mask.shape[-1] != 1:
        mask = mask.index_select(-1, cols)  # (..., l, s)
    return mask


def _slice_rows(mask: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of a mask broadcastable to (B, H, L, S)."""
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        return mask.index_select(-2, index)  # (..., Gq, S)
    return mask


def _check_window(
    left: int,
    right: int,
    global_tokens: Sequence[int],
    block_size: int | None,
    query_len: int,
    key_len: int,
    is_causal: bool,
) -> tuple[int, int, list[int], int]:
    left, right = _check_sizes(left, right)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}.")
    if query_len > key_len:
        raise ShapeError(
            f"sliding-window attention needs L <= S (queries are the last L of the S positions), "
            f"got L={query_len}, S={key_len}."
        )
    width = left + 1 if is_causal else left + right + 1
    if width > key_len:
        shown = f"left={left}" if is_causal else f"left={left}, right={right}"
        raise ValueError(
            f"the window ({shown}: {width} keys per query) is larger than the sequence (S={key_len} keys); "
            "use full attention for sequences this short, or a smaller window."
        )
    tokens = _check_global_tokens(global_tokens)
    bad = [g for g in tokens if g >= key_len]
    if bad:
        raise ValueError(
            f"global_tokens has positions {bad[:5]} outside the sequence 0..{key_len - 1} (S={key_len}); "
            "give key positions, e.g. 0 for [CLS]."
        )
    if block_size is None:
        block = max(_MIN_BLOCK, (left + right) // 2)
    elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}.")
    else:
        block = block_size
    return left, right, tokens, block


def _check_sizes(left: int, right: int) -> tuple[int, int]:
    for name, value in (("left", left), ("right", right)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (keys on that side of each query), got {value!r}.")
        if value < 0:
            raise ValueError(
                f"{name}={value} is negative; the window takes {name} >= 0 keys on that side of each query."
            )
    return left, right


def _check_global_tokens(global_tokens: Sequence[int] | Tensor) -> list[int]:
    if isinstance(global_tokens, Tensor):
        if global_tokens.dim() != 1 or global_tokens.is_floating_point():
            raise ValueError(
                f"global_tokens must be a 1-D integer tensor or a sequence of ints, got a tensor of "
                f"shape {fmt_shape(global_tokens.shape)} and dtype {global_tokens.dtype}."
            )
        global_tokens = global_tokens.tolist()
    tokens = list(global_tokens)
    for g in tokens:
        if isinstance(g, bool) or not isinstance(g, int):
            raise TypeError(f"global_tokens must hold int positions, got {g!r}.")
    negative = [g for g in tokens if g < 0]
    if negative:
        raise ValueError(f"global_tokens has negative positions {negative[:5]}; give key positions 0..S-1.")
    return sorted(set(tokens))


class SlidingWindow(nn.Module):
    """Sliding-window (+ global tokens) attention for :class:`headwise.Attention`'s ``variant``.

    ``Attention(..., variant=SlidingWindow(left=64, right=64, global_tokens=[0]))`` or
    :func:`headwise.variants.use_variant_` on a trained model: the layer keeps its own
    projections and computes :func:`sliding_window_attention` instead of full attention.
    It has no parameters and adds nothing to the state dict.

    Shape:
        query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv).
    """

    def __init__(
        self, left: int, right: int, *, global_tokens: Sequence[int] = (), block_size: int | None = None
    ) -> None:
        super().__init__()
        self.left, self.right = _check_sizes(left, right)
        self.global_tokens = tuple(_check_global_tokens(global_tokens))
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0
        ):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}.")
        self.block_size = block_size

    def new_cache(
        self, batch_size: int, max_len: int, *, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device
    ) -> WindowCache:
        """A :class:`WindowCache` for causal decoding: it holds only what the window still needs."""
        return WindowCache(
            batch_size, max_len, num_kv_heads, head_dim, left=self.left, global_tokens=self.global_tokens,
            dtype=dtype, device=device,
        )

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
        cache: object | None = None,
    ) -> tuple[Tensor, None]:
        """Windowed attention of the projected heads; weights are never built.

        Shape:
            query (B, H, L, D), key (B, K, S, D), value (B, K, S, Dv) -> (B, H, L, Dv), None.
        """
        if need_weights:
            raise weights_refused("SlidingWindow")
        if cache is not None:
            if not isinstance(cache, WindowCache):
                raise TypeError(
                    f"SlidingWindow decodes with the WindowCache that layer.new_cache(...) makes, got "
                    f"{type(cache).__name__}."
                )
            if not is_causal:
                raise ValueError(
                    "decoding with a WindowCache is causal (each new token sees earlier ones): pass is_causal=True."
                )
            return cache.attend(query, key, value, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p), None
        out = sliding_window_attention(
            query, key, value, left=self.left, right=self.right, global_tokens=self.global_tokens,
            attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
            block_size=self.block_size,
        )  # (B, H, L, Dv)
        return out, None

    def chunk_mask(self, rows: tuple[int, int], query_len: int, key_len: int, *, is_causal: bool, device) -> Tensor:
        """Rows ``rows`` of the dense mask this variant applies (for chunked statistics).

        Shape:
            returns (end - start, S) bool.
        """
        return window_mask(
            query_len, key_len, left=self.left, right=self.right, global_tokens=self.global_tokens,
            is_causal=is_causal, rows=rows, device=device,
        )

    def extra_repr(self) -> str:
        return f"left={self.left}, right={self.right}, global_tokens={list(self.global_tokens)}"


class WindowCache:
    """The keys and values that causal sliding-window decoding still needs, and no others.

    A query at position p sees keys p - left .. p and the global tokens, so once the last
    global position has gone by, only the global tokens' keys and the last ``left``
    positions are kept: memory O(left + G) however long the decoding runs, where a
    :class:`~headwise.modules.KVCache` grows with every token.  (Until then every position
    is kept, since a global query attends every earlier key.)  :meth:`attend` appends the
    new keys and values and runs the new queries against what is held, through
    :func:`headwise.functional.attention` with the window's mask; a first call on an
    empty cache (a prompt) goes through :func:`sliding_window_attention`, O(L * w).
    Decoding token by token equals one causal windowed pass over the whole sequence.

    ``length`` counts every position seen (the next token's position, read by
    :class:`headwise.Attention` for rotary positions); ``held`` counts the positions kept.

    Shape:
        keys, values (B, K, capacity, D), the first ``held`` filled: the kept global
        positions, then the positions ``length - recent .. length - 1``.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        left: int,
        global_tokens: Sequence[int] = (),
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (
            ("batch_size", batch_size), ("max_len", max_len), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"WindowCache {name} must be a positive int, got {value!r}.")
        self.left, _ = _check_sizes(left, 0)
        self.global_tokens = tuple(sorted(_check_global_tokens(global_tokens)))
        self.max_len = max_len
        capacity = min(max_len, len(self.global_tokens) + 2 * (self.left + 1) + 16)
        self.keys = torch.zeros(batch_size, num_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0
        self._globals: list[int] = []  # kept global positions below _start, in order
        self._start = 0  # positions _start .. length - 1 follow the globals in the buffers

    @property
    def held(self) -> int:
        return len(self._globals) + self.length - self._start

    def reset(self) -> None:
        """Forget every position (the buffers are kept)."""
        self.length, self._globals, self._start = 0, [], 0

    def positions(self) -> Tensor:
        """Key positions of the held rows, in buffer order.  Shape: (held,)."""
        device = self.keys.device
        recent = torch.arange(self._start, self.length, device=device)  # (held - G_kept,)
        if not self._globals:
            return recent
        return torch.cat([torch.tensor(self._globals, dtype=torch.long, device=device), recent])  # (held,)

    def attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        attn_mask: Tensor | None = None,
        scale: float | None = None,
        dropout_p: float = 0.0,
    ) -> Tensor:
        """Append the new keys and values, then attend the new queries causally through the window.

        Args:
            query, key, value: the new positions' heads (grouped-query heads allowed).
            attn_mask: as for a :class:`~headwise.modules.KVCache`: broadcastable to
                (B, H, L, S) where S counts every position seen so far (``length`` after
                this call), e.g. (B, 1, 1, S) padding; only the held positions' columns are used.

        Shape:
            query (B, H, L, D), key (B, K, L, D), value (B, K, L, Dv) -> (B, H, L, Dv).
        """
        new = key.shape[2]
        keys = self.keys
        expected = (keys.shape[0], keys.shape[1], new, keys.shape[3])
        if tuple(key.shape) != expected or tuple(value.shape) != expected or query.shape[2] != new:
            raise ShapeError(
                f"WindowCache holds (B, K, D) = {(expected[0], expected[1], expected[3])} and takes as many "
                f"queries as keys, got query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)}, value "
                f"{fmt_shape(value.shape)}; build one cache per layer with layer.new_cache(...)."
            )
        first, end = self.length, self.length + new
        if end > self.max_len:
            raise ValueError(
                f"WindowCache is full: it was made for max_len={self.max_len} positions, {self.length} are used "
                f"and {new} more were given; create it with max_len >= {end}."
            )
        if attn_mask is not None and attn_mask.shape[-1] not in (1, end):
            raise ShapeError(
                f"attn_mask has {attn_mask.shape[-1]} key columns but the sequence has {end} positions "
                "with these tokens; give one column per position seen (or 1 to broadcast)."
            )
        if first == 0 and new >= self.left + 1:  # a prompt: blockwise, O(L * w)
            out = sliding_window_attention(
                query, key, value, left=self.left, right=0, global_tokens=[g for g in self.global_tokens if g < end],
                attn_mask=attn_mask, is_causal=True, scale=scale, dropout_p=dropout_p,
            )  # (B, H, L, Dv)
            self._store_prompt(key, value)
            return out
        self._make_room(new)
        held = self.held
        keys.narrow(2, held, new).copy_(key)
        self.values.narrow(2, held, new).copy_(value)
        self.length = end
        columns = self.positions()  # (held + L,) key positions
        rows = torch.arange(first, end, device=keys.device)  # (L,) query positions
        mask = _allowed(rows, columns, self.left, 0, self.global_tokens, True)  # (L, held + L), causal
        if attn_mask is not None:
            user = attn_mask if attn_mask.shape[-1] == 1 else attn_mask.index_select(-1, columns)
            mask = merge_masks(mask, user, dtype=query.dtype)
        out, _ = attention(
            query, keys.narrow(2, 0, held + new), self.values.narrow(2, 0, held + new), attn_mask=mask,
            scale=scale, dropout_p=dropout_p,
        )  # (B, H, L, Dv)
        return out

    def _keep_from(self, length: int) -> int:
        """First recent position to keep once ``length`` positions are seen (all, while a global is to come)."""
        if any(g >= length for g in self.global_tokens):
            return 0
        return max(0, length - self.left)

    def _store_prompt(self, key: Tensor, value: Tensor) -> None:
        """Keep only what later tokens need of a prompt that filled an empty cache."""
        new = key.shape[2]
        start = self._keep_from(new)
        kept_globals = [g for g in self.global_tokens if g < start]
        rows = len(kept_globals) + new - start
        self._ensure_capacity(rows)
        index = torch.tensor(kept_globals + list(range(start, new)), dtype=torch.long, device=key.device)
        self.keys.narrow(2, 0, rows).copy_(key.index_select(2, index))  # (B, K, rows, D)
        self.values.narrow(2, 0, rows).copy_(value.index_select(2, index))
        self.length, self._globals, self._start = new, kept_globals, start

    def _make_room(self, new: int) -> None:
        """Drop the positions no later query can see, then grow the buffers if still too small."""
        if self.held + new > self.keys.shape[2]:
            start = self._keep_from(self.length)
            if start > self._start:
                globals_ = self._globals + [g for g in self.global_tokens if self._start <= g < start]
                old = self.positions()  # (held,)
                keep = torch.tensor(globals_ + list(range(start, self.length)), device=old.device)  # (kept,)
                index = torch.searchsorted(old, keep)  # (kept,): rows of the kept positions (both sorted)
                for buffer in (self.keys, self.values):
                    buffer.narrow(2, 0, keep.numel()).copy_(buffer.index_select(2, index))
                self._globals, self._start = globals_, start
        self._ensure_capacity(self.held + new)

    def _ensure_capacity(self, rows: int) -> None:
        capacity = self.keys.shape[2]
        if rows <= capacity:
            return
        size = min(self.max_len, max(rows, 2 * capacity))
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:2], size, old.shape[3])  # (B, K, size, D)
            grown.narrow(2, 0, self.held).copy_(old.narrow(2, 0, self.held))
            setattr(self, name, grown)

