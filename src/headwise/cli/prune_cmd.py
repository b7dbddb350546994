"""``headwise prune [MODEL] (--fraction F | --heads SPEC) --out DIR``: prune, compare, save."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import click

from headwise.cli._texts import read_texts
from headwise.cli.inspect_cmd import DEFAULT_MODEL


def parse_heads(spec: str) -> dict[int, list[int]]:
    """``"0:1,2;5:0"`` -> ``{0: [1, 2], 5: [0]}`` (layer:heads, layers separated by ';')."""
    plan: dict[int, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        layer, sep, heads = part.partition(":")
        try:
            if not sep:
                raise ValueError
            plan[int(layer)] = [int(h) for h in heads.split(",") if h.strip()]
        except ValueError:
            raise ValueError(
                f"--heads {spec!r}: cannot read {part!r}; write LAYER:HEAD,HEAD;LAYER:HEAD, e.g. '0:1,2;5:0'."
            ) from None
    if not plan:
        raise ValueError(f"--heads {spec!r} names no heads; write LAYER:HEAD,HEAD;LAYER:HEAD, e.g. '0:1,2;5:0'.")
    return plan


def _quality(reference, candidate, texts: list[str]) -> dict[str, float]:
    """Mean cosine of embeddings, and Spearman correlation of pairwise similarities, against ``reference``."""
    from dataclasses import asdict

    from headwise.heads import agreement

    return asdict(agreement(reference.encode(texts), candidate.encode(texts)))


def _encode_seconds(model, texts: list[str], repeats: int = 3) -> float:
    model.encode(texts)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(texts)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@click.command("prune")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), help="Share of all heads to remove, least important first.")
@click.option("--heads", "spec", help="Heads to remove, e.g. '0:1,2;5:0' (layer:heads).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the pruned model (smaller layers; headwise.models.load reads it).")
@click.option("--transformers-out", type=click.Path(file_okay=False, path_type=Path), help="Also write a copy transformers' BertModel reads: pruned heads padded back as all-zero heads, same outputs.")
@click.option("--texts", "texts_path", type=click.Path(dir_okay=False), help="One text per line: the first half scores heads, the second measures quality (default: Python's docs).")
@click.option("--limit", type=click.IntRange(min=4), default=64, show_default=True, help="Use at most this many texts.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune_command(
    model: str,
    fraction: float | None,
    spec: str | None,
    out: Path,
    transformers_out: Path | None,
    texts_path: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Prune heads (by importance, or the ones you name), print quality and speed, save the model.

    --out holds the physically smaller model (headwise.models.load); transformers v5 dropped
    head pruning, so --transformers-out writes a copy with the pruned heads zeroed, which
    transformers.BertModel.from_pretrained reads with the same outputs.

    \b
    Examples:
      headwise prune --fraction 0.3 --out minilm-30
      headwise prune ./my-bert --heads '0:1,2;5:0' --out my-bert-pruned --json
      headwise prune --fraction 0.5 --out minilm-50 --transformers-out minilm-50-hf
    """
    import headwise.models
    from headwise.heads import PruneConfig, prune_by_importance_, prune_heads_

    if (fraction is None) == (spec is None):
        raise click.UsageError("give exactly one of --fraction F or --heads SPEC.")
    from rich.progress import Progress

    texts, source = read_texts(texts_path, limit=limit)
    half = len(texts) // 2
    calibration, evaluation = texts[:half], texts[half:]
    with Progress(transient=True) as progress:
        task = progress.add_task("loading the model", total=5)
        original = headwise.models.load(model)
        pruned = copy.deepcopy(original)
        total = sum(original.num_heads)
        progress.update(task, advance=1, description="pruning")
        if spec is not None:
            plan = parse_heads(spec)
            prune_heads_(pruned, plan)
            removed = [(layer, head) for layer, heads in sorted(plan.items()) for head in sorted(heads)]
        else:
            count = round(fraction * total)
            if count < 1:
                raise ValueError(f"--fraction {fraction} of {total} heads removes none; use a larger fraction.")
            progress.update(task, description=f"pruning {count} heads by importance on {len(calibration)} texts")
            removed = prune_by_importance_(pruned, calibration, PruneConfig(remove=count, step=max(1, count // 8)))
        progress.update(task, advance=1, description=f"quality on {len(evaluation)} held-apart texts")
        quality = _quality(original, pruned, evaluation)
        progress.update(task, advance=1, description="encode speed before and after")
        before, after = _encode_seconds(original, evaluation), _encode_seconds(pruned, evaluation)
        progress.update(task, advance=1, description="saving")
        pruned.save(out)
        if transformers_out is not None:
            pruned.save(transformers_out, full_heads=True)
        progress.update(task, advance=1)
    result = {
        "model": model,
        "texts": source,
        "removed": [list(h) for h in removed],
        "heads_before": list(original.num_heads),
        "heads_after": list(pruned.num_heads),
        "quality": quality,
        "encode_seconds": {"before": before, "after": after, "speedup": before / after},
        "out": str(out),
        "transformers_out": None if transformers_out is None else str(transformers_out),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"removed {len(removed)} of {total} heads; heads per layer now {', '.join(map(str, result['heads_after']))}")
    click.echo(
        f"quality on {len(evaluation)} held-apart texts: cosine {quality['cosine']:.4f}, "
        f"Spearman of similarities {quality['spearman']:.4f}"
    )
    click.echo(f"encode {len(evaluation)} texts: {before * 1e3:.1f} ms -> {after * 1e3:.1f} ms ({before / after:.2f}x)")
    click.echo(f"saved to {out}" + ("" if transformers_out is None else f" and, for transformers, {transformers_out}"))
