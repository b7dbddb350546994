"""``headwise prune [MODEL] (--fraction F | --heads SPEC) --out DIR``: prune, compare, save."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import click

from headwise.cli._output import Fraction, OutFolder, check_writable, staged_folder
from headwise.cli._progress import Steps, quiet_option
from headwise.cli._texts import cut_note, read_texts
from headwise.cli.inspect_cmd import model_option, pick_model


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
    negative = [f"{layer}:{h}" for layer, heads in plan.items() for h in heads if layer < 0 or h < 0]
    if negative:
        raise ValueError(
            f"--heads {spec!r} names {', '.join(negative)}: layers and heads count from 0 (no negative indices)."
        )
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


#: texts prune needs: half score heads, half (at least 4) measure the quality
MIN_TEXTS = 8


@click.command("prune")
@click.argument("model", required=False)
@model_option
@click.option("--fraction", type=Fraction(), help="Share of the heads (or kv groups) to remove, least important first.")
@click.option("--heads", "spec", help="Heads to remove, e.g. '0:1,2;5:0' (layer:heads).")
@click.option(
    "--granularity", type=click.Choice(["heads", "groups"]), default="heads", show_default=True,
    help="With --fraction: remove single query heads, or whole kv groups (a kv head with its query heads).",
)
@click.option("--out", type=OutFolder(), required=True, help="Folder for the pruned model (smaller layers; headwise.models.load reads it).")
@click.option("--transformers-out", type=OutFolder(), help="Also write a copy transformers reads: pruned heads padded back as all-zero heads, same outputs.")
@click.option("--texts", "texts_path", type=click.Path(dir_okay=False, allow_dash=True), help="One text per line (- for standard input): the first half scores heads, the second measures quality (default: Python's docs).")
@click.option("--limit", type=click.IntRange(min=8), default=64, show_default=True, help="Use at most this many texts.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_option
def prune_command(
    model: str | None,
    model_option: str | None,
    fraction: float | None,
    spec: str | None,
    granularity: str,
    out: Path,
    transformers_out: Path | None,
    texts_path: str | None,
    limit: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Prune heads (by importance, or the ones you name), print quality and speed, save the model.

    An encoder's quality is the agreement of its embeddings on held-apart texts (and its encode
    speed); a decoder's is its perplexity on them (and its KV cache per token).  --out holds the
    physically smaller model (headwise.models.load); transformers v5 dropped head pruning, so
    --transformers-out writes a copy with the pruned heads zeroed, which transformers reads with
    the same outputs.

    \b
    Examples:
      headwise prune --fraction 0.3 --out minilm-30
      headwise prune ./my-bert --heads '0:1,2;5:0' --out my-bert-pruned --json
      headwise prune --fraction 0.5 --out minilm-50 --transformers-out minilm-50-hf
      headwise prune --model SmolLM2-135M-Instruct --fraction 0.2 --granularity groups --out smollm2-pruned
    """
    import headwise.models
    from headwise.heads import PruneConfig, prune_by_importance_, prune_heads_

    if (fraction is None) == (spec is None):
        raise click.UsageError("give exactly one of --fraction F or --heads SPEC.")
    if spec is not None and granularity != "heads":
        raise click.UsageError("--granularity applies to --fraction; --heads names single heads.")
    model = pick_model(model, model_option)
    plan = None if spec is None else parse_heads(spec)
    texts, source = read_texts(texts_path, limit=limit)
    if len(texts) < MIN_TEXTS:
        raise click.UsageError(
            f"prune needs at least {MIN_TEXTS} texts (half score the heads, half held apart measure the quality), "
            f"got {source}; give more with --texts or a larger --limit."
        )
    source_path = Path(model) if Path(model).exists() else None
    check_writable(out, "--out", source=source_path)
    if transformers_out is not None:
        check_writable(transformers_out, "--transformers-out", source=source_path)
        if transformers_out.resolve() == out.resolve():
            raise click.UsageError(f"--out and --transformers-out are both {out}; give two folders.")
    half = len(texts) // 2
    calibration, evaluation = texts[:half], texts[half:]
    with Steps(5, description="loading the model", quiet=quiet) as progress:
        original = headwise.models.load(model)
        causal = bool(getattr(original, "causal", False))
        source += cut_note(original, texts)
        total = sum(original.num_heads)
        if fraction is not None:
            count = _count_to_remove(original, fraction, granularity)
        pruned = copy.deepcopy(original)
        progress.update("pruning", advance=1)
        if plan is not None:
            prune_heads_(pruned, plan)
            removed = [(layer, head) for layer, heads in sorted(plan.items()) for head in sorted(heads)]
        else:
            what = "kv groups" if granularity == "groups" else "heads"
            progress.update(f"pruning {count} {what} by importance on {len(calibration)} texts", total=4 + count)
            config = PruneConfig(remove=count, step=max(1, count // 8), granularity=granularity, progress=False)

            def on_round(done: int, total: int) -> None:
                progress.update(f"pruning by importance: {done} of {total} {what} removed", advance=done - (progress.done - 1))

            removed = prune_by_importance_(pruned, calibration, config, on_round=on_round)
        progress.update(f"quality on {len(evaluation)} held-apart texts", advance=1 if plan is not None else 0)
        if causal:
            quality = {"perplexity_before": _perplexity(original, evaluation), "perplexity_after": _perplexity(pruned, evaluation)}
            speed = {"kv_cache_bytes_per_token": {"before": _kv_bytes(original), "after": _kv_bytes(pruned)}}
        else:
            quality = _quality(original, pruned, evaluation)
            progress.update("encode speed before and after", advance=1)
            before, after = _encode_seconds(original, evaluation), _encode_seconds(pruned, evaluation)
            speed = {"encode_seconds": {"before": before, "after": after, "speedup": before / after}}
        progress.update("saving", advance=1)
        with staged_folder(out) as folder:  # both folders are written whole, or neither
            pruned.save(folder)
            if transformers_out is not None:
                with staged_folder(transformers_out) as full:
                    pruned.save(full, full_heads=True)
        progress.update(advance=1)
    result = {
        "model": model,
        "texts": source,
        "granularity": granularity,
        "removed": [list(h) for h in removed],
        "heads_before": list(original.num_heads),
        "heads_after": list(pruned.num_heads),
        "kv_heads_after": [layer.num_kv_heads for layer in pruned.attention_layers],
        "parameters": {"before": _parameters(original), "after": _parameters(pruned)},
        "quality": quality,
        **speed,
        "out": str(out),
        "transformers_out": None if transformers_out is None else str(transformers_out),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"texts: {source}")
    gone = total - sum(pruned.num_heads)
    groups = f"{len(removed)} kv groups, " if granularity == "groups" and plan is None else ""
    click.echo(f"removed {groups}{gone} of {total} heads; heads per layer now {', '.join(map(str, result['heads_after']))}")
    click.echo(f"parameters {result['parameters']['before']:,} -> {result['parameters']['after']:,}")
    if causal:
        kv = result["kv_cache_bytes_per_token"]
        click.echo(
            f"perplexity of the held-apart texts: {quality['perplexity_before']:.2f} -> {quality['perplexity_after']:.2f} "
            f"({quality['perplexity_after'] / quality['perplexity_before']:.2f}x); "
            f"KV cache {kv['before']} -> {kv['after']} bytes per token"
        )
    else:
        pairs = len(evaluation) * (len(evaluation) - 1) // 2
        caveat = f" (over only {pairs} pairs of texts: a rough figure)" if pairs < 45 else ""
        click.echo(
            f"quality on {len(evaluation)} held-apart texts: cosine {quality['cosine']:.4f}, "
            f"Spearman of similarities {quality['spearman']:.4f}{caveat}"
        )
        seconds = result["encode_seconds"]
        click.echo(
            f"encode {len(evaluation)} texts: {seconds['before'] * 1e3:.1f} ms -> {seconds['after'] * 1e3:.1f} ms "
            f"({seconds['speedup']:.2f}x)"
        )
    click.echo(f"saved to {out}" + ("" if transformers_out is None else f" and, for transformers, {transformers_out}"))


def _count_to_remove(model, fraction: float, granularity: str) -> int:
    """Heads (or kv groups) ``--fraction`` removes; refused in the option's words when none or too many."""
    layers = model.attention_layers
    units = [layer.num_kv_heads if granularity == "groups" else layer.num_heads for layer in layers]
    what = "kv groups" if granularity == "groups" else "heads"
    total, can_go = sum(units), sum(n - 1 for n in units)  # every layer keeps one
    count = round(fraction * total)
    if count < 1:
        raise click.UsageError(f"--fraction {fraction} of {total} {what} removes none; use a larger fraction.")
    if count > can_go:
        raise click.UsageError(
            f"--fraction {fraction} would remove {count} of {total} {what}, but every layer keeps at least one: "
            f"at most {can_go} can go; use --fraction {math.floor(can_go / total * 1000) / 1000} or less."
        )
    return count


def _perplexity(model, texts: list[str]) -> float:
    return model.perplexity(texts).value


def _kv_bytes(model) -> int:
    """Bytes of keys and values per token of context, every layer, in the model's dtype."""
    item = model.attention_layers[0].head_gate.element_size()
    return sum(2 * layer.num_kv_heads * layer.head_dim * item for layer in model.attention_layers)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
