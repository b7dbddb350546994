"""Attention for long sequences, as variants of the same layers.

* :class:`SlidingWindow` / :func:`sliding_window_attention`: a band of ``left`` keys
  before and ``right`` after each query plus global tokens (Longformer), block by block
  through :func:`headwise.functional.attention`, O(L * w) time and memory, exact; causal
  decoding keeps only the window and the global tokens (:class:`WindowCache`).
* :class:`LinearAttention` / :func:`linear_attention`: phi(q) . phi(k) weights with
  :class:`EluFeatureMap` (Katharopoulos et al. 2020) or :class:`RandomFeatureMap`
  (Performer), non-causal, causal by chunked prefix sums, and a recurrent form for
  decoding (:class:`LinearState`), O(L).
* :func:`use_variant_`: switch every :class:`headwise.Attention` of a (trained) model to
  a variant in place; its own projections are kept.  ``None`` switches back.
* :func:`streaming_head_statistics`: entropy, mean distance and output norm per head,
  chunked over queries, never L x S.

Example::

    import headwise.models
    from headwise.variants import SlidingWindow, use_variant_

    model = headwise.models.load()
    use_variant_(model, SlidingWindow(32, 32, global_tokens=[0]))  # [CLS] stays global
"""

from __future__ import annotations

from torch import nn

from headwise.modules import Attention
from headwise.variants.linear import (
    EluFeatureMap,
    LinearAttention,
    LinearState,
    RandomFeatureMap,
    linear_attention,
    linear_attention_reference,
    recurrent_linear_attention,
)
from headwise.variants.stats import LongHeadStatistics, streaming_head_statistics
from headwise.variants.window import SlidingWindow, WindowCache, sliding_window_attention, window_mask

__all__ = [
    "EluFeatureMap",
    "LinearAttention",
    "LinearState",
    "LongHeadStatistics",
    "RandomFeatureMap",
    "SlidingWindow",
    "WindowCache",
    "linear_attention",
    "linear_attention_reference",
    "recurrent_linear_attention",
    "sliding_window_attention",
    "streaming_head_statistics",
    "use_variant_",
    "window_mask",
]


def use_variant_(model: nn.Module, variant: nn.Module | None) -> int:
    """Make every :class:`headwise.Attention` inside ``model`` compute ``variant``, in place.

    The layers keep their projections, so a model trained with full attention runs
    windowed or linear with its own weights; the state dict is unchanged.  The same
    ``variant`` object is shared by the layers (it holds no per-layer state).
    ``variant=None`` restores full attention.  Returns the number of layers changed.
    """
    if variant is not None and not (callable(variant) and hasattr(variant, "new_cache")):
        raise TypeError(
            f"variant must be an attention variant such as SlidingWindow(...) or LinearAttention(), or None; "
            f"got {type(variant).__name__}."
        )
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} contains no headwise.Attention layer; use_variant_ changes those "
            "(e.g. the encoder of headwise.models.load())."
        )
    for layer in layers:
        layer.variant = variant
    return len(layers)
