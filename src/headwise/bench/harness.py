"""Shared helpers for the side-by-side benchmarks.

Implementations are timed in one process, round-robin (A B C ... A B C ...) after a
warm-up, each sample being a fixed number of calls; ratios are taken between samples
of the same round, and reported as their median and min (see shared/MEASURING.md).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Step = Callable[[], object]


@dataclass(frozen=True)
class Plan:
    """How many round-robin rounds to run, and how many calls make one timed sample."""

    rounds: int
    inner: int


@dataclass(frozen=True)
class Budget:
    """Limits from which a :class:`Plan` is derived for one comparison."""

    seconds: float  # wall time to spend on the timed rounds
    min_rounds: int
    max_rounds: int
    min_sample_s: float  # a sample is at least this long (more calls per sample otherwise)
    max_inner: int


@dataclass(frozen=True)
class Ratio:
    """time(numerator) / time(denominator), per round: median and min over rounds."""

    median: float
    min: float

    def fmt(self) -> str:
        return f"{self.median:.2f} ({self.min:.2f})"


@dataclass(frozen=True)
class Row:
    """One line of ``headwise bench``'s summary: ``ratio`` = metric(baseline) / metric(candidate).

    ``metric`` is ``"time"`` (seconds per call), ``"peak memory"`` (MiB) or ``"saved size"``
    (bytes on disk); > 1 favours the candidate.
    """

    suite: str
    case: str
    baseline: str
    candidate: str
    ratio: Ratio
    metric: str = "time"


def time_sample(step: Step, inner: int) -> float:
    """Seconds per call of ``step``, averaged over ``inner`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - start) / inner


def plan_from_warmup(seconds_per_call: Mapping[str, float], budget: Budget) -> Plan:
    """Calls per sample so the fastest sample lasts ``min_sample_s``; rounds to fit the budget."""
    fastest = max(min(seconds_per_call.values()), 1e-6)
    inner = max(1, min(budget.max_inner, math.ceil(budget.min_sample_s / fastest)))
    round_s = inner * sum(seconds_per_call.values())
    rounds = int(budget.seconds // max(round_s, 1e-9))
    return Plan(rounds=max(budget.min_rounds, min(budget.max_rounds, rounds)), inner=inner)


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_robin(
    steps: Mapping[str, Step], plan: Plan, faults: dict[str, float] | None = None
) -> dict[str, list[float]]:
    """Seconds per call for each step and round; round r starts at step r mod n.

    With ``faults`` given, it is filled with each step's minor page faults per call over
    the timed rounds: memory that the allocator handed back to the system between calls
    and that the next call faults in again, page by page, which shows in its time.
    """
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    faulted = dict.fromkeys(names, 0)
    for r in range(plan.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            before = minor_faults()
            samples[name].append(time_sample(steps[name], plan.inner))
            faulted[name] += minor_faults() - before
    if faults is not None:
        faults.update({name: count / max(1, plan.rounds * plan.inner) for name, count in faulted.items()})
    return samples


def warm_up(steps: Mapping[str, Step]) -> dict[str, float]:
    """One call of each step; returns its time, used to plan the timed rounds."""
    return {name: time_sample(step, 1) for name, step in steps.items()}


def pair_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Ratio:
    """Median and min of numerator[i] / denominator[i] (samples of the same round)."""
    ratios = [n / d for n, d in zip(numerator, denominator, strict=True)]
    return Ratio(median=statistics.median(ratios), min=min(ratios))


def median_ms(samples: Sequence[float]) -> float:
    return 1e3 * statistics.median(samples)


def maxrss_mib() -> float:
    """``ru_maxrss`` of this process, in MiB (Linux reports KiB).

    On Linux it also counts the peak of the process that started this one (subprocess
    uses vfork + exec, and exec keeps the pre-exec peak), so compare with :func:`hwm_mib`.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mib() -> float | None:
    """This process image's own peak RSS (``VmHWM``), in MiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return os.getloadavg()


def load_line(label: str) -> str:
    one, five, fifteen = loadavg()
    return f"load average at {label} (1, 5, 15 min): {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cpus"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = (str(cell).rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
