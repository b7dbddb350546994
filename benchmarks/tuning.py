"""The measurements behind headwise's tuning constants, side by side.

Each section times :class:`headwise.functional._backends.weights.WeightsBackend` instances
that differ in one budget (the backend's constructor arguments), on the same inputs:

* ``heads``: ``head_block_elements`` (one head's scores per block of query rows, in the
  one-pass inference output + averaged weights) of 2**20, 2**21 and 2**22, at
  (B, H, L) = (4, 8, 512), (1, 8, 2048), (1, 12, 4096), D = 64.
* ``small``: ``small_maps`` (training with averaged weights: up to this many map elements
  one math pass, beyond it the fused output + block-wise recomputed weights): both paths,
  forward + backward, at B*H*L*S from 0.5 M to 8 M elements.

* ``gemv``: :class:`headwise.modules.Linear`'s blocked product for a few rows against
  ``F.linear`` on the same weights: every projection of SmolLM2-135M (30 layers of
  576/192/1536-wide weights and the 49152 x 576 head, 538 MB, random values), one call each
  per round, at 1, 2, 8 and 32 rows; and at 1 and 2 threads.

Round-robin in one process, 2 threads, median over rounds; ratios per round.  The chosen
defaults and the figures that chose them are in docs/design.md.

Usage::

    .venv/bin/python benchmarks/tuning.py [heads|small|gemv] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from headwise.bench import harness as hx
from headwise.functional._backends.weights import WeightsBackend
from headwise.functional._request import build_request

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


def averaged(backend: WeightsBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    """One call of the backend with averaged weights (forward + backward when the inputs require grad)."""

    def run() -> object:
        request = build_request(
            q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, need_weights=True,
            average_weights=True,
        )
        out, weights = backend.run(request)
        if q.requires_grad:
            (out.sum() + weights.sum()).backward()
        return out

    return run


def heads_section(rounds: int) -> None:
    budgets = (1 << 20, 1 << 21, 1 << 22)
    table = []
    with torch.no_grad():
        for batch, heads, length in ((4, 8, 512), (1, 8, 2048), (1, 12, 4096)):
            q, k, v = (torch.randn(batch, heads, length, 64) for _ in range(3))
            runs = {f"2**{b.bit_length() - 1}": averaged(WeightsBackend(head_block_elements=b), q, k, v) for b in budgets}
            samples = round_robin(runs, rounds)
            table.append([f"({batch}, {heads}, {length})", *(f"{hx.median_ms(s):.1f}" for s in samples.values())])
    print("head_block_elements: inference, output + head-averaged weights in one pass")
    print(hx.format_table(["(B, H, L)", *(f"2**{b.bit_length() - 1} ms" for b in budgets)], table))


def small_section(rounds: int) -> None:
    one_pass, lean = WeightsBackend(small_maps=1 << 40), WeightsBackend(small_maps=0)
    table = []
    for batch, heads, length in ((8, 8, 256), (4, 8, 512), (2, 8, 1024)):
        q, k, v = (torch.randn(batch, heads, length, 64, requires_grad=True) for _ in range(3))
        samples = round_robin({"one pass": averaged(one_pass, q, k, v), "lean": averaged(lean, q, k, v)}, rounds)
        ratio = hx.pair_ratio(samples["lean"], samples["one pass"])
        elements = batch * heads * length * length
        table.append([
            f"({batch}, {heads}, {length})", f"{elements / 2**20:.1f} M", f"{hx.median_ms(samples['one pass']):.1f}",
            f"{hx.median_ms(samples['lean']):.1f}", ratio.fmt(),
        ])
    print("small_maps: training step with averaged weights; lean/one pass > 1 means one pass is faster")
    print(hx.format_table(["(B, H, L=S)", "B*H*L*S", "one pass ms", "lean ms", "lean/one pass med (min)"], table))


def gemv_section(rounds: int) -> None:
    from headwise.modules import Linear

    shapes = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)] * 30
    layers = [Linear(i, o, bias=False) for i, o in [*shapes, (576, 49152)]]
    megabytes = sum(layer.weight.numel() * 4 for layer in layers) / 1e6
    table = []
    with torch.inference_mode():
        for threads in (1, THREADS):
            torch.set_num_threads(threads)
            for rows in (1, 2, 8, 32):
                inputs = {i: torch.randn(rows, i) for i in (576, 1536)}
                runs = {
                    "F.linear": lambda x=inputs: [F.linear(x[m.in_features], m.weight) for m in layers],
                    "Linear": lambda x=inputs: [m(x[m.in_features]) for m in layers],
                }
                samples = round_robin(runs, rounds)
                ratio = hx.pair_ratio(samples["F.linear"], samples["Linear"])
                table.append([
                    threads, rows, *(f"{hx.median_ms(s):.1f} ({megabytes / hx.median_ms(s):.1f} GB/s)" for s in samples.values()),
                    ratio.fmt(),
                ])
    torch.set_num_threads(THREADS)
    print(f"gemv: every projection of SmolLM2-135M once ({megabytes:.0f} MB of float32 weights); >1 means Linear is faster")
    print(hx.format_table(["threads", "rows", "F.linear ms", "Linear ms", "F.linear/Linear med (min)"], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", nargs="?", choices=("heads", "small", "gemv"), default=None)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}")
    if args.section in (None, "heads"):
        heads_section(args.rounds)
    if args.section in (None, "small"):
        small_section(args.rounds)
    if args.section in (None, "gemv"):
        gemv_section(args.rounds)
    print(hx.load_line("end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
