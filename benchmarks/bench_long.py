"""Long sequences: full SDPA against window-512 and linear attention, time and peak memory.

One head-split attention call (B=1, E=512, H=8, D=64, float32, forward under
``torch.inference_mode``, 2 threads) per implementation, on the same random q, k, v:

* ``full``: ``headwise.functional.attention(q, k, v, is_causal=...)``, which runs
  PyTorch's fused ``F.scaled_dot_product_attention`` (the CPU flash kernel)
* ``window``: ``headwise.variants.sliding_window_attention``, 512 keys per query
  (causal: left=511, right=0; bidirectional: left=256, right=255), default blocks (256 queries)
* ``linear``: ``headwise.variants.linear_attention`` with elu+1 features (causal: chunked
  prefix sums, chunks of ``--chunk`` positions)

Time: per length and mode, round-robin (full, window, linear, ...) after one warm-up
call each, ``--rounds`` rounds; the table gives the median seconds per call and the
per-round ratios time(full) / time(variant), median (min).  Full SDPA is quadratic: at
L=64k one causal call is about 15-30 s on 2 cores, so the default run (all four
lengths, both modes, 3 rounds) takes about 10 minutes; ``--lengths 2048,8192`` takes
under a minute.

Peak memory: each (implementation, length, mode) in a fresh process: inputs are built
and a small call warms the kernels, then the growth of the process's peak RSS over one
call is reported (MiB), and the ratio peak(L) / peak(L/2) for consecutive lengths.

Targets (issue 6): at L=32k causal, full/window >= 8 and full/linear >= 8; peak memory
at L=64k <= 2.2 x L=32k for window and linear.

Usage::

    .venv/bin/python benchmarks/bench_long.py [--lengths 2048,8192,32768,65536] [--modes causal,bidirectional]
        [--rounds 3] [--min-sample 1.0] [--no-memory] [--no-time] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

import _harness as hx
from headwise.functional import attention
from headwise.variants import linear_attention, sliding_window_attention

IMPLS = ("full", "window", "linear")
MODES = ("causal", "bidirectional")
BATCH, EMBED_DIM, NUM_HEADS = 1, 512, 8
HEAD_DIM = EMBED_DIM // NUM_HEADS
WINDOW = 512
THREADS = 2
SEED = 0
DEFAULT_LENGTHS = (2048, 8192, 32768, 65536)
TIME_TARGETS = {("causal", 32768, "window"): 8.0, ("causal", 32768, "linear"): 8.0}
MEMORY_TARGET = 2.2  # peak(64k) / peak(32k) for window and linear


def build_inputs(length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Shape: returns q, k, v (B, H, L, D)."""
    generator = torch.Generator().manual_seed(SEED)
    return tuple(
        torch.randn(BATCH, NUM_HEADS, length, HEAD_DIM, generator=generator) for _ in range(3)
    )  # 3 x (B, H, L, D)


def window_sides(causal: bool) -> tuple[int, int]:
    """(left, right) giving WINDOW keys per query."""
    return (WINDOW - 1, 0) if causal else (WINDOW // 2, WINDOW - WINDOW // 2 - 1)


def make_call(impl: str, q: Tensor, k: Tensor, v: Tensor, causal: bool, chunk: int) -> Callable[[], Tensor]:
    if impl == "full":
        return lambda: attention(q, k, v, is_causal=causal, backend="sdpa")[0]
    if impl == "window":
        left, right = window_sides(causal)
        return lambda: sliding_window_attention(q, k, v, left=left, right=right, is_causal=causal)
    if impl == "linear":
        return lambda: linear_attention(q, k, v, is_causal=causal, chunk_size=chunk)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}.")


# ---------------------------------------------------------------- time


