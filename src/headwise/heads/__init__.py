"""Heads toolkit: score, describe and remove attention heads.

Score the heads of a sentence encoder on real text and remove the least important::

    import headwise.models
    from headwise.heads import PruneConfig, fisher_importance, prune_by_importance_, prune_heads_

    model = headwise.models.load()                          # all-MiniLM-L6-v2, 6 x 12 heads
    scores = fisher_importance(model, texts)                # one (12,) tensor per layer
    removed = prune_by_importance_(model, texts, PruneConfig(remove=22))  # 30% of 72
    prune_heads_(model, {0: [3, 7]})                        # or name the heads yourself
    model.save("minilm-pruned")                             # head counts go to config.json

* Scoring works on any :class:`HeadModel`: the pipelines of :mod:`headwise.models` or a
  model of your own with :class:`headwise.Attention` layers, ``tokenize`` and ``outputs``.
* :func:`prune_heads_` removes heads physically from :class:`headwise.Attention`
  (grouped-query included), :class:`headwise.MultiheadAttention` and the models of
  :mod:`headwise.models`; pruning equals masking the same heads (``head_gate = 0``).
* Importance (per query head, or per kv group with ``granularity="groups"``):
  :func:`gradient_importance` (Michel et al. 2019, with a task loss or a causal LM's own loss),
  :func:`fisher_importance` (label-free: squared gate gradients of self-distillation),
  :func:`ablation_importance` (leave one head out), :func:`normalize_per_layer`.
* :func:`head_statistics`: entropy, attention distance, [CLS]/[SEP]/padding shares and
  head-to-head similarity of maps and outputs, with clusters of redundant heads.
* :func:`prune_by_importance_` with a :class:`PruneConfig`: iterative pruning, re-scoring
  after every ``step`` heads.
* :func:`pruning_curve`: agreement with the unpruned model (:func:`agreement`) against the
  share of heads removed, iterative importance pruning against :func:`random_order` baselines;
  :func:`perplexity_curve`: the same for a causal LM, by held-apart perplexity, removing
  query heads or whole kv groups (``granularity``);
  :func:`masked_curve` evaluates any removal order by silencing heads.
* :func:`distill_` with a :class:`DistillConfig`: recovery, a short self-distillation of
  the pruned model toward an unpruned copy on the calibration text.
"""

from headwise.heads._curve import (
    Agreement,
    PerplexityCurve,
    PruningCurve,
    agreement,
    masked_curve,
    perplexity_curve,
    pruning_curve,
    random_order,
)
from headwise.heads._importance import (
    GRANULARITIES,
    ablation_importance,
    fisher_importance,
    gradient_importance,
    normalize_per_layer,
)
from headwise.heads._iterative import PruneConfig, prune_by_importance_
from headwise.heads._protocol import HeadModel
from headwise.heads._prune import attention_layers, head_counts, prune_heads_
from headwise.heads._recovery import DistillConfig, DistillResult, distill_
from headwise.heads._stats import HeadStatistics, head_statistics

__all__ = [
    "GRANULARITIES",
    "Agreement",
    "DistillConfig",
    "DistillResult",
    "HeadModel",
    "HeadStatistics",
    "PerplexityCurve",
    "PruneConfig",
    "PruningCurve",
    "ablation_importance",
    "agreement",
    "attention_layers",
    "distill_",
    "fisher_importance",
    "gradient_importance",
    "head_counts",
    "head_statistics",
    "masked_curve",
    "normalize_per_layer",
    "perplexity_curve",
    "prune_by_importance_",
    "prune_heads_",
    "pruning_curve",
    "random_order",
]
