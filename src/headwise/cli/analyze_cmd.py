"""``headwise analyze [MODEL] [--texts FILE]``: importance, entropy, distance, redundancy; JSON and PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from headwise.cli._output import OutFolder, check_writable, staged_folder
from headwise.cli._progress import Steps, quiet_option
from headwise.cli._texts import cut_note, read_texts
from headwise.cli.inspect_cmd import DEFAULT_MODEL


def analyze(
    model_ref: str, texts_path: str | None, out: Path, *, limit: int, threshold: float, quiet: bool = False
) -> dict[str, object]:
    """Score and describe every head; write analysis.json and the figures into ``out`` (whole or not at all)."""
    texts, source = read_texts(texts_path, limit=limit)
    check_writable(out, "--out")
    with staged_folder(out) as folder:
        return _analyze(model_ref, texts, source, folder, threshold=threshold, quiet=quiet)


def _analyze(
    model_ref: str, texts: list[str], source: str, out: Path, *, threshold: float, quiet: bool
) -> dict[str, object]:
    import headwise.models
    from headwise.heads import fisher_importance, head_statistics
    from headwise.viz import layer_head_heatmap, similarity_heatmap

    with Steps(4, description="loading the model", quiet=quiet) as progress:
        model = headwise.models.load(model_ref)
        source += cut_note(model, texts)
        progress.update(f"scoring heads on {len(texts)} texts", advance=1)
        importance = fisher_importance(model, texts)
        progress.update("attention statistics", advance=1)
        stats = head_statistics(model, texts)
        progress.update("figures", advance=1)
        figures = {
            "importance": layer_head_heatmap(importance, out / "importance.png", title="head importance (Fisher)", label="score"),
            "entropy": layer_head_heatmap(stats.entropy, out / "entropy.png", title="attention entropy", label="nats"),
            "distance": layer_head_heatmap(stats.distance, out / "distance.png", title="mean attention distance", label="tokens"),
            "redundancy": similarity_heatmap(
                stats.output_similarity, stats.heads, out / "redundancy.png", title="head output similarity"
            ),
        }
        progress.update(advance=1)
    clusters = stats.redundant_clusters(threshold=threshold, kind="output")
    report = {
        "model": model_ref,
        "texts": source,
        "heads_per_layer": list(model.num_heads),
        "importance": [v.tolist() for v in importance],
        "entropy": [v.tolist() for v in stats.entropy],
        "distance": [v.tolist() for v in stats.distance],
        "cls_share": [v.tolist() for v in stats.cls_share],
        "sep_share": [v.tolist() for v in stats.sep_share],
        "redundant_clusters": {"threshold": threshold, "kind": "output", "clusters": [[list(h) for h in c] for c in clusters]},
        "figures": {name: path.name for name, path in figures.items()},
    }
    (out / "analysis.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


@click.command("analyze")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--texts", "texts_path", type=click.Path(dir_okay=False, allow_dash=True), help="One text per line, - for standard input (default: sentences of Python's docs).")
@click.option("--out", type=OutFolder(), default=Path("headwise-analysis"), show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=64, show_default=True, help="Use at most this many texts.")
@click.option("--threshold", type=click.FloatRange(-1.0, 1.0, min_open=True), default=0.8, show_default=True, help="Output similarity that makes two heads redundant.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@quiet_option
def analyze_command(
    model: str, texts_path: str | None, out: Path, limit: int, threshold: float, as_json: bool, quiet: bool
) -> None:
    """Importance, entropy, distance and redundancy of every head; writes analysis.json and PNGs.

    \b
    Examples:
      headwise analyze --out analysis
      headwise analyze ./my-bert --texts corpus.txt --limit 200 --json
    """
    report = analyze(model, texts_path, out, limit=limit, threshold=threshold, quiet=quiet)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    import torch

    scores = [torch.tensor(v) for v in report["importance"]]
    flat = sorted(((float(s), layer, head) for layer, v in enumerate(scores) for head, s in enumerate(v)))
    click.echo(f"{report['model']}: {sum(report['heads_per_layer'])} heads, {report['texts']}")
    click.echo("least important heads (layer, head): " + ", ".join(f"({layer}, {head})" for _, layer, head in flat[:8]))
    click.echo(f"redundant clusters at output similarity >= {threshold}: {len(report['redundant_clusters']['clusters'])}")
    click.echo(f"wrote {out / 'analysis.json'} and " + ", ".join(report["figures"].values()))
