"""Pruning curves: what removing heads costs, by importance and at random.

:func:`pruning_curve` measures a sentence encoder by its agreement with the unpruned
embeddings; :func:`perplexity_curve` measures a causal language model by its perplexity on
held-apart text, removing query heads or whole kv groups.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from headwise.heads._importance import GRANULARITIES
from headwise.heads._iterative import PruneConfig, prune_by_importance_
from headwise.heads._protocol import check_model
from headwise.heads._prune import kv_heads_of
from headwise.heads._scoring import check_texts, gated_layers

__all__ = [
    "Agreement",
    "PerplexityCurve",
    "PruningCurve",
    "agreement",
    "masked_curve",
    "perplexity_curve",
    "pruning_curve",
    "random_order",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Agreement:
    """How closely a changed encoder's sentence embeddings follow the original's.

    Attributes:
        cosine: mean cosine similarity of each text's two embeddings.
        spearman: Spearman rank correlation of the pairwise similarities between texts
            (does the changed model still rank which texts are alike the same way?).
    """

    cosine: float
    spearman: float


def agreement(reference: Tensor, candidate: Tensor) -> Agreement:
    """Compare two sets of sentence embeddings of the same texts.

    Shape:
        reference (N, E), candidate (N, E), N >= 3.
    """
    if reference.shape != candidate.shape or reference.dim() != 2 or reference.shape[0] < 3:
        raise ValueError(
            f"agreement needs two (N, E) embeddings of the same N >= 3 texts, got {tuple(reference.shape)} "
            f"and {tuple(candidate.shape)}."
        )
    cosine = torch.nn.functional.cosine_similarity(reference.float(), candidate.float(), dim=1).mean()
    rows, cols = torch.triu_indices(len(reference), len(reference), offset=1)
    pairs_a = (reference @ reference.T)[rows, cols]
    pairs_b = (candidate @ candidate.T)[rows, cols]
    ranks = torch.stack([pairs_a.argsort().argsort(), pairs_b.argsort().argsort()]).float()
    return Agreement(cosine=float(cosine), spearman=float(torch.corrcoef(ranks)[0, 1]))


def random_order(num_heads: Sequence[int], seed: int, *, min_heads: int = 1) -> list[tuple[int, int]]:
    """A random removal order of (layer, head), every layer keeping ``min_heads``; a pruning baseline."""
    rng = random.Random(seed)
    heads = [(layer, head) for layer, count in enumerate(num_heads) for head in range(count)]
    rng.shuffle(heads)
    left, order = list(num_heads), []
    for layer, head in heads:
        if left[layer] > min_heads:
            order.append((layer, head))
            left[layer] -= 1
    return order


def masked_curve(
    model: nn.Module, order: Sequence[tuple[int, int]], evaluate: Callable[[nn.Module], T], counts: Sequence[int]
) -> list[T]:
    """``evaluate`` a copy of ``model`` with the first k heads of ``order`` silenced, for each k in ``counts``.

    Heads are silenced by setting their gate to 0, which equals removing them (tested);
    ``model`` itself is not changed.  ``counts`` must be ascending.
    """
    if list(counts) != sorted(counts) or (counts and (counts[0] < 0 or counts[-1] > len(order))):
        raise ValueError(f"counts must be ascending within [0, {len(order)}] (the order's length), got {list(counts)}.")
    masked = copy.deepcopy(model)
    layers = gated_layers(masked)
    results, done = [], 0
    for k in counts:
        with torch.no_grad():
            for layer, head in order[done:k]:
                layers[layer].head_gate[head] = 0.0
        done = k
        results.append(evaluate(masked))
    return results


@dataclass(frozen=True)
class PruningCurve:
    """Agreement with the unpruned model after removing heads, by importance and at random.

    Attributes:
        total_heads: heads of the unpruned model.
        removed: heads removed at each point of the curve (ascending, the first is usually 0).
        importance: agreement at each point when pruning iteratively by importance.
        random: for each seed, agreement at each point when removing heads in a random order.
    """

    total_heads: int
    removed: tuple[int, ...]
    importance: tuple[Agreement, ...]
    random: tuple[tuple[Agreement, ...], ...]

    def random_mean(self, field: str = "cosine") -> list[float]:
        """Mean over seeds of the random baseline's ``field`` at each point."""
        return [float(v) for v in self._random(field).mean(dim=0)]

    def random_std(self, field: str = "cosine") -> list[float]:
        """Standard deviation over seeds (0 with one seed) of the random baseline at each point."""
        values = self._random(field)
        return [0.0] * len(self.removed) if len(values) < 2 else [float(v) for v in values.std(dim=0)]

    def _random(self, field: str) -> Tensor:
        if field not in ("cosine", "spearman"):
            raise ValueError(f"field must be 'cosine' or 'spearman', got {field!r}.")
        return torch.tensor([[getattr(a, field) for a in seed] for seed in self.random])  # (seeds, points)

    def to_dict(self) -> dict[str, object]:
        return {
            "total_heads": self.total_heads,
            "removed": list(self.removed),
            "importance": [dataclasses.asdict(a) for a in self.importance],
            "random": [[dataclasses.asdict(a) for a in seed] for seed in self.random],
        }