def bench_time(length: int, mode: str, rounds: int, chunk: int, min_sample_s: float) -> dict:
    """Round-robin timing; a sample of a fast implementation repeats it for ``min_sample_s`` at least.

    One sample of the slow full SDPA is one call, but a sample of window or linear
    attention is several back-to-back calls (their mean), so that a burst of other work
    on the machine hits both sides of a ratio alike rather than one short call.
    """
    causal = mode == "causal"
    q, k, v = build_inputs(length)
    calls = {impl: make_call(impl, q, k, v, causal, chunk) for impl in IMPLS}
    warm = hx.warm_up(calls)
    inner = {impl: max(1, min(50, math.ceil(min_sample_s / max(t, 1e-6)))) for impl, t in warm.items()}
    samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(rounds):
        shift = r % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            samples[impl].append(hx.time_sample(calls[impl], inner[impl]))
    return {
        "length": length,
        "mode": mode,
        "rounds": rounds,
        "calls_per_sample": inner,
        "median_s": {impl: statistics.median(s) for impl, s in samples.items()},
        "ratios": {impl: hx.pair_ratio(samples["full"], samples[impl]) for impl in ("window", "linear")},
    }


def time_table(results: Sequence[dict]) -> str:
    headers = ["mode", "L", "full s", "window s", "linear s", "full/window", "full/linear"]
    rows = [
        [
            r["mode"],
            str(r["length"]),
            *(f"{r['median_s'][impl]:.3f}" for impl in IMPLS),
            r["ratios"]["window"].fmt(),
            r["ratios"]["linear"].fmt(),
        ]
        for r in results
    ]
    return hx.format_table(headers, rows)


def crossings(results: Sequence[dict]) -> list[str]:
    """For each mode and variant, the smallest measured L from which the variant is faster than full."""
    lines = []
    for mode in MODES:
        runs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["length"])
        if not runs:
            continue
        for impl in ("window", "linear"):
            faster = [r["ratios"][impl].median > 1.0 for r in runs]
            if all(faster):
                where = f"faster than full at every measured L (from {runs[0]['length']})"
            elif not any(faster):
                where = f"slower than full at every measured L (up to {runs[-1]['length']})"
            else:
                first = next(i for i, f in enumerate(faster) if f and all(faster[i:]))
                low = runs[first - 1]["length"] if first > 0 else None
                where = f"crosses between L={low} and L={runs[first]['length']}" if low else (
                    f"faster from L={runs[first]['length']}"
                )
            lines.append(f"{mode:13s} {impl:6s}: {where}")
    return lines


# ---------------------------------------------------------------- memory


def peak_child(impl: str, length: int, mode: str, chunk: int) -> None:
    """In a fresh process: MiB of peak-RSS growth over one call at ``length``."""
    torch.set_num_threads(THREADS)
    causal = mode == "causal"
    with torch.inference_mode():
        small = build_inputs(2 * WINDOW)
        make_call(impl, *small, causal, chunk)()  # loads the kernels
        q, k, v = build_inputs(length)
        call = make_call(impl, q, k, v, causal, chunk)
        baseline, own_peak = hx.maxrss_mib(), hx.hwm_mib()
        if own_peak is not None and baseline > own_peak + 1.0:
            raise RuntimeError("ru_maxrss holds the launching process's peak; run the memory section first")
        out = call()
        after = hx.maxrss_mib()
    del out
    print(json.dumps({"impl": impl, "length": length, "mode": mode, "mib": after - baseline}))


def measure_peak(impl: str, length: int, mode: str, chunk: int) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_peak", impl, str(length), mode, "--chunk", str(chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"peak-memory run {impl} {mode} L={length} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["mib"]


