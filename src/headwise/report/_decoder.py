"""The head report of a causal LM: importance per head and per kv group, sinks, the perplexity curve, streaming."""

from __future__ import annotations

import html
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from headwise.report._streaming import streaming_perplexity

__all__ = ["DecoderReportSettings", "decoder_report_steps", "write_decoder_report"]


@dataclass(frozen=True)
class DecoderReportSettings:
    """What :func:`write_decoder_report` measures (sized to run in minutes on 2 CPU cores).

    Args:
        fractions: points of the perplexity curve (shares of the query heads), ascending in [0, 1).
        seeds: random orders in the curve's baseline.
        step: query heads removed between two importance estimates along the curve.
        probes: random probes per batch of the Fisher importance.
        context_length: tokens per perplexity window (stride: half of it).
        evaluation_tokens: tokens of held-apart text the perplexity reads.
        windows: sliding windows of the streaming table.
        sinks: sink tokens of the streaming table (0: the window alone).
        sink_tokens: first tokens whose attention share makes a sink head.
    """

    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    seeds: int = 1
    step: int = 27
    probes: int = 2
    context_length: int = 512
    evaluation_tokens: int = 2048
    windows: tuple[int, ...] = (128, 256)
    sinks: tuple[int, ...] = (0, 1, 4)
    sink_tokens: int = 1

    def __post_init__(self) -> None:
        if not self.fractions or list(self.fractions) != sorted(self.fractions):
            raise ValueError(f"fractions must be ascending, got {self.fractions}.")
        if self.evaluation_tokens <= self.context_length:
            raise ValueError(
                f"evaluation_tokens={self.evaluation_tokens} must exceed context_length={self.context_length}: "
                "the streaming table scores the tokens after the first context."
            )


def decoder_report_steps(settings: DecoderReportSettings) -> int:
    """How many times :func:`write_decoder_report` calls ``on_step``."""
    points = len(settings.fractions) * (1 + settings.seeds)
    return 4 + points + 1 + (1 + len(settings.windows) * len(settings.sinks)) + 1  # maps, scores, curve, streaming rows, figures


