"""The six claims: which runs each needs, and how its numbers, figures and verdicts follow from them."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headwise.experiments._data import corpus, passages, windows
from headwise.experiments._model import SCALINGS, ByteLM
from headwise.experiments._plots import Series, plot_panels
from headwise.experiments._suite import SuiteConfig
from headwise.experiments._train import RunConfig, RunRecord
from headwise.experiments._verdict import Verdict, combine, verdict
from headwise.heads import (
    fisher_importance,
    gradient_importance,
    head_statistics,
    masked_curve,
    prune_heads_,
    random_order,
)
from headwise.viz import layer_head_heatmap

__all__ = ["CLAIMS", "Claim", "ClaimResult", "Results"]

#: The smallest difference of validation loss (nats per byte) that counts as an effect.
LOSS_FLOOR = 0.01
#: The smallest change of attention entropy (nats) that counts.
ENTROPY_FLOOR = 0.05
#: The smallest log ratio (about a 10% change) of gradient norms that counts.
RATIO_FLOOR = 0.1
#: Head specialization must at least double the spread of distances across heads (log 2).
SPREAD_FLOOR = math.log(2.0)
#: A head is local when its mean attention distance is below this share of the untrained model's,
#: and long-range when above :data:`LONG_RANGE`.
LOCAL, LONG_RANGE = 0.1, 0.5

LOSS = "nats/byte"


class Results:
    """What the analyses read: finished runs' records and, where kept, their trained models."""

    def __init__(self, records: dict[str, RunRecord], load: Callable[[RunConfig], ByteLM]) -> None:
        self._records = records
        self._load = load

    def record(self, config: RunConfig) -> RunRecord:
        return self._records[config.key()]

    def records(self, configs: Sequence[RunConfig]) -> list[RunRecord]:
        return [self.record(c) for c in configs]

    def model(self, config: RunConfig) -> ByteLM:
        return self._load(config)


@dataclass(frozen=True)
class ClaimResult:
    """One claim measured: its verdicts, a table, figures and the numbers behind them."""

    number: int
    name: str
    title: str
    claim: str
    method: str
    status: str
    verdicts: list[Verdict]
    headers: list[str]
    rows: list[list[str]]
    figures: list[tuple[str, Path, str]]  # (name, path, caption)
    data: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "number": self.number, "name": self.name, "title": self.title, "claim": self.claim,
            "method": self.method, "status": self.status, "verdicts": [v.to_dict() for v in self.verdicts],
            "table": {"headers": self.headers, "rows": self.rows},
            "figures": {name: path.name for name, path, _ in self.figures}, "data": self.data,
        }


@dataclass(frozen=True)
class Claim:
    """A claim: the runs it trains (``runs``), those whose weights it reads (``weights``), and its analysis."""

    number: int
    name: str
    title: str
    claim: str
    runs: Callable[[SuiteConfig], list[RunConfig]]
    analyze: Callable[[SuiteConfig, Results, Path], ClaimResult]
    weights: Callable[[SuiteConfig], list[RunConfig]] = lambda suite: []


# -- helpers ------------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    mean, sd = _mean_sd(values)
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _eval_steps(config: RunConfig) -> list[int]:
    steps = list(range(config.eval_every, config.steps + 1, config.eval_every))
    return steps if steps and steps[-1] == config.steps else [*steps, config.steps]


def _curve(records: Sequence[RunRecord], name: str, steps: Sequence[int]) -> tuple[list[float], list[float]]:
    """Mean and sd over seeds of a curve at each evaluation step (a run that stopped early leaves NaN)."""
    means, sds = [], []
    for i, step in enumerate(steps):
        values = [getattr(r, name)[i] for r in records if i < len(r.steps) and r.steps[i] == step]
        mean, sd = _mean_sd(values)
        means.append(mean)
        sds.append(sd)
    return means, sds


def _loss_at(record: RunRecord, step: int) -> float:
    """Validation loss at the first evaluation at or after ``step`` (log 256 if the run stopped before it)."""
    for s, v in zip(record.steps, record.val_loss, strict=True):
        if s >= step:
            return v if math.isfinite(v) else math.log(256)
    return math.log(256)


