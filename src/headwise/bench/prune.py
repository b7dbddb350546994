"""Speed of a head-pruned all-MiniLM-L6-v2 against the unpruned model.

Two comparisons, same real sentences (prose from CPython's bundled documentation,
``pydoc_data.topics``), same batch sizes, one process, round-robin after a warm-up:

* ``encode``: ``model.encode(texts, batch_size=b)`` end to end (tokenization included);
* ``attention``: the six attention sublayers alone (``headwise.Attention`` forward), on the
  hidden states each layer receives in the unpruned model for one padded batch of b texts.

The pruned model comes from ``--pruned FOLDER`` (e.g. saved by
``examples/prune_minilm.py --save``), or else is pruned here with
``headwise.heads.prune_by_importance_`` (Fisher importance on 64 other sentences)
down to ``--fraction`` of its heads removed.  Ratios are time(unpruned) / time(pruned)
per round, median (min); > 1 means the pruned model is faster.

Usage::

    python -m headwise.bench.prune [--quick] [--fraction 0.5] [--pruned FOLDER]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

import headwise.models
from headwise.bench import harness as hx
from headwise.heads import PruneConfig, agreement, prune_by_importance_
from headwise.texts import doc_sentences

THREADS = 2
FULL = hx.Budget(seconds=20.0, min_rounds=5, max_rounds=15, min_sample_s=0.0, max_inner=1)
ATTENTION = hx.Budget(seconds=10.0, min_rounds=5, max_rounds=30, min_sample_s=0.05, max_inner=50)
QUICK = hx.Budget(seconds=1.0, min_rounds=3, max_rounds=3, min_sample_s=0.0, max_inner=1)


def attention_inputs(
    model: headwise.models.SentenceEncoder, texts: list[str]
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Each attention layer's input in the unpruned model, and the padding mask.

    Shape:
        -> one (b, L, E) tensor per layer, mask (b, 1, 1, L) bool (True = may attend), or
        None when no text of the batch is padded.
    """
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        for layer in model.attention_layers
    ]
    features = model.tokenize(texts)
    try:
        with torch.inference_mode():
            model(**features)
    finally:
        for hook in hooks:
            hook.remove()
    real = features["attention_mask"].bool()  # (b, L)
    # as the encoder runs them: a batch without padding needs no mask (see SentenceEncoder.encode)
    return captured, None if bool(real.all()) else real[:, None, None, :]  # (b, 1, 1, L)


def run_layers(model: headwise.models.SentenceEncoder, inputs: list[torch.Tensor], mask: torch.Tensor | None) -> None:
    with torch.inference_mode():
        for layer, x in zip(model.attention_layers, inputs, strict=True):
            layer(x, attn_mask=mask)


def compare_speed(
    model: headwise.models.SentenceEncoder,
    pruned: headwise.models.SentenceEncoder,
    texts: list[str],
    batch_sizes: list[int],
    budget: hx.Budget | None = None,
) -> list[dict[str, object]]:
    """Time(unpruned) / time(pruned), round-robin: ``encode`` end to end, and the attention layers alone.

    ``budget`` None uses the full budgets (about 30 s per batch size).  Returns one dict
    per comparison and batch size: what, batch_size, unpruned and pruned (formatted
    speeds) and ratio (median, min).
    """
    results = []
    for batch_size in batch_sizes:
        encode = {
            "unpruned": lambda b=batch_size: model.encode(texts, batch_size=b),
            "pruned": lambda b=batch_size: pruned.encode(texts, batch_size=b),
        }
        samples = hx.round_robin(encode, hx.plan_from_warmup(hx.warm_up(encode), budget or FULL))
        per_second = {name: f"{len(texts) / statistics.median(s):.1f} sent/s" for name, s in samples.items()}
        ratio = hx.pair_ratio(samples["unpruned"], samples["pruned"])
        results.append({"what": "encode", "batch_size": batch_size, **per_second, "ratio": asdict(ratio)})

        inputs, mask = attention_inputs(model, texts[:batch_size])
        layers = {
            "unpruned": lambda i=inputs, m=mask: run_layers(model, i, m),
            "pruned": lambda i=inputs, m=mask: run_layers(pruned, i, m),
        }
        samples = hx.round_robin(layers, hx.plan_from_warmup(hx.warm_up(layers), budget or ATTENTION))
        per_call = {name: f"{hx.median_ms(s):.2f} ms" for name, s in samples.items()}
        ratio = hx.pair_ratio(samples["unpruned"], samples["pruned"])
        what = f"attention x{len(model.attention_layers)} (L={inputs[0].shape[1]})"
        results.append({"what": what, "batch_size": batch_size, **per_call, "ratio": asdict(ratio)})
    return results


def summarize(report: dict) -> list[hx.Row]:
    """One row per comparison and batch size: time(unpruned) / time(pruned)."""
    heads = report["heads"]
    return [
        hx.Row(
            "prune",
            f"{r['what']}, batch {r['batch_size']}",
            f"MiniLM, {heads['before']} heads",
            f"pruned, {heads['after']} heads (cosine {heads['cosine']:.3f})",
            hx.Ratio(**r["ratio"]),
        )
        for r in report["results"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 texts and 3 rounds (smoke test)")
    parser.add_argument("--texts", type=int, default=None, help="number of sentences (default 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--fraction", type=float, default=0.5, help="fraction of heads to remove")
    parser.add_argument("--pruned", type=Path, default=None, help="a saved pruned model folder")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    count = args.texts or (64 if args.quick else 256)
    model = headwise.models.load()
    sentences = doc_sentences(count + 64)
    texts, calibration = sentences[:count], sentences[count:]
    if args.pruned is not None:
        pruned = headwise.models.load(args.pruned)
    else:
        pruned = copy.deepcopy(model)
        remove = round(args.fraction * sum(model.num_heads))
        prune_by_importance_(pruned, calibration, PruneConfig(remove=remove, step=max(1, remove // 4)))
    kept = sum(pruned.num_heads) / sum(model.num_heads)
    cosine = agreement(model.encode(texts), pruned.encode(texts)).cosine
    tokens = model.tokenize(texts)["attention_mask"].sum(dim=1).float()
    print(f"all-MiniLM-L6-v2: {sum(model.num_heads)} heads {model.num_heads} vs pruned {sum(pruned.num_heads)} "
          f"{pruned.num_heads} ({100 * (1 - kept):.0f}% removed); mean cosine to unpruned {cosine:.3f}")
    print(f"{count} sentences, tokens per sentence: mean {tokens.mean().item():.1f}, max {int(tokens.max())}")
    print(f"torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}")

    results = compare_speed(model, pruned, texts, args.batch_sizes, QUICK if args.quick else None)
    rows = [[r["what"], str(r["batch_size"]), r["unpruned"], r["pruned"], hx.Ratio(**r["ratio"]).fmt()] for r in results]
    print()
    print(hx.format_table(["what", "batch", "unpruned", "pruned", "speedup med (min)"], rows))
    print()
    print("speedup = time(unpruned) / time(pruned) per round; > 1 means the pruned model is faster")
    print(hx.load_line("end"))
    if args.json is not None:
        heads = {"before": sum(model.num_heads), "after": sum(pruned.num_heads), "cosine": cosine}
        args.json.write_text(json.dumps({"torch": torch.__version__, "heads": heads, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
