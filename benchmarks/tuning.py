"""The measurements behind two tuning constants of headwise, side by side on this machine.

* ``rows``: ``headwise.Attention`` with its q/k/v projected by one product over the packed
  rows against three products (``headwise.modules.attention.PACKED_MIN_ROWS`` set out of
  reach), in token-by-token decoding through 4 layers (E=512, H=8) at B = 1, 2, 4, 8, 16, and
  in forwards through 6 MiniLM-sized layers (E=384, D=32) of 12 and of 4 heads (pruned) at
  (B, L) = (1, 16), (1, 46), (32, 56).  Backs ``PACKED_MIN_ROWS``.
* ``weights``: the forward of ``attention_weights(q, k, average_heads=True)`` (head-averaged
  weights, built one head at a time per block of query rows) for
  ``headwise.functional._weights.HEAD_BLOCK_ELEMENTS`` of 2**20, 2**21 and 2**22, at
  (B, H, L) = (4, 8, 512), (1, 8, 2048), (1, 12, 4096), D = 64.  Backs ``HEAD_BLOCK_ELEMENTS``.

Round-robin in one process, 2 threads, median over rounds; ratios per round.

Usage::

    .venv/bin/python benchmarks/tuning.py [rows|weights] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

import headwise.functional._weights as weights_module
import headwise.modules.attention as attention_module
from headwise import Attention
from headwise.bench import harness as hx
from headwise.functional import attention_weights

THREADS = 2


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def round_robin(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each run, in alternating order, after one warm-up call each."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 else reversed(names):
            samples[name].append(timed(runs[name]))
    return samples


def decode(layers: list[Attention], x: torch.Tensor) -> None:
    """Shape: x (B, N, E); every layer's cache, one token at a time."""
    caches = [layer.new_cache(x.shape[0], x.shape[1]) for layer in layers]
    for t in range(x.shape[1]):
        h = x[:, t : t + 1]  # (B, 1, E)
        for layer, cache in zip(layers, caches, strict=True):
            h, _ = layer(h, is_causal=True, cache=cache)


def apart(run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with q, k and v always projected by three products."""

    def wrapped() -> object:
        saved = attention_module.PACKED_MIN_ROWS
        attention_module.PACKED_MIN_ROWS = sys.maxsize
        try:
            return run()
        finally:
            attention_module.PACKED_MIN_ROWS = saved

    return wrapped


def packed(run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with q, k and v projected by one product over the packed rows whenever it can."""

    def wrapped() -> object:
        saved = attention_module.PACKED_MIN_ROWS
        attention_module.PACKED_MIN_ROWS = 0
        try:
            return run()
        finally:
            attention_module.PACKED_MIN_ROWS = saved

    return wrapped


def rows_section(rounds: int) -> None:
    torch.manual_seed(0)
    decoders = [Attention(512, 8).eval() for _ in range(4)]
    cases: list[tuple[str, Callable[[], object]]] = []
    for batch in (1, 2, 4, 8, 16):
        x = torch.randn(batch, 64, 512)
        cases.append((f"decode E=512 H=8, B={batch}, 4 layers, 64 tokens", lambda x=x: decode(decoders, x)))
    for heads in (12, 4):  # MiniLM's layers, and one pruned to 4 heads
        layers = [Attention(384, heads, head_dim=32).eval() for _ in range(6)]
        for batch, length in ((1, 16), (1, 46), (32, 56)):
            x = torch.randn(batch, length, 384)
            cases.append((
                f"forward E=384 H={heads} D=32, ({batch}, {length}), 6 layers",
                lambda x=x, layers=layers: [layer(x) for layer in layers],
            ))
    table = []
    with torch.inference_mode():
        for name, run in cases:
            samples = round_robin({"packed": packed(run), "apart": apart(run)}, rounds)
            ratio = hx.pair_ratio(samples["apart"], samples["packed"])
            table.append([name, f"{hx.median_ms(samples['packed']):.2f}", f"{hx.median_ms(samples['apart']):.2f}",
                          ratio.fmt()])
    print(hx.format_table(["case", "packed ms", "apart ms", "apart/packed med (min)"], table))
    print("apart/packed > 1: one product over the packed rows is faster")


def weights_section(rounds: int) -> None:
    budgets = (1 << 20, 1 << 21, 1 << 22)
    table = []
    with torch.no_grad():
        for batch, heads, length in ((4, 8, 512), (1, 8, 2048), (1, 12, 4096)):
            q, k = torch.randn(batch, heads, length, 64), torch.randn(batch, heads, length, 64)

            def with_budget(budget: int, q=q, k=k) -> Callable[[], object]:
                def run() -> object:
                    saved = weights_module.HEAD_BLOCK_ELEMENTS
                    weights_module.HEAD_BLOCK_ELEMENTS = budget
                    try:
                        return attention_weights(q, k, average_heads=True)
                    finally:
                        weights_module.HEAD_BLOCK_ELEMENTS = saved

                return run

            samples = round_robin({f"2**{b.bit_length() - 1}": with_budget(b) for b in budgets}, rounds)
            table.append([f"({batch}, {heads}, {length})", *(f"{hx.median_ms(s):.1f}" for s in samples.values())])
    print(hx.format_table(["(B, H, L)", *(f"2**{b.bit_length() - 1} ms" for b in budgets)], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", nargs="?", choices=("rows", "weights"), default=None)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}")
    if args.section in (None, "rows"):
        rows_section(args.rounds)
    if args.section in (None, "weights"):
        weights_section(args.rounds)
    print(hx.load_line("end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
