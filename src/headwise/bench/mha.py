"""headwise.MultiheadAttention against torch.nn.MultiheadAttention and a Linear + SDPA baseline.

Five implementations run side by side in one process, with the same weights and
inputs, round-robin after a warm-up:

* ``torch_default``: ``torch.nn.MultiheadAttention`` called with need_weights=True (its default)
* ``torch_nw``: the same module with need_weights=False
* ``hw_default``: ``headwise.MultiheadAttention`` (torch's state_dict loaded) with need_weights=True
* ``hw_nw``: the same headwise module with need_weights=False
* ``linear_sdpa``: four ``nn.Linear`` with torch's weights around ``F.scaled_dot_product_attention``

Modes: ``infer`` (eval, under ``torch.inference_mode``, forward) and ``train`` (train,
dropout 0, forward + backward of ``out.sum()``, grads set to None before each step).
The peak-memory section runs one training step per (implementation, L) in a fresh
process and reports its peak-RSS growth (VmHWM, else ru_maxrss) over a warm-up baseline.

Usage::

    python -m headwise.bench.mha [--quick] [--mode {infer,train,all}] [--no-memory] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise import MultiheadAttention
from headwise.bench import harness as hx

IMPLS = ("torch_default", "torch_nw", "hw_default", "hw_nw", "linear_sdpa")
SPEED_RATIOS = (
    ("torch_nw", "hw_nw"),
    ("torch_default", "hw_default"),
    ("hw_nw", "linear_sdpa"),
    ("torch_nw", "linear_sdpa"),
)
MEMORY_RATIOS = (("torch_default", "hw_nw"), ("torch_default", "hw_default"))
OUTPUT_TOL = 1e-4  # max abs difference of outputs and weights
GRAD_TOL = 1e-4  # max abs difference of gradients, relative to the largest reference gradient
THREADS = 2
SEED = 0
MEMORY_EMBED_DIM, MEMORY_HEADS, MEMORY_WARMUP_LEN = 256, 4, 64

Forward = Callable[[], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Shape:
    batch: int
    length: int
    embed_dim: int
    num_heads: int
    causal: bool = False

    @property
    def label(self) -> str:
        text = f"B={self.batch} L={self.length} E={self.embed_dim} H={self.num_heads}"
        return text + (" causal" if self.causal else "")


@dataclass(frozen=True)
class Config:
    shapes: tuple[Shape, ...]
    budget: hx.Budget
    memory_lengths: tuple[int, ...]


FULL = Config(
    shapes=(
        Shape(8, 128, 512, 8),
        Shape(4, 512, 512, 8),
        Shape(1, 2048, 512, 8),
        Shape(1, 2048, 512, 8, causal=True),
        Shape(1, 4096, 768, 12),
    ),
    budget=hx.Budget(seconds=12.0, min_rounds=3, max_rounds=20, min_sample_s=0.05, max_inner=20),
    memory_lengths=(1024, 2048, 4096, 8192),
)
QUICK = Config(
    shapes=(Shape(2, 32, 64, 4), Shape(1, 96, 64, 4), Shape(1, 96, 64, 4, causal=True)),
    budget=hx.Budget(seconds=0.3, min_rounds=3, max_rounds=5, min_sample_s=0.005, max_inner=5),
    memory_lengths=(256, 512),
)


class LinearSDPA(nn.Module):
    """Baseline: q, k, v, out projections as four ``nn.Linear`` around the fused SDPA kernel."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        embed_dim = mha.embed_dim
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(embed_dim, embed_dim) for _ in range(4)
        )
        weights = mha.in_proj_weight.detach().chunk(3)  # 3 x (E, E)
        biases = mha.in_proj_bias.detach().chunk(3)  # 3 x (E,)
        with torch.no_grad():
            for proj, weight, bias in zip(self.in_projs(), weights, biases, strict=True):
                proj.weight.copy_(weight)
                proj.bias.copy_(bias)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            self.out_proj.bias.copy_(mha.out_proj.bias)

    def in_projs(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: Tensor, *, is_causal: bool) -> Tensor:
        """Shape: x (B, L, E) -> (B, L, E)."""
        batch, length, embed_dim = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
            for proj in self.in_projs()
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, H, L, D)
        out = out.transpose(1, 2).reshape(batch, length, embed_dim)  # (B, L, E)
        return self.out_proj(out)