def pruning_curve(
    model: nn.Module,
    calibration: Sequence[str],
    evaluation: Sequence[str],
    *,
    fractions: Sequence[float],
    config: PruneConfig | None = None,
    seeds: int = 3,
    batch_size: int = 32,
    on_point: Callable[[str, int, nn.Module], None] | None = None,
) -> PruningCurve:
    """Measure what removing heads costs: importance order against random orders.

    The importance curve prunes a copy of ``model`` with :func:`prune_by_importance_`
    (scores from ``calibration``, re-estimated as ``config`` says) up to each fraction in
    turn; the baseline silences heads of another copy in ``seeds`` random orders.  Every
    point compares the embeddings of the held-apart ``evaluation`` texts with the unpruned
    model's (:func:`agreement`).  ``model`` is not changed.

    Args:
        fractions: shares of all heads to remove, ascending, in [0, 1).
        config: how to prune by importance (``remove`` is ignored); default ``PruneConfig(remove=0)``.
        seeds: random orders in the baseline.
        on_point: called as ``on_point(curve, removed, model)`` after each point, with
            ``curve`` ``"importance"`` or ``"random"``; e.g. to keep a copy of the pruned
            model at one point, or to advance a progress bar.
    """
    check_model(model)
    if not callable(getattr(model, "encode", None)):
        raise TypeError(
            f"pruning_curve compares sentence embeddings (model.encode); {type(model).__name__} has no encode. "
            "For other models use masked_curve with a measure of your own."
        )
    calibration = check_texts(model, calibration)
    evaluation = check_texts(model, evaluation)
    if len(evaluation) < 3:
        raise ValueError(f"evaluation needs at least 3 texts to compare similarities, got {len(evaluation)}.")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}.")
    config = dataclasses.replace(PruneConfig(remove=0) if config is None else config, progress=False)
    num_heads = [layer.num_heads for layer in gated_layers(model)]
    total = sum(num_heads)
    counts = _counts(fractions, total, sum(max(n - config.min_heads, 0) for n in num_heads))
    reference = model.encode(list(evaluation), batch_size=batch_size)

    def evaluate(candidate: nn.Module) -> Agreement:
        return agreement(reference, candidate.encode(list(evaluation), batch_size=batch_size))

    pruned = copy.deepcopy(model)
    importance, done = [], 0
    for k in counts:
        if k > done:
            prune_by_importance_(pruned, calibration, dataclasses.replace(config, remove=k - done))
        done = k
        importance.append(evaluate(pruned))
        if on_point is not None:
            on_point("importance", k, pruned)

    def evaluate_random(candidate: nn.Module) -> Agreement:
        result = evaluate(candidate)
        if on_point is not None:
            on_point("random", sum(int((layer.head_gate == 0).sum()) for layer in gated_layers(candidate)), candidate)
        return result

    randoms = tuple(
        tuple(masked_curve(model, random_order(num_heads, seed, min_heads=config.min_heads), evaluate_random, counts))
        for seed in range(seeds)
    )
    return PruningCurve(total_heads=total, removed=tuple(counts), importance=tuple(importance), random=randoms)


@dataclass(frozen=True)
class PerplexityCurve:
    """Held-apart perplexity of a causal LM after removing heads, by importance and at random.

    Attributes:
        granularity: ``"heads"`` (query heads removed one by one) or ``"groups"`` (whole kv
            groups: a kv head and its query heads).
        total_heads: query heads of the unpruned model.
        removed: query heads removed at each point (ascending; 0 first gives the unpruned value).
        importance: perplexity at each point, pruning iteratively by importance.
        random: for each seed, perplexity at each point, removing heads (or groups) in a random order.
    """

    granularity: str
    total_heads: int
    removed: tuple[int, ...]
    importance: tuple[float, ...]
    random: tuple[tuple[float, ...], ...]

    def random_mean(self) -> list[float]:
        """Mean over seeds of the random orders' perplexity at each point."""
        return [sum(values) / len(values) for values in zip(*self.random, strict=True)]

    def to_dict(self) -> dict[str, object]:
        return {
            "granularity": self.granularity,
            "total_heads": self.total_heads,
            "removed": list(self.removed),
            "importance": list(self.importance),
            "random": [list(values) for values in self.random],
        }


