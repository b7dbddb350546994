"""The head report of a model (``headwise report``): one self-contained HTML page, its PNGs and a JSON of every number.

:func:`write_report` runs the whole head loop on a sentence encoder of
:mod:`headwise.models`: Fisher importance, attention statistics (entropy, distance,
[CLS]/[SEP] shares, redundancy), the pruning curve (importance order against random
orders), the attention maps of one text, and the speed of the model pruned by
importance against the unpruned one.
"""

from __future__ import annotations

import copy
import html
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from headwise.report._decoder import DecoderReportSettings, write_decoder_report
from headwise.viz import attention_page, head_map_pngs, html_figure, html_page, html_picker, html_table

__all__ = ["ReportSettings", "attention_maps", "report_steps", "write_report"]


@dataclass(frozen=True)
class ReportSettings:
    """What :func:`write_report` measures.

    Args:
        fraction: share of heads removed in the pruned model whose speed is reported;
            it joins ``fractions`` if missing.
        fractions: points of the pruning curve, ascending in [0, 1).
        seeds: random orders in the pruning curve's baseline.
        step: heads removed between two importance estimates along the curve.
        probes: random probes per batch of the Fisher importance along the curve.
        threshold: output similarity from which two heads count as redundant.
        map_threshold: attention-map similarity from which two heads count as redundant
            (maps are non-negative and most heads put weight on [CLS]/[SEP], so map
            similarities run higher than output similarities).
        batch_sizes: batch sizes of the speed comparison.
        speed_seconds: time budget of each speed comparison.
    """

    fraction: float = 0.3
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    seeds: int = 3
    step: int = 4
    probes: int = 2
    threshold: float = 0.8
    map_threshold: float = 0.95
    batch_sizes: tuple[int, ...] = (1, 32)
    speed_seconds: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}.")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive ints, got {self.batch_sizes}.")
        if self.speed_seconds <= 0:
            raise ValueError(f"speed_seconds must be positive, got {self.speed_seconds}.")

    @property
    def curve_fractions(self) -> tuple[float, ...]:
        return tuple(sorted({*self.fractions, self.fraction}))


def report_steps(settings: ReportSettings) -> int:
    """How many times :func:`write_report` calls ``on_step`` (for a progress bar's total)."""
    points = len(settings.curve_fractions)
    return 5 + points * (1 + settings.seeds) + len(settings.batch_sizes)


def attention_maps(model: nn.Module, text: str) -> tuple[list[str], list[Tensor]]:
    """The tokens of ``text`` and every layer's attention weights on it.

    Shape:
        -> tokens (L,), one (H_l, L, L) tensor per layer.
    """
    if not text.strip():
        raise ValueError('the text is empty; give a text to look at, e.g. "The cat sat on the mat."')
    batch = model.tokenize([text])
    with torch.no_grad():
        _, maps = model(**batch, output_attentions=True)
    tokens = [model.tokenizer.id_to_token(i) or "?" for i in batch["input_ids"][0].tolist()]  # [CLS], the, ##s, ...
    return tokens, [m[0] for m in maps]