def _label(h: int, d: int) -> str:
    return f"{h} x {d}"


def _heads_text(count: int) -> str:
    return f"{count} head" if count == 1 else f"{count} heads"


# -- 1. scaling ------------------------------------------------------------------------------------------


def _scaling_runs(suite: SuiteConfig) -> list[RunConfig]:
    return [
        suite.run(
            _no_clip(suite.base, lr), seed, num_heads=suite.scaling_heads, head_dim=d, scaling=scaling
        )
        for d in suite.scaling_head_dims for scaling in SCALINGS for lr in suite.scaling_lrs for seed in suite.seeds
    ]


def _no_clip(recipe: RunConfig, lr: float) -> RunConfig:
    return replace(recipe, lr=lr, clip=None)


def _scaling(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    def cell(d: int, scaling: str, lr: float) -> list[RunRecord]:
        return [
            results.record(suite.run(_no_clip(suite.base, lr), s, num_heads=suite.scaling_heads, head_dim=d, scaling=scaling))
            for s in suite.seeds
        ]

    dims, lrs, seeds = suite.scaling_head_dims, suite.scaling_lrs, suite.seeds
    steps = _eval_steps(suite.base)
    quarter = steps[max(0, math.ceil(len(steps) / 4) - 1)]

    def per_seed(d: int, scaling: str, metric: Callable[[RunRecord], float]) -> list[float]:
        """For each seed, the metric's mean over the learning rates."""
        return [statistics.fmean(metric(cell(d, scaling, lr)[i]) for lr in lrs) for i in range(len(seeds))]

    def best(r: RunRecord) -> float:
        return r.best_val

    def early(r: RunRecord) -> float:
        return _loss_at(r, quarter)

    def final_entropy(r: RunRecord) -> float:
        finite = [e for e in r.entropy if math.isfinite(e)]
        return finite[-1] if finite else 0.0

    def log_max_norm(r: RunRecord) -> float:
        finite = [g for g in r.grad_norm_max if math.isfinite(g)]
        return math.log(max(finite)) if finite else math.log(1e6)

    top = max(dims)
    lr_text = ", ".join(f"{lr:g}" for lr in lrs)
    over = f"mean over learning rates {lr_text}" if len(lrs) > 1 else f"learning rate {lr_text}"
    verdicts = [
        verdict(
            f"1/sqrt(d_k) reaches a lower best validation loss than unscaled dot products at head dim {top} "
            f"({over})",
            [a - b for a, b in zip(per_seed(top, "none", best), per_seed(top, "sqrt", best), strict=True)],
            floor=LOSS_FLOOR, unit=LOSS,
        )
    ]
    for d in sorted(dims, reverse=True)[1:]:
        verdicts.append(verdict(
            f"the same at head dim {d}",
            [a - b for a, b in zip(per_seed(d, "none", best), per_seed(d, "sqrt", best), strict=True)],
            floor=LOSS_FLOOR, unit=LOSS, primary=False,
        ))
    diverged = {
        scaling: [sum(cell(d, scaling, lr)[i].diverged for d in dims for lr in lrs) for i in range(len(seeds))]
        for scaling in SCALINGS
    }
    verdicts += [
        verdict(
            f"1/sqrt(d_k) converges faster: lower validation loss after a quarter of training (step {quarter}), head dim {top}",
            [a - b for a, b in zip(per_seed(top, "none", early), per_seed(top, "sqrt", early), strict=True)],
            floor=LOSS_FLOOR, unit=LOSS, primary=False,
        ),
        verdict(
            f"without scaling the softmax saturates: lower attention entropy at the end of training, head dim {top}",
            [a - b for a, b in zip(per_seed(top, "sqrt", final_entropy), per_seed(top, "none", final_entropy), strict=True)],
            floor=ENTROPY_FLOOR, unit="nats", primary=False,
        ),
        verdict(
            f"1/sqrt(d_k) keeps gradients smaller: log of the largest gradient norm, unscaled minus scaled, head dim {top}",
            [a - b for a, b in zip(per_seed(top, "none", log_max_norm), per_seed(top, "sqrt", log_max_norm), strict=True)],
            floor=RATIO_FLOOR, unit="log ratio", primary=False,
        ),
        verdict(
            "unscaled dot products diverge more often (diverged runs per seed over every head dim and learning rate)",
            [float(a - b) for a, b in zip(diverged["none"], diverged["sqrt"], strict=True)],
            floor=1.0, unit="runs", primary=False,
        ),
        verdict(
            f"(comparison) QK-norm reaches a lower best validation loss than 1/sqrt(d_k) alone at head dim {top}",
            [a - b for a, b in zip(per_seed(top, "sqrt", best), per_seed(top, "qk_norm", best), strict=True)],
            floor=LOSS_FLOOR, unit=LOSS, primary=False,
        ),
    ]
    rows, data = [], []
    for d in dims:
        for lr in lrs:
            for scaling in SCALINGS:
                records = cell(d, scaling, lr)
                rows.append([
                    str(d), f"{lr:g}", scaling, _fmt([r.best_val for r in records]),
                    _fmt([early(r) for r in records]), _fmt([math.exp(log_max_norm(r)) for r in records], 2),
                    _fmt([final_entropy(r) for r in records], 2), f"{sum(r.diverged for r in records)}/{len(records)}",
                ])
                data.append({"head_dim": d, "lr": lr, "scaling": scaling, "keys": [r.key for r in records]})
    colors = {"sqrt": "tab:blue", "none": "tab:red", "qk_norm": "tab:green"}

    def grid(metric: str, path: Path, title: str, ylabel: str, log: bool) -> Path:
        panels = [
            (f"head dim {d}, lr {lr:g}", [
                Series(scaling, steps, *_curve(cell(d, scaling, lr), metric, steps), color=colors[scaling])
                for scaling in SCALINGS
            ])
            for d in dims for lr in lrs
        ]
        return plot_panels(path, panels, title=title, xlabel="step", ylabel=ylabel, columns=len(lrs), logy=log)

    figures = [
        ("scaling-loss", grid("val_loss", out / "claim1_val_loss.png", "validation loss (mean ± sd over seeds)", LOSS, False),
         "Validation loss during training: 1/sqrt(d_k) (sqrt), unscaled (none) and QK-norm, per head dim (rows) "
         "and learning rate (columns), without gradient clipping."),
        ("scaling-grad-norm", grid("grad_norm", out / "claim1_grad_norm.png", "mean gradient norm per interval", "norm", True),
         "Total gradient norm before any clipping, averaged over each evaluation interval."),
        ("scaling-entropy", grid("entropy", out / "claim1_entropy.png", "attention entropy", "nats", False),
         "Mean entropy of the attention rows on validation text: low = a saturated softmax (one key takes all)."),
    ]
    return ClaimResult(
        number=1, name="scaling", title="Scaling the dot products by 1/sqrt(d_k)",
        claim="Scaling the dot products by 1/sqrt(d_k) stabilizes gradients and speeds up convergence; "
        "without it softmax saturates.",
        method=f"{suite.scaling_heads} heads of dim {', '.join(map(str, dims))} trained with scale 1/sqrt(d_k), scale 1 "
        f"(Attention(scale=1.0)) and QK-norm (RMSNorm on each head's queries and keys, then 1/sqrt(d_k)) at learning rates "
        f"{lr_text}, no gradient clipping, {len(seeds)} seeds each.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["head dim", "lr", "scaling", "best val loss", f"val loss at step {quarter}", "largest grad norm",
                 "final entropy", "diverged"],
        rows=rows, figures=figures, data={"cells": data},
    )