@dataclass
class Models:
    torch_mha: nn.MultiheadAttention
    hw_mha: MultiheadAttention
    linear: LinearSDPA

    def all(self) -> tuple[nn.Module, ...]:
        return self.torch_mha, self.hw_mha, self.linear

    def set_training(self, training: bool) -> None:
        for module in self.all():
            module.train(training)

    def clear_grads(self) -> None:
        for module in self.all():
            module.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class Inputs:
    x: Tensor  # (B, L, E)
    torch_mask: Tensor | None  # (L, L) bool, True = masked (torch polarity), or None
    causal: bool


def build_models(embed_dim: int, num_heads: int) -> Models:
    """Three modules with identical weights; biases randomised so that their slicing is checked."""
    torch.manual_seed(SEED)
    torch_mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
    with torch.no_grad():
        torch_mha.in_proj_bias.normal_(std=0.1)
        torch_mha.out_proj.bias.normal_(std=0.1)
    hw_mha = MultiheadAttention(embed_dim, num_heads, batch_first=True)
    hw_mha.load_state_dict(torch_mha.state_dict())
    return Models(torch_mha=torch_mha, hw_mha=hw_mha, linear=LinearSDPA(torch_mha))


def build_inputs(batch: int, length: int, embed_dim: int, causal: bool) -> Inputs:
    generator = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(batch, length, embed_dim, generator=generator)  # (B, L, E)
    mask = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None  # (L, L)
    return Inputs(x=x, torch_mask=mask, causal=causal)


def forward_fn(models: Models, impl: str, inputs: Inputs) -> Forward:
    """The call each implementation makes; returns (output, weights or None)."""
    x, mask, causal = inputs.x, inputs.torch_mask, inputs.causal
    if impl == "linear_sdpa":
        return lambda: (models.linear(x, is_causal=causal), None)
    module = models.torch_mha if impl.startswith("torch") else models.hw_mha
    need_weights = impl.endswith("_default")
    return lambda: module(x, x, x, need_weights=need_weights, attn_mask=mask, is_causal=causal)


def train_step(models: Models, forward: Forward) -> Callable[[], None]:
    """Forward, then backward of ``out.sum()`` while the returned weights are still held."""

    def step() -> None:
        models.clear_grads()
        out, weights = forward()
        out.sum().backward()
        del weights

    return step


def make_steps(models: Models, inputs: Inputs, mode: str) -> dict[str, hx.Step]:
    forwards = {impl: forward_fn(models, impl, inputs) for impl in IMPLS}
    if mode == "infer":
        return dict(forwards)
    return {impl: train_step(models, forward) for impl, forward in forwards.items()}


# ---------------------------------------------------------------- agreement check


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def grads_of(models: Models, impl: str) -> dict[str, Tensor]:
    """Gradients in torch's parameter layout (the baseline's q, k, v grads concatenated)."""
    if impl == "linear_sdpa":
        projs = models.linear.in_projs()
        return {
            "in_proj_weight": torch.cat([p.weight.grad for p in projs]),
            "in_proj_bias": torch.cat([p.bias.grad for p in projs]),
            "out_proj.weight": models.linear.out_proj.weight.grad,
            "out_proj.bias": models.linear.out_proj.bias.grad,
        }
    module = models.torch_mha if impl.startswith("torch") else models.hw_mha
    return {name: p.grad for name, p in module.named_parameters()}


def run_for_check(models: Models, forward: Forward, impl: str, mode: str) -> dict[str, Tensor]:
    models.clear_grads()
    out, weights = forward()
    result = {"out": out.detach()}
    if weights is not None:
        result["weights"] = weights.detach()
    if mode == "train":
        out.sum().backward()
        result.update({f"grad {name}": grad.detach() for name, grad in grads_of(models, impl).items()})
    models.clear_grads()
    return result