def perplexity_curve(
    model: nn.Module,
    calibration: Sequence[str],
    evaluation: Sequence[str],
    *,
    fractions: Sequence[float],
    granularity: str = "heads",
    config: PruneConfig | None = None,
    seeds: int = 3,
    context_length: int | None = None,
    stride: int | None = None,
    on_point: Callable[[str, int, nn.Module], None] | None = None,
) -> PerplexityCurve:
    """Perplexity on held-apart text against the share of query heads removed: importance against random.

    The importance curve prunes a copy of ``model`` with :func:`prune_by_importance_` (scored
    on ``calibration`` with the model's next-token distributions, re-scored as ``config``
    says) up to each fraction in turn; the baseline silences heads of another copy in
    ``seeds`` random orders.  ``granularity="groups"`` removes whole kv groups (the fractions
    count groups then).  Every point is ``model.perplexity(evaluation, context_length=...,
    stride=...)`` (see :meth:`headwise.models.CausalLM.perplexity`).  ``model`` is not changed.

    Args:
        fractions: shares of the heads (or groups) to remove, ascending, in [0, 1).
        config: how to prune by importance (``remove`` and ``granularity`` are set here);
            default ``PruneConfig(remove=0)``.
        on_point: called as ``on_point(curve, removed_heads, model)`` after each point, with
            ``curve`` ``"importance"`` or ``"random"``.
    """
    check_model(model)
    if not callable(getattr(model, "perplexity", None)):
        raise TypeError(
            f"perplexity_curve measures a causal language model's perplexity; {type(model).__name__} has no "
            "perplexity (for a sentence encoder use pruning_curve)."
        )
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    calibration = check_texts(model, calibration)
    evaluation = check_texts(model, evaluation)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}.")
    config = dataclasses.replace(  # the curve reports its own points (on_point): no bar per step
        PruneConfig(remove=0) if config is None else config, granularity=granularity, progress=False
    )
    layers = gated_layers(model)
    groups = granularity == "groups"
    units = [layer.num_kv_heads if groups else layer.num_heads for layer in layers]
    counts = _counts(fractions, sum(units), sum(max(n - config.min_heads, 0) for n in units))
    total_heads = sum(layer.num_heads for layer in layers)

    def evaluate(candidate: nn.Module) -> float:
        return candidate.perplexity(list(evaluation), context_length=context_length, stride=stride).value

    def heads_removed(candidate: nn.Module) -> int:
        return sum(int((layer.head_gate == 0).sum()) for layer in gated_layers(candidate))

    pruned = copy.deepcopy(model)
    importance, removed, done = [], [], 0
    for k in counts:
        if k > done:
            prune_by_importance_(pruned, calibration, dataclasses.replace(config, remove=k - done))
        done = k
        removed.append(total_heads - sum(layer.num_heads for layer in gated_layers(pruned)))
        importance.append(evaluate(pruned))
        if on_point is not None:
            on_point("importance", removed[-1], pruned)

    def evaluate_random(candidate: nn.Module) -> float:
        result = evaluate(candidate)
        if on_point is not None:
            on_point("random", heads_removed(candidate), candidate)
        return result

    randoms = []
    for seed in range(seeds):
        order = random_order(units, seed, min_heads=config.min_heads)  # (layer, head or group)
        if groups:  # each group's query heads, one after another
            kv_of = [kv_heads_of(layer) for layer in layers]
            sizes = [kv_of[layer].count(g) for layer, g in order]
            order = [(layer, h) for layer, g in order for h, kv in enumerate(kv_of[layer]) if kv == g]
            head_counts = [sum(sizes[:k]) for k in counts]
        else:
            head_counts = list(counts)
        randoms.append(tuple(masked_curve(model, order, evaluate_random, head_counts)))
    return PerplexityCurve(
        granularity=granularity, total_heads=total_heads, removed=tuple(removed),
        importance=tuple(importance), random=tuple(randoms),
    )


def _counts(fractions: Sequence[float], total: int, available: int) -> list[int]:
    values = list(fractions)
    if not values or any(not 0.0 <= f < 1.0 for f in values) or values != sorted(values):
        raise ValueError(f"fractions must be ascending shares of the heads in [0, 1), got {values}.")
    counts = [round(f * total) for f in values]
    if counts[-1] > available:
        raise ValueError(
            f"fraction {values[-1]} would remove {counts[-1]} of {total} heads, but only {available} can go while "
            "every layer keeps PruneConfig.min_heads; use smaller fractions."
        )
    return counts