# -- 2. head count ---------------------------------------------------------------------------------------


def _head_runs(suite: SuiteConfig, heads: int) -> list[RunConfig]:
    return [suite.run(suite.base, seed, num_heads=heads, head_dim=None) for seed in suite.seeds]


def _heads_runs(suite: SuiteConfig) -> list[RunConfig]:
    return [c for h in suite.head_counts for c in _head_runs(suite, h)]


def _heads(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    width = suite.base.model.embed_dim
    losses = {h: [r.best_val for r in results.records(_head_runs(suite, h))] for h in suite.head_counts}
    means = {h: statistics.fmean(v) for h, v in losses.items()}
    several = min((h for h in suite.head_counts if h > 1), key=lambda h: means[h])
    most = max(suite.head_counts)
    fewer = min((h for h in suite.head_counts if h < most), key=lambda h: means[h])
    verdicts = [
        verdict(
            f"several heads beat one head at width {width}: 1 head minus the best multi-head count ({_heads_text(several)}), best "
            "validation loss",
            [a - b for a, b in zip(losses[1], losses[several], strict=True)], floor=LOSS_FLOOR, unit=LOSS,
        ),
        verdict(
            f"more heads are not always better: {most} heads minus the best smaller count ({_heads_text(fewer)}), best validation loss",
            [a - b for a, b in zip(losses[most], losses[fewer], strict=True)], floor=LOSS_FLOOR, unit=LOSS,
        ),
    ]
    records = {h: results.records(_head_runs(suite, h)) for h in suite.head_counts}
    rows = [
        [str(h), str(width // h), f"{records[h][0].parameters:,}", _fmt(losses[h]),
         ", ".join(f"{v:.3f}" for v in losses[h])]
        for h in suite.head_counts
    ]
    counts = list(suite.head_counts)
    path = plot_panels(
        out / "claim2_head_count.png",
        [("", [Series("best validation loss", counts, [means[h] for h in counts],
                      [_mean_sd(losses[h])[1] for h in counts])])],
        title=f"head count at width {width} (mean ± sd over seeds)", xlabel="heads per layer", ylabel=LOSS,
        logx=True, bars=True,
    )
    return ClaimResult(
        number=2, name="heads", title="Head count at fixed width",
        claim="Several heads beat one head at the same width, but more heads are not always better.",
        method=f"{suite.base.model.num_layers} layers of width {width} with {', '.join(map(str, counts))} heads "
        f"(head dim = {width} / heads), the same recipe and {len(suite.seeds)} seeds each.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["heads", "head dim", "parameters", "best val loss", "per seed"], rows=rows,
        figures=[("head-count", path, "Best validation loss against the number of heads per layer at a fixed width.")],
        data={"best_val": {str(h): v for h, v in losses.items()}},
    )


# -- 3. head size ---------------------------------------------------------------------------------------


def _size_runs(suite: SuiteConfig, dim: int) -> list[RunConfig]:
    return [suite.run(suite.base, seed, num_heads=max(suite.head_counts), head_dim=dim) for seed in suite.seeds]


def _head_size_runs(suite: SuiteConfig) -> list[RunConfig]:
    return [c for d in suite.head_size_dims for c in _size_runs(suite, d)] + _heads_runs(suite)


def _head_size(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    width = suite.base.model.embed_dim
    most = max(suite.head_counts)
    tied = width // most
    big = max(suite.head_size_dims)
    fixed = {d: [r.best_val for r in results.records(_size_runs(suite, d))] for d in suite.head_size_dims}
    series = {h: [r.best_val for r in results.records(_head_runs(suite, h))] for h in suite.head_counts}
    verdicts = [
        verdict(
            f"{most} heads of dim {tied} (width {width} / {most}) are limited by their size: giving each a dim of {big} "
            "lowers the best validation loss",
            [a - b for a, b in zip(fixed[tied], fixed[big], strict=True)], floor=LOSS_FLOOR, unit=LOSS,
        )
    ]
    if width % big == 0 and width // big in suite.head_counts:
        fewer = width // big
        verdicts.append(verdict(
            f"at the same width {width}, {fewer} heads of dim {big} beat {most} heads of dim {tied} (size, not count, matters)",
            [a - b for a, b in zip(fixed[tied], series[fewer], strict=True)], floor=LOSS_FLOOR, unit=LOSS, primary=False,
        ))
    rows = [
        [f"{most} heads, growing dim", _label(most, d), str(most * d),
         f"{results.record(_size_runs(suite, d)[0]).parameters:,}", _fmt(v)]
        for d, v in fixed.items()
    ] + [
        [f"width {width}, shrinking dim", _label(h, width // h), str(width),
         f"{results.record(_head_runs(suite, h)[0]).parameters:,}", _fmt(v)]
        for h, v in series.items()
    ]
    dims = sorted(fixed)
    tied_heads = sorted(series, key=lambda h: width // h)
    path = plot_panels(
        out / "claim3_head_size.png",
        [("", [
            Series(f"{most} heads, head dim grows", dims, [_mean_sd(fixed[d])[0] for d in dims],
                   [_mean_sd(fixed[d])[1] for d in dims], color="tab:blue"),
            Series(f"width {width}: heads = {width} / head dim", [width // h for h in tied_heads],
                   [_mean_sd(series[h])[0] for h in tied_heads], [_mean_sd(series[h])[1] for h in tied_heads],
                   style="--", color="tab:orange"),
        ])],
        title="head size (mean ± sd over seeds)", xlabel="head dim", ylabel=LOSS, logx=True, bars=True,
    )
    return ClaimResult(
        number=3, name="head_size", title="Head size",
        claim=f"Too many heads for the width leaves each head too small a dimension ({most} heads of dim {tied} at width "
        f"{width}) and limits what it can learn.",
        method=f"{most} heads with head dim {', '.join(map(str, dims))} (Attention's head_dim argument, independent of the "
        f"width) against the width-tied series of claim 2 (heads x dim = {width}); {len(suite.seeds)} seeds each.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["series", "heads x dim", "heads x dim total", "parameters", "best val loss"], rows=rows,
        figures=[("head-size", path, "Best validation loss against the head dim: a fixed head count with growing heads, "
                  "and a fixed width where more heads mean smaller ones.")],
        data={"fixed_heads": {str(d): v for d, v in fixed.items()}, "width_tied": {str(h): v for h, v in series.items()}},
    )


# -- 4. dropout ------------------------------------------------------------------------------------------


def _variants(suite: SuiteConfig) -> dict[str, dict[str, float]]:
    return {
        "none": {"dropout": 0.0, "head_dropout": 0.0},
        f"attention dropout {suite.dropout:g}": {"dropout": suite.dropout, "head_dropout": 0.0},
        f"DropHead {suite.head_dropout:g}": {"dropout": 0.0, "head_dropout": suite.head_dropout},
    }


def _dropout_runs(suite: SuiteConfig) -> list[RunConfig]:
    return [suite.run(suite.overfit, seed, **v) for v in _variants(suite).values() for seed in suite.seeds]


def _dropout(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    runs = {name: results.records([suite.run(suite.overfit, s, **v) for s in suite.seeds]) for name, v in _variants(suite).items()}
    names = list(runs)
    best = {name: [r.best_val for r in records] for name, records in runs.items()}
    gap = {name: [r.final_gap for r in records] for name, records in runs.items()}
    verdicts = []
    for name in names[1:]:
        verdicts.append(verdict(
            f"{name} lowers the best validation loss of a model that overfits",
            [a - b for a, b in zip(best["none"], best[name], strict=True)], floor=LOSS_FLOOR, unit=LOSS,
        ))
    for name in names[1:]:
        verdicts.append(verdict(
            f"{name} narrows the final gap between validation and training loss",
            [a - b for a, b in zip(gap["none"], gap[name], strict=True)], floor=ENTROPY_FLOOR, unit=LOSS, primary=False,
        ))
    rows = []
    for name, records in runs.items():
        best_steps = [r.steps[r.val_loss.index(r.best_val)] if r.best_val in r.val_loss else math.nan for r in records]
        rows.append([
            name, _fmt(best[name]), _fmt(best_steps, 0), _fmt([r.val_loss[-1] for r in records]),
            _fmt([r.train_eval_loss[-1] for r in records]), _fmt(gap[name]),
        ])
    steps = _eval_steps(suite.overfit)
    colors = dict(zip(names, ["tab:gray", "tab:blue", "tab:green"], strict=True))
    lines = []
    for name, records in runs.items():
        lines.append(Series(f"{name}: validation", steps, *_curve(records, "val_loss", steps), color=colors[name]))
        lines.append(Series(f"{name}: training", steps, *_curve(records, "train_eval_loss", steps), style="--",
                            marker=None, color=colors[name]))
    path = plot_panels(out / "claim4_dropout.png", [("", lines)], title="overfitting: loss on validation and training text",
                       xlabel="step", ylabel=LOSS)
    model = suite.overfit.model
    return ClaimResult(
        number=4, name="dropout", title="Attention dropout and DropHead",
        claim="Attention dropout and head dropout (DropHead, Zhou et al. 2020) regularize and reduce overfitting.",
        method=f"A bigger model ({model.num_layers} layers of width {model.embed_dim}, {model.num_heads} heads) on only the "
        f"first {suite.overfit.train_bytes:,} bytes of training text for {suite.overfit.steps} steps: no dropout, dropout "
        f"{suite.dropout:g} on attention probabilities, and DropHead {suite.head_dropout:g} (Attention(head_dropout=...)), "
        f"{len(suite.seeds)} seeds each.  Training loss is measured in eval mode on fixed training windows.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["variant", "best val loss", "step of best", "final val loss", "final train loss", "final gap"], rows=rows,
        figures=[("dropout", path, "Validation (solid) and training (dashed) loss of the overfitting model, mean ± sd over seeds.")],
        data={"best_val": best, "final_gap": gap},
    )


# -- 5. redundancy ----------------------------------------------------------------------------------------


def _analysed(suite: SuiteConfig) -> list[RunConfig]:
    return _head_runs(suite, suite.analysed_heads)


def _importance_order(scores: Sequence[torch.Tensor], *, min_heads: int = 1) -> list[tuple[int, int]]:
    """Heads from least to most important, over all layers; every layer keeps ``min_heads``."""
    ranked = sorted((float(s), layer, head) for layer, values in enumerate(scores) for head, s in enumerate(values))
    left, order = [len(v) for v in scores], []
    for _, layer, head in ranked:
        if left[layer] > min_heads:
            order.append((layer, head))
            left[layer] -= 1
    return order


def _redundancy_curves(suite: SuiteConfig, model: ByteLM, seed: int) -> dict[str, object]:
    length = suite.base.model.max_length
    calibration = passages(suite.calibration_passages, length, validation=False)
    held = windows(corpus().validation, suite.base.eval_windows, length)  # (n, L + 1)

    @torch.no_grad()
    def loss(candidate: ByteLM) -> float:
        return float(candidate.next_byte_loss(held))

    num_heads = [layer.num_heads for layer in model.attention_layers]
    counts = [round(f * sum(num_heads)) for f in suite.fractions]
    orders = {
        "gradient": _importance_order(gradient_importance(model, calibration, batch_size=16)),
        "fisher": _importance_order(fisher_importance(model, calibration, batch_size=16, probes=2, seed=seed)),
    }
    curves = {name: masked_curve(model, order, loss, counts) for name, order in orders.items()}
    randoms = [
        masked_curve(model, random_order(num_heads, 1000 * seed + r), loss, counts) for r in range(suite.random_orders)
    ]
    k = counts[suite.fractions.index(suite.little_loss_fraction)]
    pruned = copy.deepcopy(model)
    chosen: dict[int, list[int]] = {}
    for layer, head in orders["gradient"][:k]:
        chosen.setdefault(layer, []).append(head)
    prune_heads_(pruned, chosen)
    return {
        "counts": counts, "orders": {n: [list(h) for h in o] for n, o in orders.items()}, "curves": curves,
        "random": randoms, "pruned_loss": loss(pruned),
        "parameters": [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (model, pruned)],
    }


def _redundancy(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    runs = _analysed(suite)
    found = [_redundancy_curves(suite, results.model(c), c.seed) for c in runs]
    counts = found[0]["counts"]
    total = suite.analysed_heads * suite.base.model.num_layers
    at = suite.fractions.index(suite.little_loss_fraction)
    rise = [f["curves"]["gradient"][at] - f["curves"]["gradient"][0] for f in found]

    def beats_random(name: str) -> list[float]:
        return [
            statistics.fmean(
                statistics.fmean(r[i] for r in f["random"]) - f["curves"][name][i] for i in range(1, len(counts))
            )
            for f in found
        ]

    verdicts = [
        verdict(
            f"removing the {suite.little_loss_fraction:.0%} least important heads (Michel et al.'s gradient score) costs "
            f"little: the validation loss rises by less than {suite.little_loss:g} (effect: {suite.little_loss:g} minus the rise)",
            [suite.little_loss - r for r in rise], floor=0.0, unit=LOSS,
        ),
        verdict(
            "importance (gradient score) beats random orders: lower validation loss, mean over the curve's points",
            beats_random("gradient"), floor=LOSS_FLOOR, unit=LOSS,
        ),
        verdict(
            "the label-free Fisher score beats random orders too", beats_random("fisher"), floor=LOSS_FLOOR, unit=LOSS,
            primary=False,
        ),
    ]
    masked = [f["curves"]["gradient"][at] for f in found]
    physical = [f["pruned_loss"] for f in found]
    rows = [
        [f"{k} ({100 * k / total:.0f}%)", _fmt([f["curves"]["gradient"][i] for f in found]),
         _fmt([f["curves"]["fisher"][i] for f in found]), _fmt([r[i] for f in found for r in f["random"]])]
        for i, k in enumerate(counts)
    ]
    share = [100 * k / total for k in counts]
    lines = [
        Series(name, share, *zip(*(_mean_sd([f["curves"][key][i] for f in found]) for i in range(len(counts))), strict=True),
               color=color)
        for name, key, color in (("gradient importance", "gradient", "tab:blue"), ("Fisher importance", "fisher", "tab:green"))
    ] + [
        Series(f"random orders ({suite.random_orders} per model)", share,
               *zip(*(_mean_sd([r[i] for f in found for r in f["random"]]) for i in range(len(counts))), strict=True),
               style="--", color="tab:gray")
    ]
    path = plot_panels(out / "claim5_pruning.png", [("", lines)], title="loss against heads removed (mean ± sd over models)",
                       xlabel="heads removed (%)", ylabel=f"validation loss ({LOSS})")
    parameters = found[0]["parameters"]
    return ClaimResult(
        number=5, name="redundancy", title="Redundant heads",
        claim="After training, some heads are redundant and can be removed with little loss.",
        method=f"The {len(runs)} trained models of claim 2 with {suite.analysed_heads} heads per layer ({total} heads): heads "
        f"scored on {suite.calibration_passages} passages of training text (headwise.heads.gradient_importance, the model's own "
        f"loss, and fisher_importance), silenced in importance order and in {suite.random_orders} random orders per model "
        "(headwise.heads.masked_curve, random_order), validation loss at each point.  At "
        f"{suite.little_loss_fraction:.0%} the heads are also removed physically (prune_heads_): parameters "
        f"{parameters[0]:,} -> {parameters[1]:,}, loss equal to masking within {max(abs(a - b) for a, b in zip(masked, physical, strict=True)):.1e}.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["heads removed", "gradient order", "Fisher order", "random orders"], rows=rows,
        figures=[("pruning", path, "Validation loss against the share of heads silenced: importance orders against random orders.")],
        data={"models": [r.key for r in results.records(runs)], "curves": found, "masked_loss": masked, "pruned_loss": physical},
    )


# -- 6. specialization -------------------------------------------------------------------------------------


def _untrained(config: RunConfig) -> ByteLM:
    """The network of a run as initialized, before its first step (the same seed as :func:`train`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ByteLM(config.model).eval()


def _specialization(suite: SuiteConfig, results: Results, out: Path) -> ClaimResult:
    texts = passages(suite.statistics_passages, suite.base.model.max_length, validation=True)
    runs = _analysed(suite)
    trained = [head_statistics(results.model(c), texts) for c in runs]
    initial = [head_statistics(_untrained(c), texts) for c in runs]

    def flat(values: Sequence[torch.Tensor]) -> list[float]:
        return [float(x) for v in values for x in v]

    def log_range(values: list[float]) -> float:
        return math.log(max(values) / max(min(values), 1e-6))

    distances = [flat(s.distance) for s in trained]
    initial_distances = [flat(s.distance) for s in initial]
    entropies = [flat(s.entropy) for s in trained]
    initial_entropies = [flat(s.entropy) for s in initial]
    verdicts = [
        verdict(
            "heads specialize in local or long-range context: the ratio of the longest to the shortest mean attention "
            "distance among heads at least doubles in training (effect: its log, trained minus untrained)",
            [log_range(a) - log_range(b) for a, b in zip(distances, initial_distances, strict=True)],
            floor=SPREAD_FLOOR, unit="log ratio",
        ),
        verdict(
            "heads also differ in how focused they are: the ratio of the largest to the smallest attention entropy "
            "at least doubles in training",
            [log_range(a) - log_range(b) for a, b in zip(entropies, initial_entropies, strict=True)],
            floor=SPREAD_FLOOR, unit="log ratio", primary=False,
        ),
    ]
    rows = []
    for config, d, d0, e in zip(runs, distances, initial_distances, entropies, strict=True):
        reference = statistics.fmean(d0)
        rows.append([
            str(config.seed), f"{min(d):.1f} - {max(d):.1f}", f"{max(d) / max(min(d), 1e-6):.1f}x",
            f"{max(d0) / max(min(d0), 1e-6):.2f}x", str(sum(x < LOCAL * reference for x in d)),
            str(sum(x > LONG_RANGE * reference for x in d)), f"{min(e):.2f} - {max(e):.2f}",
        ])
    first = trained[0]
    figures = [
        ("distance", layer_head_heatmap(first.distance, out / "claim6_distance.png",
                                        title=f"mean attention distance (seed {runs[0].seed})", label="bytes"),
         "Mean distance back to the attended bytes, per head, of the first seed's model: local heads are dark."),
        ("entropy", layer_head_heatmap(first.entropy, out / "claim6_entropy.png",
                                       title=f"attention entropy (seed {runs[0].seed})", label="nats"),
         "Entropy of each head's attention rows: low = focused on a few bytes."),
    ]
    order = range(len(distances[0]))
    lines = [
        Series(f"seed {c.seed} trained", list(order), sorted(d), marker="o") for c, d in zip(runs, distances, strict=True)
    ] + [
        Series(f"seed {c.seed} untrained", list(order), sorted(d), style=":", marker=None, color="tab:gray")
        for c, d in zip(runs, initial_distances, strict=True)
    ]
    figures.append((
        "distance-sorted",
        plot_panels(out / "claim6_sorted.png", [("", lines)], title="heads sorted by mean attention distance",
                    xlabel="head (sorted)", ylabel="bytes", logy=True),
        "Every head's mean attention distance, sorted, for each trained model and its untrained initialization.",
    ))
    return ClaimResult(
        number=6, name="specialization", title="Local and long-range heads",
        claim="Some heads specialize in local context, others in long-range dependencies.",
        method=f"headwise.heads.head_statistics (mean attention distance and entropy per head) on {len(texts)} passages of "
        f"validation text, for the trained models of claim 5 and the same networks before training.  A head counts as "
        f"local below {LOCAL:.0%} of the untrained model's mean distance and as long-range above {LONG_RANGE:.0%}.",
        status=combine(verdicts), verdicts=verdicts,
        headers=["seed", "distance range (bytes)", "longest / shortest", "untrained", "local heads", "long-range heads",
                 "entropy range (nats)"],
        rows=rows, figures=figures,
        data={"distance": distances, "untrained_distance": initial_distances, "entropy": entropies,
              "untrained_entropy": initial_entropies},
    )


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "scaling", "Scaling by 1/sqrt(d_k)", "1/sqrt(d_k) scaling stabilizes gradients and speeds up convergence",
          _scaling_runs, _scaling),
    Claim(2, "heads", "Head count", "several heads beat one at the same width; more are not always better",
          _heads_runs, _heads),
    Claim(3, "head_size", "Head size", "too small a head dim limits what a head can learn", _head_size_runs, _head_size),
    Claim(4, "dropout", "Attention dropout and DropHead", "attention dropout and DropHead reduce overfitting",
          _dropout_runs, _dropout),
    Claim(5, "redundancy", "Redundant heads", "some heads can be removed with little loss",
          lambda suite: _analysed(suite), _redundancy, weights=_analysed),
    Claim(6, "specialization", "Local and long-range heads", "some heads attend locally, others far",
          lambda suite: _analysed(suite), _specialization, weights=_analysed),
)