def compare(impl: str, key: str, ref: Tensor, got: Tensor) -> float:
    """Difference of one result of ``impl`` from torch_default's; raise past the tolerance.

    Outputs and weights: max abs difference.  Gradients (sums over every token, so they
    grow with B * L): max abs difference divided by max(1, max |reference gradient|).
    """
    if ref.shape != got.shape:
        raise RuntimeError(
            f"{impl} {key}: shape {tuple(got.shape)} differs from torch_default's {tuple(ref.shape)}"
        )
    diff = max_abs_diff(ref, got)
    scale = max(1.0, ref.abs().max().item()) if key.startswith("grad") else 1.0
    tol = (GRAD_TOL if key.startswith("grad") else OUTPUT_TOL) * scale
    if not diff <= tol:  # also catches NaN
        raise RuntimeError(f"{impl} {key}: max abs diff {diff:.3g} against torch_default exceeds {tol:.3g}")
    return diff / scale


def check_agreement(models: Models, inputs: Inputs, mode: str) -> dict[str, dict[str, float]]:
    """Run each implementation once and compare with torch_default; raise RuntimeError on mismatch.

    Returns ``{impl: {result: difference}}`` (see :func:`compare`).  This call is also the first warm-up.
    """
    results = {impl: run_for_check(models, forward_fn(models, impl, inputs), impl, mode) for impl in IMPLS}
    reference = results["torch_default"]
    return {
        impl: {key: compare(impl, key, reference[key], value) for key, value in result.items()}
        for impl, result in results.items()
    }


def worst_difference(results: list[dict], kind: str) -> float:
    """Largest difference over shapes and implementations for results named ``kind*``."""
    return max(
        (
            diff
            for r in results
            for diffs in r["diff_vs_torch_default"].values()
            for key, diff in diffs.items()
            if key.startswith(kind)
        ),
        default=0.0,
    )


# ---------------------------------------------------------------- speed


@contextlib.contextmanager
def mode_context(models: Models, mode: str) -> Iterator[None]:
    models.set_training(mode == "train")
    grad_mode = torch.inference_mode() if mode == "infer" else contextlib.nullcontext()
    with grad_mode:
        yield


def bench_shape(shape: Shape, mode: str, budget: hx.Budget) -> dict[str, object]:
    models = build_models(shape.embed_dim, shape.num_heads)
    inputs = build_inputs(shape.batch, shape.length, shape.embed_dim, shape.causal)
    with mode_context(models, mode):
        diffs = check_agreement(models, inputs, mode)
        steps = make_steps(models, inputs, mode)
        plan = hx.plan_from_warmup(hx.warm_up(steps), budget)
        faults: dict[str, float] = {}
        samples = hx.round_robin(steps, plan, faults)
    ratios = {f"{n}/{d}": asdict(hx.pair_ratio(samples[n], samples[d])) for n, d in SPEED_RATIOS}
    return {
        "shape": asdict(shape),
        "label": shape.label,
        "rounds": plan.rounds,
        "calls_per_sample": plan.inner,
        "median_ms": {impl: hx.median_ms(s) for impl, s in samples.items()},
        "samples_ms": {impl: [1e3 * t for t in s] for impl, s in samples.items()},
        "minor_faults_per_call": faults,
        "ratios": ratios,
        "diff_vs_torch_default": diffs,
    }


def speed_table(mode: str, results: list[dict]) -> str:
    headers = [
        "shape",
        "rounds x calls",
        *(f"{impl} ms" for impl in IMPLS),
        *(f"{n}/{d}" for n, d in SPEED_RATIOS),
    ]
    rows = []
    for result in results:
        times = [f"{result['median_ms'][impl]:.2f}" for impl in IMPLS]
        ratios = [hx.Ratio(**result["ratios"][f"{n}/{d}"]).fmt() for n, d in SPEED_RATIOS]
        rows.append([result["label"], f"{result['rounds']} x {result['calls_per_sample']}", *times, *ratios])
    what = (
        "eval, inference_mode, forward"
        if mode == "infer"
        else "train, dropout 0, forward + backward of out.sum()"
    )
    title = f"== speed, mode={mode} ({what}) =="
    check = (
        f"agreement with torch_default before timing: max abs diff out {worst_difference(results, 'out'):.2e}, "
        f"weights {worst_difference(results, 'weights'):.2e}"
    )
    if mode == "train":
        check += f", grads {worst_difference(results, 'grad'):.2e} (relative to max |grad|)"
    fault_rows = [
        [result["label"], *(f"{result['minor_faults_per_call'][impl]:.0f}" for impl in IMPLS)] for result in results
    ]
    faults = (
        "minor page faults per call during the timed rounds (memory the allocator returned to the system "
        "and the next call maps in again, a page at a time; it shows in that implementation's time):\n"
        + hx.format_table(["shape", *IMPLS], fault_rows)
    )
    return "\n".join([title, hx.format_table(headers, rows), check, faults])


