"""``headwise report [MODEL] --out DIR``: the whole head loop on a model, as one self-contained HTML page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from headwise.cli._output import Fraction, OutFolder, check_writable, staged_folder
from headwise.cli._progress import Steps, quiet_option
from headwise.cli._texts import read_texts
from headwise.cli.inspect_cmd import model_option, pick_model


@click.command("report")
@click.argument("model", required=False)
@model_option
@click.option("--out", type=OutFolder(), default=Path("headwise-report"), show_default=True)
@click.option("--texts", "texts_path", type=click.Path(dir_okay=False, allow_dash=True), help="One text per line (- for standard input): the first half scores heads, the second is held apart (default: Python's docs).")
@click.option("--limit", type=click.IntRange(min=8), default=64, show_default=True, help="Use at most this many texts.")
@click.option("--text", "sample_text", help="The text whose attention maps are shown (default: the first held-apart text).")
@click.option("--fraction", type=Fraction(), default=0.3, show_default=True, help="Share of heads removed in the pruned model whose speed is measured.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Random orders in the pruning curve's baseline (default: 3 for an encoder, 1 for a decoder).")
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0, min_open=True), default=0.8, show_default=True, help="Output similarity that makes two heads redundant.")
@click.option("--map-threshold", type=click.FloatRange(-1.0, 1.0, min_open=True), default=0.95, show_default=True, help="Attention-map similarity that makes two heads redundant.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's contents instead of a summary.")
@quiet_option
def report_command(
    model: str | None,
    model_option: str | None,
    out: Path,
    texts_path: str | None,
    limit: int,
    sample_text: str | None,
    fraction: float,
    seeds: int | None,
    threshold: float,
    map_threshold: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Everything about a model's heads in one HTML page (no network: images and script inline).

    Head importance, entropy and attention distance, redundant heads, the pruning curve
    (importance against random orders), every head's attention map with a layer/head
    picker, and the speed of the pruned model. Writes report.html, report.json and the
    PNGs into --out. About two minutes for all-MiniLM-L6-v2 on 2 CPU cores.

    \b
    Examples:
      headwise report --out report
      headwise report ./my-bert --texts corpus.txt --limit 200 --fraction 0.5
      headwise report --model SmolLM2-135M-Instruct --out smollm2-report
    """
    import headwise.models
    from headwise.report import (
        DecoderReportSettings,
        ReportSettings,
        decoder_report_steps,
        report_steps,
        write_report,
    )

    model = pick_model(model, model_option)
    texts, source = read_texts(texts_path, limit=limit)
    if sample_text is not None and not sample_text.strip():
        raise ValueError("--text is empty; give the text whose attention maps to show.")
    check_writable(out, "--out")
    start = time.perf_counter()
    with staged_folder(out) as folder, Steps(description="loading the model", quiet=quiet) as progress:
        loaded = headwise.models.load(model)
        if getattr(loaded, "causal", False):
            settings = DecoderReportSettings(seeds=seeds or 1)
            total = decoder_report_steps(settings)
        else:
            settings = ReportSettings(fraction=fraction, seeds=seeds or 3, threshold=threshold, map_threshold=map_threshold)
            total = report_steps(settings) - 1  # the model is loaded already
        progress.update(total=total)
        first = [True]

        def on_step(description: str) -> None:
            progress.update(description, advance=0 if first[0] else 1)
            first[0] = False

        report = write_report(
            model, folder, texts=texts, source=source, sample_text=sample_text, settings=settings, on_step=on_step,
            model=loaded,
        )
        progress.update(advance=total - progress.done)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if report.get("kind") == "causal LM":
        curve = report["perplexity_curve"]
        points = ", ".join(
            f"{k} heads {imp:.1f} (random {sum(r[i] for r in curve['random']) / len(curve['random']):.1f})"
            for i, (k, imp) in enumerate(zip(curve["removed"], curve["importance"], strict=True))
        )
        click.echo(f"{report['model']}: {sum(report['heads_per_layer'])} query heads, {report['texts']}")
        click.echo(f"held-apart perplexity, importance order: {points}")
        click.echo("streaming: " + ", ".join(f"{r['attention']} {r['perplexity']:.1f}" for r in report["streaming"]))
        click.echo(f"wrote {out / 'report.html'} (and report.json, {len(report['figures'])} PNGs) "
                   f"in {time.perf_counter() - start:.0f} s")
        return
    pruned, total = report["pruned"], sum(report["heads_per_layer"])
    encode = {r["batch_size"]: r["ratio"]["median"] for r in report["speed"] if r["what"] == "encode"}
    click.echo(f"{report['model']}: {total} heads, {report['texts']}")
    click.echo(
        f"{pruned['removed']} heads removed by importance: cosine {pruned['cosine']:.3f} to the unpruned model "
        f"(random order {pruned['random_cosine']:.3f}); encode speed-up "
        + ", ".join(f"{ratio:.2f}x at batch {b}" for b, ratio in encode.items())
    )
    found = report["redundant_clusters"]
    click.echo(
        f"redundant clusters: {len(found['output'])} by output (cosine >= {found['thresholds']['output']}), "
        f"{len(found['map'])} by attention map (>= {found['thresholds']['map']})"
    )
    click.echo(f"wrote {out / 'report.html'} (and report.json, {len(report['figures']) + len(report['layer_maps'])} PNGs) "
               f"in {time.perf_counter() - start:.0f} s")
