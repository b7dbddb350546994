"""Sentence-encoding throughput: headwise.models against transformers' BertModel with SDPA.

Both encode the same real sentences (prose from the Python documentation that ships
with CPython, ``pydoc_data.topics``) with all-MiniLM-L6-v2 (``headwise.models.load()``,
and ``transformers.BertModel.from_pretrained`` on the same folder with
``attn_implementation="sdpa"``), end to end as sentence-transformers does it:

* ``headwise``: ``model.encode(texts, batch_size=b)``, which cuts its batches by token
  count (see ``SentenceEncoder.encode``)
* ``transformers``: sentence-transformers' pipeline (sort by characters, the same
  tokenization from ``model.tokenize``, batches of b, mean pooling, L2 normalization,
  original order) around ``BertModel(...).last_hidden_state``

The two differ in batching only: the same text gets the same embedding up to float
rounding (checked, ``TOLERANCE``), and the positions each pads are printed.

Both run in eval mode under ``torch.inference_mode`` with 2 threads, in one process,
round-robin after a warm-up.  The table gives sentences per second (median over
rounds) and the speedup time(transformers) / time(headwise) per round: median (min).

Usage::

    python -m headwise.bench.encode [--quick] [--texts N] [--batch-sizes 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import headwise.models
from headwise.bench import harness as hx
from headwise.texts import doc_sentences

THREADS = 2
TOLERANCE = 1e-5  # max abs difference of the two implementations' embeddings
FULL = hx.Budget(seconds=20.0, min_rounds=5, max_rounds=15, min_sample_s=0.0, max_inner=1)
QUICK = hx.Budget(seconds=1.0, min_rounds=3, max_rounds=3, min_sample_s=0.0, max_inner=1)


def __getattr__(name: str) -> object:
    if name == "real_sentences":
        raise AttributeError("headwise.bench.encode.real_sentences moved: use headwise.texts.doc_sentences(count).")
    raise AttributeError(f"module 'headwise.bench.encode' has no attribute {name!r}")


def transformers_encode(
    model: headwise.models.SentenceEncoder, reference: torch.nn.Module, texts: list[str], batch_size: int
) -> Tensor:
    """sentence-transformers' encode around transformers' BertModel, tokenized by headwise's tokenizer.

    Shape:
        N texts -> (N, E).
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            features = model.tokenize([texts[i] for i in order[start : start + batch_size]])
            hidden = reference(**features).last_hidden_state  # (b, L, E)
            pooled = headwise.models.pool(hidden, features["attention_mask"], ("mean",))  # (b, E)
            chunks.append(F.normalize(pooled, p=2, dim=1))
        sorted_vectors = torch.cat(chunks)  # (N, E)
        vectors = torch.empty_like(sorted_vectors)  # (N, E)
        vectors[torch.tensor(order)] = sorted_vectors
    return vectors


def padded_positions(embeddings: torch.nn.Module, run: Callable[[], Tensor]) -> tuple[int, Tensor]:
    """``run()``'s result, and the token positions (real and padding) it feeds through ``embeddings``."""
    seen = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs["input_ids"]  # (b, L)
        seen.append(ids.numel())

    handle = embeddings.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return sum(seen), result


def summarize(report: dict) -> list[hx.Row]:
    """One row per batch size: time(transformers) / time(headwise) to encode the same sentences."""
    return [
        hx.Row(
            "encode",
            f"all-MiniLM-L6-v2, {r['texts']} sentences, batch {r['batch_size']}",
            "transformers BertModel (sdpa)",
            "headwise.models",
            hx.Ratio(**r["ratio"]),
        )
        for r in report["results"]
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 texts and 3 rounds (smoke test)")
    parser.add_argument("--texts", type=int, default=None, help="number of sentences (default 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    from transformers import BertModel

    count = args.texts or (64 if args.quick else 256)
    budget = QUICK if args.quick else FULL
    model = headwise.models.load()
    reference = BertModel.from_pretrained(model.source, attn_implementation="sdpa").eval()
    texts = doc_sentences(count)
    tokens = model.tokenize(texts)["attention_mask"].sum(dim=1).float()

    print(f"encode {count} sentences with all-MiniLM-L6-v2 ({model.source})")
    print(
        f"tokens per sentence: mean {tokens.mean().item():.1f}, min {int(tokens.min())}, max {int(tokens.max())}"
    )
    print(f"torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}")

    rows = []
    results = []
    failures = []
    for batch_size in args.batch_sizes:
        steps = {
            "headwise": lambda b=batch_size: model.encode(texts, batch_size=b),
            "transformers": lambda b=batch_size: transformers_encode(model, reference, texts, b),
        }
        padded, vectors = {}, {}  # one run each: the positions it pads and the embeddings to compare
        for name, embeddings in (("headwise", model.network.embeddings), ("transformers", reference.embeddings)):
            padded[name], vectors[name] = padded_positions(embeddings, steps[name])
        diff = (vectors["headwise"] - vectors["transformers"]).abs().max().item()
        if diff > TOLERANCE:
            failures.append(f"batch {batch_size}: embeddings differ by {diff:.3g} > {TOLERANCE}")
        plan = hx.plan_from_warmup(hx.warm_up(steps), budget)
        start = time.perf_counter()
        samples = hx.round_robin(steps, plan)
        ratio = hx.pair_ratio(samples["transformers"], samples["headwise"])
        results.append(
            {"batch_size": batch_size, "texts": count, "ratio": asdict(ratio), "max_abs_diff": diff, "positions": padded}
        )
        rows.append(
            [
                str(batch_size),
                f"{count / statistics.median(samples['headwise']):.1f}",
                f"{count / statistics.median(samples['transformers']):.1f}",
                ratio.fmt(),
                f"{diff:.1e}",
                f"{padded['headwise']} / {padded['transformers']}",
                f"{plan.rounds} ({time.perf_counter() - start:.0f}s)",
            ]
        )
    headers = [
        "batch", "headwise sent/s", "transformers sent/s", "speedup med (min)", "max |diff|",
        f"positions run ({int(tokens.sum())} real)", "rounds",
    ]
    print()
    print(hx.format_table(headers, rows))
    print()
    print("speedup = time(transformers sdpa) / time(headwise) per round; > 1 means headwise is faster")
    print(hx.load_line("end"))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({"torch": torch.__version__, "results": results, "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