def run_speed(config: Config, mode: str) -> list[dict]:
    results = []
    for shape in config.shapes:
        results.append(bench_shape(shape, mode, config.budget))
        print(f"  done {mode} {shape.label}", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- peak memory


def peak_child(impl: str, length: int) -> None:
    """In a fresh process: MiB of peak-RSS growth from one training step at ``length``.

    The growth is read from ``VmHWM`` (this process image's own peak, reset by exec)
    where /proc has it, else from ``ru_maxrss``, which on Linux starts at the launching
    process's peak (vfork + exec) and so reads low when that process is large.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLS)}.")
    torch.set_num_threads(THREADS)
    models = build_models(MEMORY_EMBED_DIM, MEMORY_HEADS)
    models.set_training(True)
    small = build_inputs(1, MEMORY_WARMUP_LEN, MEMORY_EMBED_DIM, causal=False)
    large = build_inputs(1, length, MEMORY_EMBED_DIM, causal=False)
    train_step(models, forward_fn(models, impl, small))()
    step = train_step(models, forward_fn(models, impl, large))
    baseline, own_peak = hx.maxrss_mib(), hx.hwm_mib()
    step()
    after, own_after = hx.maxrss_mib(), hx.hwm_mib()
    rss_growth = after - baseline
    hwm_growth = None if own_peak is None or own_after is None else own_after - own_peak
    mib = rss_growth if hwm_growth is None else hwm_growth
    print(json.dumps({"impl": impl, "length": length, "mib": mib, "maxrss_mib": rss_growth, "vmhwm_mib": hwm_growth}))


def measure_peak(impl: str, length: int) -> dict[str, float | None]:
    """Run :func:`peak_child` in a fresh process; its MiB of peak-RSS growth."""
    cmd = [sys.executable, "-m", "headwise.bench.mha", "--_peak", impl, str(length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"peak-memory run {impl} L={length} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio_text(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator >= 0.5 else "n/a"


def run_memory(config: Config) -> list[dict]:
    results = []
    for length in config.memory_lengths:
        runs = {impl: measure_peak(impl, length) for impl in IMPLS}
        mib = {impl: run["mib"] for impl, run in runs.items()}
        maxrss = {impl: run["maxrss_mib"] for impl, run in runs.items()}
        results.append({"length": length, "mib": mib, "maxrss_mib": maxrss})
        print(f"  done memory L={length}", file=sys.stderr, flush=True)
    return results


def memory_table(results: list[dict]) -> str:
    headers = ["L", *(f"{impl} MiB" for impl in IMPLS), *(f"{n}/{d}" for n, d in MEMORY_RATIOS)]
    rows = []
    for result in results:
        mib = result["mib"]
        ratios = [ratio_text(mib[n], mib[d]) for n, d in MEMORY_RATIOS]
        rows.append([str(result["length"]), *(f"{mib[impl]:.1f}" for impl in IMPLS), *ratios])
    title = (
        f"== peak memory, one training step, B=1 E={MEMORY_EMBED_DIM} H={MEMORY_HEADS}, fresh process each; "
        f"peak-RSS growth (VmHWM) over a warm-up at L={MEMORY_WARMUP_LEN} =="
    )
    note = "ratios X/Y = MiB(X) / MiB(Y); >1 means Y uses less memory (n/a: Y grew by under 0.5 MiB)"
    return "\n".join([title, note, hx.format_table(headers, rows)])


# ---------------------------------------------------------------- summary


def summarize(report: dict) -> list[hx.Row]:
    """One row per mode and shape: the drop-in against torch's layer, both calls."""
    rows = []
    for mode, results in report["speed"].items():
        for result in results:
            for (numerator, denominator), call in zip(SPEED_RATIOS[:2], ("need_weights=False", "default call"), strict=True):
                ratio = hx.Ratio(**result["ratios"][f"{numerator}/{denominator}"])
                case = f"{mode} {result['label']}, {call}"
                rows.append(hx.Row("mha", case, "torch.nn.MultiheadAttention", "headwise.MultiheadAttention", ratio))
    for result in report.get("memory", []):
        for numerator, denominator in MEMORY_RATIOS:
            mib = result["mib"]
            if mib[denominator] < 0.5:
                continue  # the candidate grew by under 0.5 MiB: no meaningful ratio
            ratio = hx.Ratio(median=mib[numerator] / mib[denominator], min=mib[numerator] / mib[denominator])
            case = f"train step L={result['length']} E={MEMORY_EMBED_DIM} H={MEMORY_HEADS}, {numerator} vs {denominator}"
            rows.append(hx.Row("mha", case, "torch.nn.MultiheadAttention", "headwise.MultiheadAttention", ratio, "peak memory"))
    return rows


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few reps (smoke test)")
    parser.add_argument("--mode", choices=("infer", "train", "all"), default="all")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory section")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all results as JSON")
    parser.add_argument(
        "--length", type=int, nargs="+", metavar="L",
        help="time only the shapes with these sequence lengths (e.g. --length 128 to retake one noisy cell)",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, metavar="S",
        help=f"timed seconds per shape and mode (default {FULL.budget.seconds:g}); rounds grow with it",
    )
    parser.add_argument("--_peak", nargs=2, metavar=("IMPL", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = {shape.length for shape in (QUICK if args.quick else FULL).shapes}
    if args.length is not None and not set(args.length) <= lengths:
        parser.error(f"--length {' '.join(map(str, args.length))}: the shapes have lengths {sorted(lengths)}")
    if args.seconds is not None and not args.seconds > 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    return args


def chosen_config(args: argparse.Namespace) -> Config:
    """FULL or QUICK, narrowed to ``--length`` and with ``--seconds`` per shape (rounds scaled alike)."""
    config = QUICK if args.quick else FULL
    shapes = config.shapes
    if args.length is not None:
        shapes = tuple(shape for shape in shapes if shape.length in args.length)
    budget = config.budget
    if args.seconds is not None:
        factor = args.seconds / budget.seconds
        budget = replace(budget, seconds=args.seconds, max_rounds=max(budget.min_rounds, round(budget.max_rounds * factor)))
    return replace(config, shapes=shapes, budget=budget)


def header_lines(quick: bool) -> list[str]:
    return [
        f"bench_mha: torch {torch.__version__}, {torch.get_num_threads()} threads, quick={quick}",
        hx.load_line("start"),
        "speed: median ms per call; rounds are round-robin (A B C D E, start rotated each round) after "
        "an agreement check and one warm-up call each.",
        "ratios X/Y: median (min) over rounds of time(X) / time(Y) within a round; >1 means Y is faster "
        "(Y = headwise in the first two ratio columns, linear_sdpa in the last two).",
    ]


def run(args: argparse.Namespace) -> dict[str, object]:
    config = chosen_config(args)
    print("\n".join(header_lines(args.quick)), flush=True)
    modes = ("infer", "train") if args.mode == "all" else (args.mode,)
    report: dict[str, object] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "loadavg_start": list(hx.loadavg()),
        "speed": {},
    }
    # Memory first, while this process is small: children read VmHWM, but where /proc is
    # missing they fall back to ru_maxrss, which starts at this process's peak (hx.maxrss_mib).
    memory = None if args.no_memory else run_memory(config)
    for mode in modes:
        results = run_speed(config, mode)
        report["speed"][mode] = results
        print("\n" + speed_table(mode, results), flush=True)
    if memory is not None:
        report["memory"] = memory
        print("\n" + memory_table(memory), flush=True)
    report["loadavg_end"] = list(hx.loadavg())
    print("\n" + hx.load_line("end"), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    try:
        if args._peak is not None:
            peak_child(args._peak[0], int(args._peak[1]))
            return 0
        report = run(args)
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"bench_mha failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