def write_report(
    model_ref: str,
    out: Path,
    *,
    texts: Sequence[str],
    source: str,
    sample_text: str | None = None,
    settings: ReportSettings | DecoderReportSettings | None = None,
    on_step: Callable[[str], None] | None = None,
    model: nn.Module | None = None,
) -> dict[str, object]:
    """Measure the heads of ``model_ref`` and write report.html, report.json and the PNGs into ``out``.

    The first half of ``texts`` scores heads (calibration), the second half is held apart
    to measure what pruning changes.  ``sample_text`` (default: the first held-apart
    text) is the text whose attention maps are shown.  ``on_step(description)`` is
    called :func:`report_steps` times, before each unit of work.  ``model``: the loaded
    model, when the caller has it (else it is loaded from ``model_ref``).  A causal LM gets
    the decoder's report (:func:`~headwise.report.write_decoder_report`, with
    ``DecoderReportSettings``).

    Returns:
        the contents of report.json.
    """
    import headwise
    import headwise.models
    from headwise.bench import Budget, compare_speed
    from headwise.heads import PruneConfig, fisher_importance, head_statistics, pruning_curve
    from headwise.viz import (
        layer_grid_png,
        layer_head_heatmap,
        pruning_curve_png,
        similarity_heatmap,
        speedup_png,
    )

    step = on_step or (lambda _: None)
    if model is None:
        step("loading the model")
        model = headwise.models.load(model_ref)
    if getattr(model, "causal", False):
        if settings is not None and not isinstance(settings, DecoderReportSettings):
            raise TypeError(f"{model_ref} is a causal LM: its report takes DecoderReportSettings, got {type(settings).__name__}.")
        return write_decoder_report(
            model, model_ref, out, texts=texts, source=source, sample_text=sample_text, settings=settings, on_step=on_step
        )
    if settings is not None and not isinstance(settings, ReportSettings):
        raise TypeError(f"{model_ref} is a sentence encoder: its report takes ReportSettings, got {type(settings).__name__}.")
    settings = ReportSettings() if settings is None else settings
    texts = list(texts)
    if len(texts) < 8:
        raise ValueError(f"the report needs at least 8 texts (half to score heads, half held apart), got {len(texts)}.")
    half = len(texts) // 2
    calibration, evaluation = texts[:half], texts[half:]
    sample_text = evaluation[0] if sample_text is None else sample_text

    truncated = getattr(model, "truncated", None)
    cut = truncated(texts) if truncated is not None else 0
    if cut:
        source += f"; {cut} of them cut to {model.max_length} tokens (the model's limit)"
    tokens, maps = attention_maps(model, sample_text)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(model.num_heads)

    step(f"head importance on {len(calibration)} texts")
    importance = fisher_importance(model, calibration)
    step(f"attention statistics on {len(calibration)} texts")
    stats = head_statistics(model, calibration)
    thresholds = {"output": settings.threshold, "map": settings.map_threshold}
    clusters = {kind: stats.redundant_clusters(threshold=thresholds[kind], kind=kind) for kind in thresholds}
    similar = {kind: stats.most_similar(8, kind=kind) for kind in ("output", "map")}

    fractions = settings.curve_fractions
    keep_at = round(settings.fraction * total)
    kept: dict[str, nn.Module] = {}

    def on_point(curve: str, removed: int, candidate: nn.Module) -> None:
        if curve == "importance" and removed == keep_at and "pruned" not in kept:
            kept["pruned"] = copy.deepcopy(candidate)
        step(f"pruning curve: {curve} order, {removed} of {total} heads removed")

    config = PruneConfig(remove=0, step=settings.step, probes=settings.probes)
    curve = pruning_curve(
        model, calibration, evaluation, fractions=fractions, config=config, seeds=settings.seeds, on_point=on_point
    )
    pruned = kept["pruned"]

    speed = []
    budget = Budget(seconds=settings.speed_seconds, min_rounds=3, max_rounds=15, min_sample_s=0.02, max_inner=20)
    for batch_size in settings.batch_sizes:
        step(f"speed before and after pruning, batch {batch_size}")
        speed += compare_speed(model, pruned, evaluation, [batch_size], budget)

    step("figures")
    grids = [layer_grid_png(m, out / f"layer{i}.png", title=f"layer {i}") for i, m in enumerate(maps)]
    figures = {
        "importance": (
            layer_head_heatmap(importance, out / "importance.png", title="head importance (Fisher)", label="score"),
            "Head importance: expected squared gradient of each head's gate under self-distillation (Michel et al. "
            "2019, label-free). Low = the output barely depends on the head.",
        ),
        "entropy": (
            layer_head_heatmap(stats.entropy, out / "entropy.png", title="attention entropy", label="nats"),
            "Entropy of each head's attention rows: low = focused on few tokens, high = spread out.",
        ),
        "distance": (
            layer_head_heatmap(stats.distance, out / "distance.png", title="mean attention distance", label="tokens"),
            "Mean distance between a query and the keys it attends: local heads are small, long-range heads large.",
        ),
        "redundancy": (
            similarity_heatmap(stats.output_similarity, stats.heads, out / "redundancy.png", title="head output similarity"),
            "Cosine similarity of the heads' contributions to the residual stream: bright off-diagonal cells are "
            "heads that write the same thing.",
        ),
        "map-similarity": (
            similarity_heatmap(stats.map_similarity, stats.heads, out / "map_similarity.png", title="attention map similarity"),
            "Cosine similarity of the heads' attention maps on the same texts: bright cells are heads that look at "
            "the same tokens.",
        ),
        "pruning-curve": (
            pruning_curve_png(
                curve.removed, total, [a.cosine for a in curve.importance], curve.random_mean(), curve.random_std(),
                out / "pruning_curve.png", seeds=settings.seeds,
            ),
            f"Mean cosine of {len(evaluation)} held-apart texts' embeddings to the unpruned model's, against the "
            "share of heads removed: iterative pruning by importance against random orders.",
        ),
        "speed": (
            speedup_png(
                [f"{r['what']}, batch {r['batch_size']}" for r in speed],
                [r["ratio"]["median"] for r in speed],
                out / "speed.png",
                title=f"{keep_at} of {total} heads removed",
            ),
            "Speed-up of the model pruned by importance over the unpruned one (median over round-robin rounds).",
        ),
    }
    head_pngs = head_map_pngs(tokens, maps)
    (out / "attention.html").write_text(attention_page(model_ref, sample_text, tokens, head_pngs), encoding="utf-8")

    at = curve.removed.index(keep_at)
    report: dict[str, object] = {
        "model": model_ref,
        "texts": source,
        "calibration_texts": len(calibration),
        "evaluation_texts": len(evaluation),
        "sample_text": sample_text,
        "settings": asdict(settings),
        "versions": {"headwise": headwise.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "heads_per_layer": list(model.num_heads),
        "head_dim": model.config.head_dim,
        "importance": [v.tolist() for v in importance],
        "entropy": [v.tolist() for v in stats.entropy],
        "distance": [v.tolist() for v in stats.distance],
        "cls_share": [v.tolist() for v in stats.cls_share],
        "sep_share": [v.tolist() for v in stats.sep_share],
        "redundant_clusters": {
            "thresholds": thresholds,
            **{kind: [[list(h) for h in c] for c in found] for kind, found in clusters.items()},
        },
        "most_similar": {kind: [[list(a), list(b), s] for a, b, s in pairs] for kind, pairs in similar.items()},
        "pruning_curve": curve.to_dict(),
        "pruned": {
            "removed": keep_at,
            "heads_per_layer": list(pruned.num_heads),
            "cosine": curve.importance[at].cosine,
            "spearman": curve.importance[at].spearman,
            "random_cosine": curve.random_mean()[at],
        },
        "speed": speed,
        "figures": {name: path.name for name, (path, _) in figures.items()},
        "layer_maps": [g.name for g in grids],
        "html": "report.html",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    body = _report_body(report, figures, curve, clusters, head_pngs, tokens)
    (out / "report.html").write_text(html_page(f"headwise report: {model_ref}", body), encoding="utf-8")
    return report


def _report_body(report, figures, curve, clusters, head_pngs, tokens) -> str:
    def fig(name: str) -> str:
        path, caption = figures[name]
        return html_figure(path, name, caption)

    pruned = report["pruned"]
    thresholds = report["redundant_clusters"]["thresholds"]
    total = sum(report["heads_per_layer"])
    encode = [r for r in report["speed"] if r["what"] == "encode"]
    best = max(encode, key=lambda r: r["batch_size"])
    cards = [
        ("heads", f"{total}", f"{len(report['heads_per_layer'])} layers x {max(report['heads_per_layer'])}, dim {report['head_dim']}"),
        ("redundant clusters", f"{len(clusters['output'])} / {len(clusters['map'])}", f"outputs >= {thresholds['output']} / maps >= {thresholds['map']}"),
        ("pruned", f"{pruned['removed']} heads", f"cosine {pruned['cosine']:.3f} (random {pruned['random_cosine']:.3f})"),
        ("encode speed-up", f"{best['ratio']['median']:.2f}x", f"batch {best['batch_size']}, pruned vs unpruned"),
    ]
    card_html = "".join(
        f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b><span class="meta">{html.escape(d)}</span></div>'
        for k, v, d in cards
    )
    curve_rows = [
        [
            f"{k} ({100 * k / total:.0f}%)",
            f"{imp.cosine:.3f}",
            f"{imp.spearman:.3f}",
            f"{mean:.3f} ± {sd:.3f}",
            f"{rs:.3f}",
        ]
        for k, imp, mean, sd, rs in zip(
            curve.removed, curve.importance, curve.random_mean(), curve.random_std(), curve.random_mean("spearman"),
            strict=True,
        )
    ]
    def cluster_list(found) -> str:
        items = "".join("<li>" + ", ".join(f"L{layer}.H{head}" for layer, head in c) + "</li>" for c in found)
        return f"<ul>{items or '<li>none at this threshold</li>'}</ul>"

    pair_rows = [
        [f"L{a[0]}.H{a[1]} & L{b[0]}.H{b[1]}", f"{s:.3f}", f"L{c[0]}.H{c[1]} & L{d[0]}.H{d[1]}", f"{r:.3f}"]
        for (a, b, s), (c, d, r) in zip(report["most_similar"]["output"], report["most_similar"]["map"], strict=True)
    ]
    speed_rows = [
        [r["what"], r["batch_size"], r["unpruned"], r["pruned"], f"{r['ratio']['median']:.2f}x ({r['ratio']['min']:.2f}x)"]
        for r in report["speed"]
    ]
    versions = report["versions"]
    return "\n".join(
        [
            f"<h1>Heads of {html.escape(report['model'])}</h1>",
            f"<p class=\"meta\">{html.escape(report['texts'])}: {report['calibration_texts']} score heads, "
            f"{report['evaluation_texts']} held apart. headwise {versions['headwise']}, torch {versions['torch']}, "
            f"Python {versions['python']}. Numbers: <code>report.json</code>.</p>",
            f'<div class="cards">{card_html}</div>',
            "<h2>Which heads matter</h2>",
            fig("importance"),
            "<h2>What heads look at</h2>",
            f'<div class="pair">{fig("entropy")}{fig("distance")}</div>',
            "<h2>Heads that repeat each other</h2>",
            f'<div class="pair">{fig("redundancy")}{fig("map-similarity")}</div>',
            "<p>The most similar pairs of heads:</p>",
            html_table(["outputs: heads", "cosine", "attention maps: heads", "cosine"], pair_rows),
            f"<p>Clusters of heads whose outputs have cosine similarity &ge; {thresholds['output']} (single linkage):</p>",
            cluster_list(clusters["output"]),
            f"<p>Clusters of heads whose attention maps have cosine similarity &ge; {thresholds['map']}:</p>",
            cluster_list(clusters["map"]),
            "<h2>What pruning costs</h2>",
            fig("pruning-curve"),
            html_table(
                ["heads removed", "importance: cosine", "importance: Spearman", "random: cosine (mean ± sd)", "random: Spearman"],
                curve_rows,
            ),
            "<h2>What pruning buys</h2>",
            fig("speed"),
            html_table(["what", "batch", "unpruned", "pruned", "speed-up median (min)"], speed_rows),
            "<h2>Attention maps, head by head</h2>",
            f"<p class=\"meta\">&ldquo;{html.escape(report['sample_text'])}&rdquo; ({len(tokens)} tokens). "
            "Rows are queries, columns keys.</p>",
            html_picker(head_pngs),
        ]
    )