def write_decoder_report(
    model: nn.Module,
    model_ref: str,
    out: Path,
    *,
    texts: Sequence[str],
    source: str,
    sample_text: str | None = None,
    settings: DecoderReportSettings | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Measure the heads of a causal LM and write report.html, report.json and the PNGs into ``out``.

    The first half of ``texts`` scores heads (calibration); the second half, joined, is the
    held-apart text of the perplexity curve and of the streaming table (cut to
    ``settings.evaluation_tokens``).  ``sample_text`` (default: the first held-apart text) is
    the text whose attention maps are shown.

    Returns:
        the contents of report.json.
    """
    import headwise
    from headwise.heads import PruneConfig, fisher_importance, head_statistics, perplexity_curve
    from headwise.report._encoder import attention_maps
    from headwise.viz import (
        head_map_pngs,
        html_figure,
        html_page,
        html_picker,
        html_table,
        layer_head_heatmap,
        pruning_curve_png,
    )

    settings = DecoderReportSettings() if settings is None else settings
    step = on_step or (lambda _: None)
    texts = list(texts)
    if len(texts) < 8:
        raise ValueError(f"the report needs at least 8 texts (half to score heads, half held apart), got {len(texts)}.")
    half = len(texts) // 2
    calibration = texts[:half]
    evaluation = _held_apart(model, texts[half:], settings.evaluation_tokens)
    tokens_held = int(model.tokenize([evaluation])["input_ids"].shape[1])
    if tokens_held <= settings.context_length:
        raise ValueError(
            f"the held-apart half of the texts has {tokens_held} tokens, but the perplexity reads windows of "
            f"{settings.context_length}; give more or longer texts (--limit) or a smaller context."
        )
    sample_text = texts[half] if sample_text is None else sample_text
    out.mkdir(parents=True, exist_ok=True)

    step("attention maps of the sample text")
    tokens, maps = attention_maps(model, sample_text)
    step(f"head importance on {len(calibration)} texts")
    importance = fisher_importance(model, calibration, probes=settings.probes, batch_size=16)
    step("kv group importance")
    group_importance = fisher_importance(model, calibration, probes=settings.probes, batch_size=16, granularity="groups")
    step(f"attention statistics on {len(calibration)} texts")
    stats = head_statistics(model, calibration, batch_size=16, sink_tokens=settings.sink_tokens)

    context = settings.context_length
    curve = perplexity_curve(
        model, calibration, [evaluation], fractions=settings.fractions, seeds=settings.seeds,
        config=PruneConfig(remove=0, step=settings.step, probes=settings.probes, batch_size=16),
        context_length=context, stride=context // 2,
        on_point=lambda kind, removed, _: step(f"perplexity curve: {kind} order, {removed} heads removed"),
    )
    step("streaming: dense attention")
    streaming = streaming_perplexity(
        model, evaluation, windows=settings.windows, sinks=settings.sinks, score_from=context,
        on_row=lambda row: step(f"streaming: {row.attention} measured"),
    )

    step("figures")
    total = sum(model.num_heads)
    figures = {
        "importance": (
            layer_head_heatmap(importance, out / "importance.png", title="head importance (Fisher, KL)", label="score"),
            "Expected squared gradient of each query head's gate of the KL to the unpruned next-token "
            "distributions (label-free). Low = removing the head barely changes the predictions.",
        ),
        "group-importance": (
            layer_head_heatmap(group_importance, out / "group_importance.png", title="kv group importance", label="score"),
            "The same score for each kv group (a key/value head and the query heads that read it), i.e. for "
            "removing the group and its share of the KV cache.",
        ),
        "sinks": (
            layer_head_heatmap(stats.sink_share, out / "sinks.png", title="attention on the first token", label="share"),
            "Share of each head's attention on the first token: sink heads (Xiao et al. 2023) put most of "
            "their weight there, which is why a window cache needs to keep it.",
        ),
        "self": (
            layer_head_heatmap(stats.self_share, out / "self.png", title="attention on the current token", label="share"),
            "Share of each head's attention on the query's own position.",
        ),
        "entropy": (
            layer_head_heatmap(stats.entropy, out / "entropy.png", title="attention entropy", label="nats"),
            "Entropy of each head's attention rows over the keys it may attend (causal).",
        ),
        "distance": (
            layer_head_heatmap(stats.distance, out / "distance.png", title="mean attention distance", label="tokens"),
            "Mean distance back to the keys each head attends: local heads are small, long-range heads large.",
        ),
        "curve": (
            pruning_curve_png(
                curve.removed, total, list(curve.importance), curve.random_mean(), [0.0] * len(curve.removed),
                out / "pruning_curve.png", seeds=settings.seeds, label="held-apart perplexity",
            ),
            f"Perplexity of {tokens_held} held-apart tokens against the share of query heads removed: "
            "iterative importance pruning against random orders.",
        ),
    }
    head_pngs = head_map_pngs(tokens, maps)
    report: dict[str, object] = {
        "model": model_ref,
        "kind": "causal LM",
        "texts": source,
        "calibration_texts": len(calibration),
        "evaluation_tokens": tokens_held,
        "sample_text": sample_text,
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists, as report.json holds them
        "versions": {"headwise": headwise.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "heads_per_layer": list(model.num_heads),
        "kv_heads_per_layer": list(model.num_kv_heads),
        "importance": [v.tolist() for v in importance],
        "group_importance": [v.tolist() for v in group_importance],
        "sink_share": [v.tolist() for v in stats.sink_share],
        "self_share": [v.tolist() for v in stats.self_share],
        "entropy": [v.tolist() for v in stats.entropy],
        "distance": [v.tolist() for v in stats.distance],
        "perplexity_curve": curve.to_dict(),
        "streaming": [asdict(row) for row in streaming],  # floats, ints and str: JSON as they are
        "figures": {name: path.name for name, (path, _) in figures.items()},
        "html": "report.html",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")

    def fig(name: str) -> str:
        path, caption = figures[name]
        return html_figure(path, name, caption)

    sinks = sorted(
        ((float(share), layer, head) for layer, values in enumerate(stats.sink_share) for head, share in enumerate(values)),
        reverse=True,
    )
    curve_rows = [
        [f"{k} ({100 * k / total:.0f}%)", f"{imp:.2f}", f"{rnd:.2f}", f"{rnd / imp:.2f}x"]
        for k, imp, rnd in zip(curve.removed, curve.importance, curve.random_mean(), strict=True)
    ]
    dense = streaming[0].perplexity
    stream_rows = [
        [r.attention, f"{r.perplexity:.2f}", f"{r.perplexity / dense:.2f}x", f"{r.cache_bytes / 2**20:.1f} MiB"]
        for r in streaming
    ]
    versions = report["versions"]
    body = "\n".join([
        f"<h1>Heads of {html.escape(model_ref)}</h1>",
        f"<p class=\"meta\">{html.escape(source)}: {len(calibration)} score heads, {tokens_held} held-apart tokens "
        f"measure perplexity. {len(model.num_heads)} layers of {max(model.num_heads)} query heads over "
        f"{max(model.num_kv_heads)} kv heads. headwise {versions['headwise']}, torch {versions['torch']}, "
        f"Python {versions['python']}. Numbers: <code>report.json</code>.</p>",
        "<h2>Which heads matter</h2>",
        f'<div class="pair">{fig("importance")}{fig("group-importance")}</div>',
        "<h2>Sink heads and what heads look at</h2>",
        f'<div class="pair">{fig("sinks")}{fig("self")}</div>',
        "<p>Heads with the most attention on the first token: "
        + ", ".join(f"L{layer}.H{head} ({share:.0%})" for share, layer, head in sinks[:8]) + ".</p>",
        f'<div class="pair">{fig("entropy")}{fig("distance")}</div>',
        "<h2>What pruning costs</h2>",
        fig("curve"),
        html_table(["query heads removed", "importance: perplexity", "random: perplexity", "random / importance"], curve_rows),
        "<h2>Streaming with attention sinks</h2>",
        f"<p class=\"meta\">The held-apart text read through the caches; perplexity of every token after position "
        f"{context}.</p>",
        html_table(["attention", "perplexity", "vs dense", "cache at the end"], stream_rows),
        "<h2>Attention maps, head by head</h2>",
        f"<p class=\"meta\">&ldquo;{html.escape(sample_text)}&rdquo; ({len(tokens)} tokens). Rows are queries, "
        "columns keys (causal: the upper triangle is empty).</p>",
        html_picker(head_pngs),
    ])
    (out / "report.html").write_text(html_page(f"headwise report: {model_ref}", body), encoding="utf-8")
    return report


def _held_apart(model: nn.Module, texts: Sequence[str], tokens: int) -> str:
    """The texts joined with blank lines, cut to about ``tokens`` tokens (whole texts)."""
    chosen: list[str] = []
    for text in texts:
        chosen.append(text)
        if model.tokenize(["\n\n".join(chosen)])["input_ids"].shape[1] >= tokens:
            break
    return "\n\n".join(chosen)
