"""Streaming with attention sinks: perplexity of a long text when the cache keeps a window and the first tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headwise.variants import SlidingWindow, use_variant_

__all__ = ["StreamingRow", "streaming_perplexity"]


@dataclass(frozen=True)
class StreamingRow:
    """One way of attending over a long text, and what it cost.

    Attributes:
        attention: ``"dense"``, ``"window W"`` or ``"window W + k sinks"``.
        window: keys before each query it attends (``None``: all).
        sinks: first tokens every query attends as well (global tokens).
        perplexity: over the scored tokens.
        tokens: tokens scored (every position from ``score_from`` on).
        cache_bytes: bytes the caches hold at the end of the text (keys and values of every
            layer); a window's stays the same however long the text.
    """

    attention: str
    window: int | None
    sinks: int
    perplexity: float
    tokens: int
    cache_bytes: int


@torch.inference_mode()
def streaming_perplexity(
    model: nn.Module,
    text: str,
    *,
    windows: Sequence[int] = (128, 256, 512),
    sinks: Sequence[int] = (0, 1, 2, 4, 8),
    score_from: int = 1024,
    max_tokens: int | None = None,
    chunk: int = 256,
    on_row: Callable[[StreamingRow], None] | None = None,
) -> list[StreamingRow]:
    """Perplexity of ``text`` read as a stream: dense attention, a sliding window, and a window plus sinks.

    The text is fed in chunks of at most ``chunk`` tokens through the model's caches, as
    generation would read it: dense attention keeps every position (:class:`headwise.KVCache`);
    a window of W keeps the last W positions and, with k sinks, the first k tokens too
    (:class:`headwise.variants.SlidingWindow` with ``global_tokens`` 0..k-1 and its
    :class:`~headwise.variants.WindowCache`, Xiao et al. 2023's StreamingLLM with the positions
    of the original text).  Every token from position ``score_from`` on is scored by its
    next-token loss, so the first window's easy tokens do not dilute the comparison.  The
    model is restored to dense attention afterwards.

    Args:
        model: a causal LM of :mod:`headwise.models` (``tokenize``, ``network`` with
            ``new_caches``).
        windows: window sizes W; each runs with every entry of ``sinks``.
        sinks: numbers of first tokens kept (0: the window alone).
        score_from: the first position whose next token is scored.
        max_tokens: cut the text to this many tokens (default: all of it).
        on_row: called with each row as it is measured (e.g. a progress bar).

    Raises:
        ValueError: the text has no token past ``score_from``, or a window or sink count is
            not a positive (non-negative) int.
    """
    network = model.network
    ids = model.tokenize([text])["input_ids"][:, :max_tokens]  # (1, L)
    length = ids.shape[1]
    if length <= score_from + 1:
        raise ValueError(
            f"the text has {length} tokens, but scoring starts at position {score_from}; give a longer text "
            f"(several windows long) or a smaller score_from."
        )
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in windows):
        raise ValueError(f"windows must be positive ints, got {list(windows)}.")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in sinks):
        raise ValueError(f"sinks must be non-negative ints, got {list(sinks)}.")
    if any(w >= length for w in windows):
        raise ValueError(f"every window must be shorter than the text ({length} tokens), got {list(windows)}.")
    settings: list[tuple[int | None, int]] = [(None, 0), *((w, k) for w in windows for k in sinks)]
    rows = []
    try:
        for window, kept in settings:
            use_variant_(network, None if window is None else SlidingWindow(window, 0, global_tokens=list(range(kept))))
            step = chunk if window is None else max(1, min(chunk, window))
            caches = network.new_caches(1, length)
            loss, scored = 0.0, 0
            for start in range(0, length - 1, step):
                piece = ids[:, start : start + step]  # (1, c)
                logits, _ = network(piece, caches=caches)  # (1, c, V)
                first = max(score_from, start) - start  # positions of this chunk that are scored
                targets = ids[0, start + first + 1 : start + piece.shape[1] + 1]  # (n,)
                if len(targets):
                    predicted = logits[0, first : first + len(targets)]  # (n, V)
                    if predicted.dtype.itemsize < 4:
                        predicted = predicted.float()  # the loss of half types in float32
                    loss += float(F.cross_entropy(predicted, targets, reduction="sum"))
                    scored += len(targets)
            held = sum(c.keys.numel() * c.keys.element_size() * 2 for c in caches)  # keys and values
            name = "dense" if window is None else f"window {window}" + (f" + {kept} sinks" if kept else "")
            row = StreamingRow(name, window, kept, math.exp(loss / scored), scored, held)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        use_variant_(network, None)
    return rows