def memory_table(mib: dict[tuple[str, int, str], float], lengths: Sequence[int], modes: Sequence[str]) -> str:
    headers = ["mode", "L", *(f"{impl} MiB" for impl in IMPLS), *(f"{impl} x prev" for impl in IMPLS)]
    rows = []
    for mode in modes:
        for i, length in enumerate(lengths):
            growth = []
            for impl in IMPLS:
                if i == 0:
                    growth.append("")
                else:
                    prev = mib[(impl, lengths[i - 1], mode)]
                    growth.append(f"{mib[(impl, length, mode)] / prev:.2f}" if prev >= 0.5 else "n/a")
            rows.append([mode, str(length), *(f"{mib[(impl, length, mode)]:.1f}" for impl in IMPLS), *growth])
    return hx.format_table(headers, rows)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default=",".join(str(n) for n in DEFAULT_LENGTHS),
                        help="comma-separated sequence lengths (default 2048,8192,32768,65536)")
    parser.add_argument("--modes", default=",".join(MODES), help="causal,bidirectional (default both)")
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds per length and mode")
    parser.add_argument("--min-sample", type=float, default=1.0,
                        help="seconds a timed sample lasts at least (fast calls are repeated, at most 50 times)")
    parser.add_argument("--chunk", type=int, default=128, help="chunk size of causal linear attention")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-time", action="store_true", help="skip the timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--_peak", nargs=3, metavar=("IMPL", "LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.lengths = sorted(int(n) for n in args.lengths.split(","))
    except ValueError:
        parser.error(f"--lengths must be comma-separated ints, got {args.lengths!r}")
    if any(n < 2 * WINDOW for n in args.lengths):
        parser.error(f"--lengths must be >= {2 * WINDOW} (the window is {WINDOW} keys), got {args.lengths}")
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes takes {','.join(MODES)}, got {args.modes}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args._peak is not None:
        impl, length, mode = args._peak
        peak_child(impl, int(length), mode, args.chunk)
        return
    torch.set_num_threads(THREADS)
    print(hx.load_line("start"))
    print(
        f"torch {torch.__version__}, {THREADS} threads, float32 forward under inference_mode, "
        f"B={BATCH} E={EMBED_DIM} H={NUM_HEADS} D={HEAD_DIM}, window {WINDOW} keys, linear chunk {args.chunk}"
    )
    payload: dict = {"lengths": args.lengths, "modes": args.modes, "rounds": args.rounds, "chunk": args.chunk}
    if not args.no_memory:  # first: before this process has a large peak of its own
        start = time.perf_counter()
        mib = {
            (impl, length, mode): measure_peak(impl, length, mode, args.chunk)
            for mode in args.modes
            for length in args.lengths
            for impl in IMPLS
        }
        print(f"\n== peak memory growth over one call, fresh process each ({time.perf_counter() - start:.0f} s) ==")
        print(memory_table(mib, args.lengths, args.modes))
        payload["peak_mib"] = [
            {"impl": i, "length": n, "mode": m, "mib": v} for (i, n, m), v in mib.items()
        ]
        for mode in args.modes:
            if 32768 in args.lengths and 65536 in args.lengths:
                for impl in ("window", "linear"):
                    ratio = mib[(impl, 65536, mode)] / max(mib[(impl, 32768, mode)], 1e-9)
                    verdict = "meets" if ratio <= MEMORY_TARGET else "MISSES"
                    print(f"target {mode} {impl}: peak(64k)/peak(32k) = {ratio:.2f} (<= {MEMORY_TARGET}) {verdict}")
    if not args.no_time:
        results = []
        with torch.inference_mode():
            for mode in args.modes:
                for length in args.lengths:
                    start = time.perf_counter()
                    results.append(bench_time(length, mode, args.rounds, args.chunk, args.min_sample))
                    print(f"  timed {mode} L={length} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        print(f"\n== seconds per call (median of {args.rounds} rounds) and time(full)/time(variant) median (min) ==")
        print(time_table(results))
        print("\nwhere they cross:")
        print("\n".join(crossings(results)))
        for (mode, length, impl), target in TIME_TARGETS.items():
            match = [r for r in results if r["mode"] == mode and r["length"] == length]
            if match:
                ratio = match[0]["ratios"][impl]
                verdict = "meets" if ratio.median >= target else "MISSES"
                print(f"target {mode} L={length} full/{impl} = {ratio.fmt()} (>= {target}) {verdict}")
        payload["time"] = [
            {**r, "ratios": {k: {"median": v.median, "min": v.min} for k, v in r["ratios"].items()}} for r in results
        ]
    print(hx.load_line("end"))
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
