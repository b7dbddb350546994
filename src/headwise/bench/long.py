"""Long sequences: full SDPA against window-512 and linear attention, time and peak memory.

One head-split attention call (B=1, E=512, H=8, D=64, float32, forward under
``torch.inference_mode``, 2 threads) per implementation, on the same random q, k, v:

* ``full``: ``headwise.functional.attention(q, k, v, is_causal=..., backend="sdpa")``, which
  runs PyTorch's fused ``F.scaled_dot_product_attention`` (the CPU flash kernel)
* ``window``: ``headwise.variants.sliding_window_attention``, 512 keys per query
  (causal: left=511, right=0; bidirectional: left=256, right=255), default blocks
* ``linear``: ``headwise.variants.linear_attention`` with elu+1 features (causal: chunked
  prefix sums, chunks of ``--chunk`` positions)

Time: per length and mode, round-robin (full, window, linear, start rotated each round)
after one warm-up call each; the table gives the median seconds per call and the
per-round ratios time(full) / time(variant), median (min), then the smallest measured L
from which each variant is faster than full.  A sample of the slow full SDPA is one
call, a sample of window or linear attention several back-to-back calls lasting
``--min-sample`` seconds at least, so that a burst of other work on the machine hits
both sides of a ratio alike.

Peak memory (first, while this process is small): each (implementation, length, mode)
in a fresh process: inputs are built and a small call loads the kernels, then the
growth of the process's own peak RSS (VmHWM, else ru_maxrss) over one call is reported
in MiB, with the growth peak(L) / peak(previous L).

Decoding (a third table): one ``headwise.Attention(512, 8)`` layer decodes ``DECODE_STEPS``
tokens after L positions, with a full ``KVCache`` (filled to L with random keys) against
``SlidingWindow(511, 0)``'s ``WindowCache`` (filled by an L-token prompt, which keeps only
the window), round-robin; the table gives ms per token, the ratio and the bytes each cache
holds.  The full cache's per-token time and memory grow with L, the window's stay flat.

Targets (issue 6): at L=32k causal, full/window >= 8 and full/linear >= 8; peak memory
at L=64k <= 2.2 x L=32k for window and linear.  Each is printed as met or MISSED when
its lengths were measured.

Durations on 2 cores: full SDPA is quadratic (one causal call at L=64k is 15-30 s), so
the default lengths (2k, 8k, 32k, 64k, both modes) take about 8 minutes of timing and
3 more of peak memory; ``--quick`` (L = 1k, 2k, 4k; memory at 2k and 4k) about 15 s
of timing and 30 s of memory.  Within ``headwise bench`` this suite follows the
command's flags like the mha suite: the peak-memory processes run only with
``--memory``, and ``--quick`` picks the small lengths; so ``headwise bench`` alone
spends most of its time here, at the lengths the README's figures come from.

Usage::

    python -m headwise.bench.long [--quick] [--lengths 2048,8192,32768,65536] [--modes causal,bidirectional]
        [--rounds 3] [--min-sample 1.0] [--chunk 128] [--no-memory] [--no-time] [--no-decode] [--json PATH]
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from headwise import Attention
from headwise.bench import harness as hx
from headwise.functional import attention
from headwise.variants import SlidingWindow, linear_attention, sliding_window_attention

IMPLS = ("full", "window", "linear")
VARIANTS = ("window", "linear")
MODES = ("causal", "bidirectional")
NAMES = {"full": "full SDPA", "window": "window 512", "linear": "linear elu+1"}
BATCH, EMBED_DIM, NUM_HEADS = 1, 512, 8
HEAD_DIM = EMBED_DIM // NUM_HEADS
WINDOW = 512
THREADS = 2
SEED = 0
MAX_INNER = 50  # calls per timed sample at most
MEMORY_WORKERS = 2  # peak-memory processes running at once
TIME_TARGETS = {("causal", 32768, "window"): 8.0, ("causal", 32768, "linear"): 8.0}
MEMORY_TARGET = 2.2  # peak(64k) / peak(32k) for window and linear
MEMORY_TARGET_LENGTHS = (32768, 65536)
DECODE_STEPS = 16  # tokens decoded per timed sample


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...]
    memory_lengths: tuple[int, ...]
    rounds: int
    min_sample_s: float


FULL = Config(
    lengths=(2048, 8192, 32768, 65536), memory_lengths=(2048, 8192, 32768, 65536), rounds=3, min_sample_s=1.0
)
QUICK = Config(lengths=(1024, 2048, 4096), memory_lengths=(2048, 4096), rounds=3, min_sample_s=0.02)


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
    """The call each implementation makes.  Shape: q, k, v (B, H, L, D) -> (B, H, L, D)."""
    if impl == "full":
        return lambda: attention(q, k, v, is_causal=causal, backend="sdpa")[0]
    if impl == "window":
        left, right = window_sides(causal)
        return lambda: sliding_window_attention(q, k, v, left=left, right=right, is_causal=causal)
    if impl == "linear":
        return lambda: linear_attention(q, k, v, is_causal=causal, chunk_size=chunk)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLS)}.")


# ---------------------------------------------------------------- time


def bench_time(length: int, mode: str, rounds: int, chunk: int, min_sample_s: float) -> dict:
    """Round-robin timing of the three implementations at one length and mode."""
    causal = mode == "causal"
    q, k, v = build_inputs(length)
    calls = {impl: make_call(impl, q, k, v, causal, chunk) for impl in IMPLS}
    warm = hx.warm_up(calls)
    inner = {impl: max(1, min(MAX_INNER, math.ceil(min_sample_s / max(t, 1e-6)))) for impl, t in warm.items()}
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
        "samples_s": samples,
        "ratios": {impl: asdict(hx.pair_ratio(samples["full"], samples[impl])) for impl in VARIANTS},
    }


def time_table(results: Sequence[dict]) -> str:
    headers = ["mode", "L", "full s", "window s", "linear s", "full/window", "full/linear"]
    rows = [
        [
            r["mode"],
            str(r["length"]),
            *(f"{r['median_s'][impl]:.3f}" for impl in IMPLS),
            *(hx.Ratio(**r["ratios"][impl]).fmt() for impl in VARIANTS),
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
        for impl in VARIANTS:
            faster = [r["ratios"][impl]["median"] > 1.0 for r in runs]
            if all(faster):
                where = f"faster than full at every measured L (from {runs[0]['length']})"
            elif not any(faster):
                where = f"slower than full at every measured L (up to {runs[-1]['length']})"
            else:
                first = next((i for i, f in enumerate(faster) if f and all(faster[i:])), None)
                if first is None:  # faster somewhere, slower again at the longest L measured
                    where = "faster at L=" + ", ".join(str(r["length"]) for r, f in zip(runs, faster, strict=True) if f)
                    where += f" only, slower at L={runs[-1]['length']}"
                elif first > 0:
                    where = f"crosses between L={runs[first - 1]['length']} and L={runs[first]['length']}"
                else:
                    where = f"faster from L={runs[first]['length']}"
            lines.append(f"{mode:13s} {impl:6s}: {where}")
    return lines


def time_targets(results: Sequence[dict]) -> list[dict]:
    """The time targets whose length and mode were measured, with their verdicts."""
    targets = []
    for (mode, length, impl), target in TIME_TARGETS.items():
        for r in results:
            if r["mode"] == mode and r["length"] == length:
                ratio = hx.Ratio(**r["ratios"][impl])
                targets.append(
                    {
                        "what": f"{mode} L={length} time(full)/time({impl})",
                        "value": ratio.median,
                        "target": f">= {target}",
                        "met": ratio.median >= target,
                        "text": f"{mode} L={length} full/{impl} = {ratio.fmt()} (>= {target})",
                    }
                )
    return targets


def run_time(
    lengths: Sequence[int], modes: Sequence[str], rounds: int, chunk: int, min_sample_s: float
) -> list[dict]:
    results = []
    with torch.inference_mode():
        for mode in modes:
            for length in lengths:
                start = time.perf_counter()
                results.append(bench_time(length, mode, rounds, chunk, min_sample_s))
                print(
                    f"  timed {mode} L={length} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    return results


# ---------------------------------------------------------------- peak memory


def peak_child(impl: str, length: int, mode: str, chunk: int) -> None:
    """In a fresh process: MiB of peak-RSS growth over one call at ``length``.

    The growth is read from ``VmHWM`` (this process image's own peak, reset by exec)
    where /proc has it, else from ``ru_maxrss``, which on Linux starts at the launching
    process's peak (vfork + exec) and so reads low when that process is large.
    """
    if impl not in IMPLS or mode not in MODES:
        raise ValueError(f"unknown implementation or mode {impl!r}, {mode!r}; expected {IMPLS} and {MODES}.")
    torch.set_num_threads(THREADS)
    causal = mode == "causal"
    with torch.inference_mode():
        make_call(impl, *build_inputs(2 * WINDOW), causal, chunk)()  # loads the kernels
        q, k, v = build_inputs(length)
        call = make_call(impl, q, k, v, causal, chunk)
        baseline, own_peak = hx.maxrss_mib(), hx.hwm_mib()
        out = call()
        after, own_after = hx.maxrss_mib(), hx.hwm_mib()
    del out
    rss_growth = after - baseline
    hwm_growth = None if own_peak is None or own_after is None else own_after - own_peak
    mib = rss_growth if hwm_growth is None else hwm_growth
    print(
        json.dumps(
            {
                "impl": impl,
                "length": length,
                "mode": mode,
                "mib": mib,
                "maxrss_mib": rss_growth,
                "vmhwm_mib": hwm_growth,
            }
        )
    )


def measure_peak(impl: str, length: int, mode: str, chunk: int) -> dict:
    """Run :func:`peak_child` in a fresh process; its MiB of peak-RSS growth."""
    cmd = [
        sys.executable,
        "-m",
        "headwise.bench.long",
        "--_peak",
        impl,
        str(length),
        mode,
        "--chunk",
        str(chunk),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"peak-memory run {impl} {mode} L={length} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory(lengths: Sequence[int], modes: Sequence[str], chunk: int) -> list[dict]:
    """Every (mode, length, implementation) in its own process, ``MEMORY_WORKERS`` processes at a time.

    A process's peak RSS is its own, so running two at once changes no figure; it halves
    the wall time, most of which is importing torch (2-5 s a process).
    """
    jobs = [(impl, length, mode) for mode in modes for length in lengths for impl in IMPLS]
    with ThreadPoolExecutor(max_workers=MEMORY_WORKERS) as pool:
        return list(pool.map(lambda job: measure_peak(*job, chunk), jobs))


def peak_lookup(runs: Sequence[dict]) -> dict[tuple[str, int, str], float]:
    return {(r["impl"], r["length"], r["mode"]): r["mib"] for r in runs}


def growth(mib: dict[tuple[str, int, str], float], impl: str, low: int, high: int, mode: str) -> float | None:
    """peak(high) / peak(low); None when the low run grew by under 0.5 MiB (no meaningful ratio)."""
    prev = mib[(impl, low, mode)]
    return mib[(impl, high, mode)] / prev if prev >= 0.5 else None


def memory_table(runs: Sequence[dict]) -> str:
    mib = peak_lookup(runs)
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    lengths = sorted({r["length"] for r in runs})
    headers = ["mode", "L", *(f"{impl} MiB" for impl in IMPLS), *(f"{impl} x prev" for impl in IMPLS)]
    rows = []
    for mode in modes:
        for i, length in enumerate(lengths):
            grown = []
            for impl in IMPLS:
                ratio = None if i == 0 else growth(mib, impl, lengths[i - 1], length, mode)
                grown.append("" if i == 0 else "n/a" if ratio is None else f"{ratio:.2f}")
            rows.append([mode, str(length), *(f"{mib[(impl, length, mode)]:.1f}" for impl in IMPLS), *grown])
    return hx.format_table(headers, rows)


def memory_targets(runs: Sequence[dict]) -> list[dict]:
    """peak(64k) / peak(32k) <= 2.2 for window and linear, where both lengths were measured."""
    mib = peak_lookup(runs)
    low, high = MEMORY_TARGET_LENGTHS
    targets = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        for impl in VARIANTS:
            if (impl, low, mode) not in mib or (impl, high, mode) not in mib:
                continue
            ratio = growth(mib, impl, low, high, mode)
            targets.append(
                {
                    "what": f"{mode} {impl} peak(L={high})/peak(L={low})",
                    "value": ratio,
                    "target": f"<= {MEMORY_TARGET}",
                    "met": ratio is not None and ratio <= MEMORY_TARGET,
                    "text": f"{mode} {impl}: peak(64k)/peak(32k) = "
                    + ("n/a" if ratio is None else f"{ratio:.2f}")
                    + f" (<= {MEMORY_TARGET})",
                }
            )
    return targets


# ---------------------------------------------------------------- summary


# ---------------------------------------------------------------- decoding


def bench_decode(length: int, rounds: int) -> dict:
    """ms per decoded token after ``length`` positions: full KVCache against the window's cache."""
    torch.manual_seed(SEED)
    full = Attention(EMBED_DIM, NUM_HEADS).eval()
    windowed = Attention(EMBED_DIM, NUM_HEADS, variant=SlidingWindow(WINDOW - 1, 0)).eval()
    windowed.load_state_dict(full.state_dict())
    total = length + DECODE_STEPS * (rounds + 1)
    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randn(BATCH, DECODE_STEPS, EMBED_DIM, generator=generator)  # (B, N, E)
    with torch.inference_mode():
        caches = {"full": full.new_cache(BATCH, total), "window": windowed.new_cache(BATCH, total)}
        keys = torch.randn(BATCH, NUM_HEADS, length, HEAD_DIM, generator=generator)  # (B, H, L, D)
        caches["full"].update(keys, keys.clone())  # the prompt's keys; its attention is not timed
        prompt = torch.randn(BATCH, length, EMBED_DIM, generator=generator)  # (B, L, E)
        windowed(prompt, is_causal=True, cache=caches["window"])  # keeps the last 511 positions only

        def decode(layer: Attention, cache: object) -> Callable[[], None]:
            def call() -> None:
                for t in range(DECODE_STEPS):
                    layer(tokens[:, t : t + 1], is_causal=True, cache=cache)

            return call

        calls = {"full": decode(full, caches["full"]), "window": decode(windowed, caches["window"])}
        for call in calls.values():  # warm-up
            call()
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for r in range(rounds):
            for name in list(calls)[r % 2 :] + list(calls)[: r % 2]:
                start = time.perf_counter()
                calls[name]()
                samples[name].append((time.perf_counter() - start) / DECODE_STEPS)
    held = {
        name: (cache.keys.numel() + cache.values.numel()) * cache.keys.element_size()
        for name, cache in caches.items()
    }
    return {
        "length": length,
        "ms_per_token": {name: 1e3 * statistics.median(s) for name, s in samples.items()},
        "cache_mib": {name: b / 2**20 for name, b in held.items()},
        "ratio": asdict(hx.pair_ratio(samples["full"], samples["window"])),
    }


def decode_table(results: Sequence[dict]) -> str:
    rows = [
        [
            r["length"],
            f"{r['ms_per_token']['full']:.3f}",
            f"{r['ms_per_token']['window']:.3f}",
            f"{r['ratio']['median']:.2f} ({r['ratio']['min']:.2f})",
            f"{r['cache_mib']['full']:.1f}",
            f"{r['cache_mib']['window']:.2f}",
        ]
        for r in results
    ]
    header = ["L before", "full ms/token", "window ms/token", "full/window", "full cache MiB", "window cache MiB"]
    return hx.format_table(header, rows)


def summarize(report: dict) -> list[hx.Row]:
    """time(full) / time(variant) per mode and L; peak-memory growth between the two largest L.

    The growth rows give peak(larger L) / peak(smaller L) of one variant, so their
    baseline is the variant at the larger L and the issue's target is <= 2.2 for
    32k -> 64k (about 2 is linear growth); they do not compare against full attention.
    """
    rows = []
    for r in report.get("time", []):
        for impl in VARIANTS:
            target = TIME_TARGETS.get((r["mode"], r["length"], impl))
            case = f"{r['mode']} L={r['length']}" + (f", target >= {target:g}" if target else "")
            rows.append(hx.Row("long", case, NAMES["full"], NAMES[impl], hx.Ratio(**r["ratios"][impl])))
    for r in report.get("decode", []):
        rows.append(
            hx.Row(
                "long", f"decode 1 token after L={r['length']}", "full KVCache", "window 512 cache",
                hx.Ratio(**r["ratio"]),
            )
        )
    runs = report.get("peak_mib", [])
    mib = peak_lookup(runs)
    lengths = sorted({r["length"] for r in runs})
    if len(lengths) >= 2:
        low, high = lengths[-2:]
        for mode in dict.fromkeys(r["mode"] for r in runs):
            for impl in VARIANTS:
                ratio = growth(mib, impl, low, high, mode)
                if ratio is None:
                    continue
                case = f"{mode} peak growth L={low}->{high}" + (
                    f", target <= {MEMORY_TARGET}" if (low, high) == MEMORY_TARGET_LENGTHS else ""
                )
                rows.append(
                    hx.Row(
                        "long",
                        case,
                        f"{NAMES[impl]} L={high}",
                        f"{NAMES[impl]} L={low}",
                        hx.Ratio(ratio, ratio),
                        "peak memory",
                    )
                )
    return rows


# ---------------------------------------------------------------- main


def parse_lengths(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(sorted({int(n) for n in text.split(",") if n}))
    except ValueError:
        parser.error(f"--lengths must be comma-separated ints, got {text!r}")
    if not lengths or any(n < 2 * WINDOW for n in lengths):
        parser.error(f"--lengths must be >= {2 * WINDOW} each (the window is {WINDOW} keys), got {text!r}")
    return lengths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="L = 1k, 2k, 4k (memory at 2k, 4k) and short samples: checks that everything runs",
    )
    parser.add_argument(
        "--lengths",
        default=None,
        help="comma-separated sequence lengths for time and memory (default 2048,8192,32768,65536)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="causal,bidirectional (default both)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed round-robin rounds per length and mode (3)"
    )
    parser.add_argument(
        "--min-sample",
        type=float,
        default=None,
        help=f"seconds a timed sample lasts at least (fast calls repeat, at most {MAX_INNER} times; "
        "default 1.0, quick 0.02)",
    )
    parser.add_argument("--chunk", type=int, default=128, help="chunk size of causal linear attention")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-time", action="store_true", help="skip the timing")
    parser.add_argument("--no-decode", action="store_true", help="skip the decoding table")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--_peak", nargs=3, metavar=("IMPL", "LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.lengths is None:
        args.lengths, args.memory_lengths = config.lengths, config.memory_lengths
    else:
        args.lengths = args.memory_lengths = parse_lengths(parser, args.lengths)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes takes {','.join(MODES)}, got {args.modes}")
    args.rounds = config.rounds if args.rounds is None else args.rounds
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    args.min_sample = config.min_sample_s if args.min_sample is None else args.min_sample
    if args.chunk < 1:
        parser.error(f"--chunk must be >= 1, got {args.chunk}")
    return args


def print_targets(targets: Sequence[dict]) -> None:
    for t in targets:
        print(f"target {t['text']}: {'met' if t['met'] else 'MISSED'}")


def run(args: argparse.Namespace) -> dict:
    print(hx.load_line("start"))
    print(
        f"bench_long: torch {torch.__version__}, {THREADS} threads, float32 forward under inference_mode, "
        f"B={BATCH} E={EMBED_DIM} H={NUM_HEADS} D={HEAD_DIM}, window {WINDOW} keys, linear chunk {args.chunk}, "
        f"quick={args.quick}",
        flush=True,
    )
    report: dict = {
        "torch": torch.__version__,
        "threads": THREADS,
        "quick": args.quick,
        "lengths": list(args.lengths),
        "modes": args.modes,
        "rounds": args.rounds,
        "chunk": args.chunk,
        "loadavg_start": list(hx.loadavg()),
        "targets": [],
    }
    if not args.no_memory:  # first: before this process has a large peak of its own
        start = time.perf_counter()
        runs = run_memory(args.memory_lengths, args.modes, args.chunk)
        print(
            f"\n== peak-RSS growth over one call (MiB), fresh process each ({time.perf_counter() - start:.0f} s) =="
        )
        print(memory_table(runs))
        report["peak_mib"] = runs
        report["targets"] += memory_targets(runs)
        print_targets(report["targets"])
    if not args.no_time:
        results = run_time(args.lengths, args.modes, args.rounds, args.chunk, args.min_sample)
        print(
            f"\n== seconds per call (median of {args.rounds} rounds) and time(full)/time(variant) median (min) =="
        )
        print(time_table(results))
        report["crossings"] = crossings(results)
        print("\nwhere they cross:")
        print("\n".join(report["crossings"]))
        targets = time_targets(results)
        print_targets(targets)
        report["time"] = results
        report["targets"] += targets
    if not args.no_decode:
        decode = [bench_decode(length, max(args.rounds, 3)) for length in args.lengths]
        print(f"\n== decoding {DECODE_STEPS} tokens after L positions: ms per token, median of rounds ==")
        print(decode_table(decode))
        report["decode"] = decode
    if not report["targets"]:
        print(
            f"targets: not measured here (they need L={MEMORY_TARGET_LENGTHS[0]}, and {MEMORY_TARGET_LENGTHS[1]} "
            "for memory)"
        )
    report["loadavg_end"] = list(hx.loadavg())
    print(hx.load_line("end"), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    try:
        if args._peak is not None:
            impl, length, mode = args._peak
            peak_child(impl, int(length), mode, args.chunk)
            return 0
        report = run(args)
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"bench_long failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
