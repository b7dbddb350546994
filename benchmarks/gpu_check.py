"""One-shot GPU check of headwise: sdpa kernels against the oracle, drop-in parity, speed, memory.

Run once on a GPU machine from the repository root, headwise not installed::

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT

and validate it on CPU with tiny shapes::

    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check

Sections, run in the order A, B, D, C so that the time budget only ever cuts speed cells:

A. ``attention(..., backend="sdpa")`` under each forced SDPA kernel, against the float64
   math oracle; PASS when each error is at most 4x the math backend's own error at the
   same dtype (+1e-6), with no NaN and zero rows where every key is masked.
B. ``headwise.MultiheadAttention`` against ``torch.nn.MultiheadAttention`` with the same
   state_dict: outputs, weights and input gradients.
C. Speed of five implementations (torch_default, torch_nw, hw_default, hw_nw, linear_sdpa):
   CUDA events, warm-up, then round-robin timed calls; median ms and per-round ratios.
D. Peak GPU memory of one bf16 training step per implementation.

Every case catches and records its own exceptions (an unavailable kernel, OOM) and the run
goes on.  Results go to ``OUT/gpu_check.json``, rewritten after every section, so a run cut
short still leaves what it measured; the printed tables also go to ``OUT/gpu_check.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor, nn

import headwise
from headwise import MultiheadAttention
from headwise.bench.harness import format_table
from headwise.bench.mha import LinearSDPA, Models, Shape
from headwise.functional import attention

SEED = 0
FULL_BUDGET_S = 200.0  # past this, the remaining speed and memory cells are skipped
QUICK_BUDGET_S = 45.0
MiB = float(2**20)

Step = Callable[[], object]
Forward = Callable[[], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Settings:
    device: torch.device
    quick: bool
    out_dir: Path
    start: float
    budget_s: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s


# ---------------------------------------------------------------- small helpers


def describe(error: BaseException) -> str:
    """A one-line account of an exception; ``OOM`` for out-of-memory."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "OOM"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def max_abs(a: Tensor, b: Tensor) -> float:
    """max |a - b| in float64; NaN if either holds NaN."""
    return (a.detach().double() - b.detach().double()).abs().max().item()


def sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def fixed(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def randn(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normal samples drawn on the CPU (same numbers on every device), then moved."""
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


def say(text: str = "") -> None:
    print(text, flush=True)


class Tee:
    """A text stream writing to several streams: the console and ``OUT/gpu_check.txt``."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


# ---------------------------------------------------------------- A. sdpa kernels vs oracle

KERNELS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
CUDA_ONLY_KERNELS = ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
PARTS = ("output", "grad_q", "grad_k", "grad_v")
ERROR_FACTOR, ERROR_FLOOR = 4.0, 1e-6
REFUSALS = ("No available kernel", "No viable backend")  # SDPA's errors when the forced kernel cannot run


@dataclass(frozen=True)
class AttnCase:
    name: str
    batch: int
    heads: int
    kv_heads: int
    length: int
    head_dim: int
    mask: str = "none"  # none | causal | padding | dead_rows


@dataclass(frozen=True)
class AttnInputs:
    query: Tensor  # (B, H, L, D)
    key: Tensor  # (B, K, S, D)
    value: Tensor  # (B, K, S, D)
    probe: Tensor  # (B, H, L, D), fixed random weights of the loss (out * probe).sum()
    attn_mask: Tensor | None  # bool, True = may attend
    is_causal: bool
    dead_rows: tuple[int, ...]  # query rows whose keys are all masked


@dataclass(frozen=True)
class AttnResult:
    output: Tensor  # (B, H, L, D)
    grads: tuple[Tensor, Tensor, Tensor]  # d/dq, d/dk, d/dv

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.output, *self.grads)


def attn_cases(quick: bool) -> tuple[AttnCase, ...]:
    batch, heads, kv_heads, length, head_dim = (2, 4, 2, 32, 16) if quick else (2, 8, 2, 256, 64)
    return (
        AttnCase("plain", batch, heads, heads, length, head_dim),
        AttnCase(f"plain D={2 * head_dim}", batch, heads, heads, length, 2 * head_dim),
        AttnCase("causal", batch, heads, heads, length, head_dim, mask="causal"),
        AttnCase("padding (B,1,1,S)", batch, heads, heads, length, head_dim, mask="padding"),
        AttnCase("2 dead rows (L,S)", batch, heads, heads, length, head_dim, mask="dead_rows"),
        AttnCase(f"gqa H={heads} K={kv_heads}", batch, heads, kv_heads, length, head_dim),
    )


def case_mask(case: AttnCase, generator: torch.Generator) -> tuple[Tensor | None, tuple[int, ...]]:
    """The case's bool mask (True = may attend) on the CPU, and its fully masked rows."""
    n = case.length
    if case.mask == "padding":
        lengths = torch.tensor([n - i * n // 4 for i in range(case.batch)])  # (B,)
        return (torch.arange(n)[None, :] < lengths[:, None])[:, None, None, :], ()  # (B, 1, 1, S)
    if case.mask == "dead_rows":
        keep = (torch.rand(n, n, generator=generator) < 0.7) | torch.eye(n, dtype=torch.bool)  # (L, S)
        dead = (3, n // 2 + 1)
        keep[list(dead)] = False
        return keep, dead
    return None, ()


def attn_inputs(case: AttnCase, dtype: torch.dtype, device: torch.device) -> AttnInputs:
    generator = torch.Generator().manual_seed(SEED)
    b, h, k, n, d = case.batch, case.heads, case.kv_heads, case.length, case.head_dim
    query = randn((b, h, n, d), generator, device, dtype)  # (B, H, L, D)
    key = randn((b, k, n, d), generator, device, dtype)  # (B, K, S, D)
    value = randn((b, k, n, d), generator, device, dtype)  # (B, K, S, D)
    probe = randn((b, h, n, d), generator, device, dtype)  # (B, H, L, D)
    mask, dead = case_mask(case, generator)
    return AttnInputs(
        query=query,
        key=key,
        value=value,
        probe=probe,
        attn_mask=None if mask is None else mask.to(device),
        is_causal=case.mask == "causal",
        dead_rows=dead,
    )


def run_attention(inputs: AttnInputs, *, dtype: torch.dtype, backend: str) -> AttnResult:
    """Forward and backward of ``(attention(q, k, v) * probe).sum()`` at ``dtype``."""
    q, k, v = (t.detach().to(dtype).requires_grad_(True) for t in (inputs.query, inputs.key, inputs.value))
    out, _ = attention(q, k, v, attn_mask=inputs.attn_mask, is_causal=inputs.is_causal, backend=backend)
    dq, dk, dv = torch.autograd.grad((out * inputs.probe.to(dtype)).sum(), (q, k, v))
    return AttnResult(out.detach(), (dq, dk, dv))


def errors_against(result: AttnResult, oracle: AttnResult) -> dict[str, float]:
    return {
        part: max_abs(got, ref) for part, got, ref in zip(PARTS, result.tensors(), oracle.tensors(), strict=True)
    }


def health(result: AttnResult, inputs: AttnInputs) -> dict[str, bool | None]:
    """NaN anywhere; whether fully masked rows are exactly zero in the output and in d/dq."""
    nan = any(bool(t.isnan().any()) for t in result.tensors())
    if not inputs.dead_rows:
        return {"nan": nan, "dead_rows_zero_output": None, "dead_rows_zero_grad_q": None}
    rows = list(inputs.dead_rows)
    return {
        "nan": nan,
        "dead_rows_zero_output": bool((result.output[..., rows, :] == 0).all()),
        "dead_rows_zero_grad_q": bool((result.grads[0][..., rows, :] == 0).all()),
    }


def health_failures(checks: dict[str, bool | None]) -> list[str]:
    failures = ["NaN"] if checks["nan"] else []
    if checks["dead_rows_zero_output"] is False:
        failures.append("dead rows of output not zero")
    if checks["dead_rows_zero_grad_q"] is False:
        failures.append("dead rows of grad_q not zero")
    return failures


def short_reason(caught: Sequence[warnings.WarningMessage], error: BaseException) -> str:
    """Why SDPA refused the kernel, from the warnings it emitted (or the error's first line)."""
    reasons: list[str] = []
    for item in caught:
        text = str(item.message).split("(Triggered internally")[0].strip()
        if text and text not in reasons:
            reasons.append(text)
    text = "; ".join(reasons) if reasons else describe(error)
    return text[:240]


def kernel_record(
    inputs: AttnInputs, dtype: torch.dtype, kernel: str, oracle: AttnResult, math_errors: dict[str, float]
) -> dict[str, object]:
    """Run headwise's sdpa backend with only ``kernel`` allowed; compare with the oracle."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, kernel, None)
    if backend is None:
        return {"status": f"unsupported: this torch has no SDPBackend.{kernel}"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([backend]):
                result = run_attention(inputs, dtype=dtype, backend="sdpa")
        except RuntimeError as error:
            if not any(text in str(error) for text in REFUSALS):
                raise
            return {"status": f"unsupported: {short_reason(caught, error)}"}
    errors = errors_against(result, oracle)
    ratios = {p: errors[p] / math_errors[p] if math_errors[p] > 0 else None for p in PARTS}
    passed = {p: errors[p] <= ERROR_FACTOR * math_errors[p] + ERROR_FLOOR for p in PARTS}  # False on NaN
    checks = health(result, inputs)
    failures = [f"{p} err" for p in PARTS if not passed[p]] + health_failures(checks)
    return {
        "status": "PASS" if not failures else "FAIL: " + ", ".join(failures),
        "errors": errors,
        "math_errors": math_errors,
        "ratios": ratios,
        "pass": passed,
        **checks,
    }


def math_record(result: AttnResult, inputs: AttnInputs, math_errors: dict[str, float]) -> dict[str, object]:
    """headwise's math backend at the test dtype: the reference row (NaN and dead rows checked)."""
    checks = health(result, inputs)
    failures = health_failures(checks)
    if any(not math.isfinite(e) for e in math_errors.values()):
        failures.append("non-finite error")
    return {
        "status": "PASS" if not failures else "FAIL: " + ", ".join(failures),
        "errors": math_errors,
        "math_errors": math_errors,
        "ratios": dict.fromkeys(PARTS, 1.0),
        **checks,
    }


def case_records(case: AttnCase, dtype: torch.dtype, kernels: Sequence[str], device: torch.device) -> list[dict]:
    inputs = attn_inputs(case, dtype, device)
    oracle = run_attention(inputs, dtype=torch.float64, backend="math")
    math_result = run_attention(inputs, dtype=dtype, backend="math")
    math_errors = errors_against(math_result, oracle)
    head = {"dtype": dtype_name(dtype), "case": case.name}
    records = [{**head, "kernel": "(headwise math)", **math_record(math_result, inputs, math_errors)}]
    for kernel in kernels:
        try:
            record = kernel_record(inputs, dtype, kernel, oracle, math_errors)
        except Exception as error:  # recorded, and the run goes on
            record = {"status": f"error: {describe(error)}"}
        records.append({**head, "kernel": kernel, **record})
    return records


def attn_row(record: dict) -> list[str]:
    errors, ratios = record.get("errors"), record.get("ratios")
    grad_ratio = None
    if ratios:
        grads = [r for p, r in ratios.items() if p != "output" and r is not None]
        grad_ratio = max(grads) if grads else None
    dead = "-"
    if record.get("dead_rows_zero_output") is not None:
        dead = f"{'y' if record['dead_rows_zero_output'] else 'N'}/{'y' if record['dead_rows_zero_grad_q'] else 'N'}"
    status = str(record["status"])
    return [
        f"{record['dtype']} {record['case']}",
        record["kernel"],
        sci(errors["output"]) if errors else "-",
        sci(record["math_errors"]["output"]) if errors else "-",
        fixed(ratios["output"]) if ratios else "-",
        fixed(grad_ratio),
        ("Y" if record["nan"] else "n") if "nan" in record else "-",
        dead,
        status if len(status) <= 110 else status[:107] + "...",
    ]


def section_a(settings: Settings) -> dict[str, object]:
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    kernels = [k for k in KERNELS if settings.cuda or k not in CUDA_ONLY_KERNELS]
    say(
        f"forced kernels: {', '.join(kernels)}"
        + ("" if settings.cuda else f" (skipped on CPU: {', '.join(CUDA_ONLY_KERNELS)})")
    )
    records: list[dict] = []
    for dtype in dtypes:
        for case in attn_cases(settings.quick):
            try:
                records.extend(case_records(case, dtype, kernels, settings.device))
            except Exception as error:  # the oracle or math run itself failed
                records.append(
                    {"dtype": dtype_name(dtype), "case": case.name, "kernel": "(all)", "status": f"error: {describe(error)}"}
                )
    headers = ["dtype case", "kernel", "out err", "math err", "out ratio", "max grad ratio", "NaN", "dead 0 out/dq", "status"]
    say(format_table(headers, [attn_row(r) for r in records]))
    say(
        "err = max |x - float64 math oracle|; ratio = err / (headwise math backend's err at the same dtype); "
        f"PASS: every err <= {ERROR_FACTOR:g} * math err + {ERROR_FLOOR:g}, no NaN, dead rows exactly 0"
    )
    return {"records": records}


# ---------------------------------------------------------------- B. drop-in parity

PARITY_TOL = {torch.float32: 1e-5, torch.float16: 1e-2}
WEIGHT_OPTIONS = ((False, True), (True, True), (True, False))  # (need_weights, average_attn_weights)


@dataclass(frozen=True)
class ParityShape:
    batch: int
    length: int
    embed_dim: int
    heads: int


@dataclass(frozen=True)
class ParityCase:
    dtype: torch.dtype
    mode: str  # train (autograd, input grads) | eval (inference_mode, forward only)
    padding: bool
    need_weights: bool
    average: bool

    @property
    def label(self) -> str:
        weights = f"weights avg={self.average}" if self.need_weights else "no weights"
        return f"{dtype_name(self.dtype)} {self.mode} {'kpm' if self.padding else 'no-mask'} {weights}"


def parity_cases() -> list[ParityCase]:
    return [
        ParityCase(dtype, mode, padding, need_weights, average)
        for dtype in PARITY_TOL
        for mode in ("train", "eval")
        for padding in (False, True)
        for need_weights, average in WEIGHT_OPTIONS
    ]


def torch_mha(embed_dim: int, heads: int) -> nn.MultiheadAttention:
    """torch's module on the CPU in fp32, seeded, biases randomised so that their slicing is checked."""
    torch.manual_seed(SEED)
    module = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
    with torch.no_grad():
        module.in_proj_bias.normal_(std=0.1)
        module.out_proj.bias.normal_(std=0.1)
    return module


def headwise_copy(module: nn.MultiheadAttention) -> MultiheadAttention:
    new = MultiheadAttention(module.embed_dim, module.num_heads, batch_first=True)
    new.load_state_dict(module.state_dict())
    return new


def parity_pair(
    shape: ParityShape, device: torch.device, dtype: torch.dtype
) -> tuple[nn.MultiheadAttention, MultiheadAttention]:
    """torch's module and a headwise copy loaded from its state_dict, both on ``device`` in ``dtype``."""
    ref = torch_mha(shape.embed_dim, shape.heads)
    hw = headwise_copy(ref)
    return ref.to(device=device, dtype=dtype), hw.to(device=device, dtype=dtype)


def padding_mask(batch: int, length: int, device: torch.device) -> Tensor:
    """(B, S) bool, True = padding (torch's polarity); every row keeps at least half its keys."""
    lengths = torch.tensor([length - i * length // (2 * batch) for i in range(batch)])  # (B,)
    return (torch.arange(length)[None, :] >= lengths[:, None]).to(device)  # (B, S)


def probe_like(t: Tensor, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return randn(tuple(t.shape), generator, t.device, t.dtype)


def run_mha(module: nn.MultiheadAttention, case: ParityCase, x: Tensor, kpm: Tensor | None) -> dict[str, Tensor | None]:
    """Outputs, weights and (in train mode) the input's and in_proj_weight's gradients."""
    kwargs = {"key_padding_mask": kpm, "need_weights": case.need_weights, "average_attn_weights": case.average}
    module.zero_grad(set_to_none=True)
    if case.mode == "eval":
        module.eval()
        with torch.inference_mode():
            out, weights = module(x, x, x, **kwargs)
        return {"output": out, "weights": weights}
    module.train()
    x = x.detach().clone().requires_grad_(True)
    out, weights = module(x, x, x, **kwargs)
    loss = (out * probe_like(out, SEED + 2)).sum()
    if weights is not None:
        loss = loss + (weights * probe_like(weights, SEED + 3)).sum()
    loss.backward()
    return {
        "output": out.detach(),
        "weights": None if weights is None else weights.detach(),
        "grad_input": x.grad,
        "grad_in_proj_weight": module.in_proj_weight.grad,
    }


def parity_diffs(ref: dict[str, Tensor | None], got: dict[str, Tensor | None], tol: float) -> tuple[dict, list[str]]:
    """Per result: max |got - ref| / max(1, max |ref|); the names that fail ``tol``."""
    diffs: dict[str, float | None] = {}
    failures: list[str] = []
    for name, expected in ref.items():
        actual = got.get(name)
        if expected is None and actual is None:
            diffs[name] = None
            continue
        if expected is None or actual is None or expected.shape != actual.shape:
            shapes = [None if t is None else tuple(t.shape) for t in (expected, actual)]
            failures.append(f"{name} torch/headwise shapes {shapes[0]} vs {shapes[1]}")
            diffs[name] = None
            continue
        diff = max_abs(actual, expected) / max(1.0, expected.detach().double().abs().max().item())
        diffs[name] = diff
        if not diff <= tol:  # also catches NaN
            failures.append(f"{name} {diff:.1e} > {tol:g}")
    return diffs, failures


def parity_record(
    case: ParityCase, pair: tuple[nn.MultiheadAttention, MultiheadAttention], x: Tensor, kpm: Tensor
) -> dict[str, object]:
    mask = kpm if case.padding else None
    ref, got = (run_mha(module, case, x, mask) for module in pair)
    diffs, failures = parity_diffs(ref, got, PARITY_TOL[case.dtype])
    return {"status": "PASS" if not failures else "FAIL: " + "; ".join(failures), "rel_diffs": diffs}


def section_b(settings: Settings) -> dict[str, object]:
    shape = ParityShape(2, 16, 64, 4) if settings.quick else ParityShape(4, 128, 512, 8)
    say(f"B={shape.batch} L=S={shape.length} E={shape.embed_dim} H={shape.heads}, batch_first, self-attention")
    x32 = torch.randn(shape.batch, shape.length, shape.embed_dim, generator=torch.Generator().manual_seed(SEED + 1))
    kpm = padding_mask(shape.batch, shape.length, settings.device)
    records: list[dict] = []
    pairs: dict[torch.dtype, tuple[nn.MultiheadAttention, MultiheadAttention]] = {}
    for case in parity_cases():
        head = {"case": case.label, "dtype": dtype_name(case.dtype), "mode": case.mode}
        try:
            if case.dtype not in pairs:
                pairs[case.dtype] = parity_pair(shape, settings.device, case.dtype)
            x = x32.to(device=settings.device, dtype=case.dtype)
            records.append({**head, **parity_record(case, pairs[case.dtype], x, kpm)})
        except Exception as error:
            records.append({**head, "status": f"error: {describe(error)}"})
    names = ("output", "weights", "grad_input", "grad_in_proj_weight")
    rows = [
        [r["case"], *(sci(r.get("rel_diffs", {}).get(n)) for n in names), str(r["status"])[:110]] for r in records
    ]
    say(format_table(["case", "out", "weights", "d input", "d in_proj_w", "status"], rows))
    tols = ", ".join(f"{dtype_name(d)} {t:g}" for d, t in PARITY_TOL.items())
    say(f"diff = max |headwise - torch| / max(1, max |torch|); tolerance {tols}")
    return {"shape": vars(shape), "records": records}


# ---------------------------------------------------------------- C and D: five implementations

IMPLS = ("torch_default", "torch_nw", "hw_default", "hw_nw", "linear_sdpa")
SPEED_RATIOS = (("torch_nw", "hw_nw"), ("torch_default", "hw_default"), ("hw_nw", "linear_sdpa"))
MEMORY_RATIOS = (("torch_default", "hw_nw"), ("torch_default", "hw_default"))


def build_models(embed_dim: int, heads: int, device: torch.device, dtype: torch.dtype) -> Models:
    base = torch_mha(embed_dim, heads)
    hw, linear = headwise_copy(base), LinearSDPA(base)
    return Models(
        torch_mha=base.to(device=device, dtype=dtype),
        hw_mha=hw.to(device=device, dtype=dtype),
        linear=linear.to(device=device, dtype=dtype),
    )


def forward_fn(models: Models, impl: str, x: Tensor, torch_mask: Tensor | None) -> Forward:
    """The call each implementation makes; ``torch_mask`` (L, L) bool True = masked means causal."""
    causal = torch_mask is not None
    if impl == "linear_sdpa":
        return lambda: (models.linear(x, is_causal=causal), None)
    module = models.torch_mha if impl.startswith("torch") else models.hw_mha
    need_weights = impl.endswith("_default")
    return lambda: module(x, x, x, need_weights=need_weights, attn_mask=torch_mask, is_causal=causal)


def make_step(models: Models, forward: Forward, mode: str) -> Step:
    if mode == "infer":
        return forward

    def train_step() -> None:
        models.clear_grads()
        out, weights = forward()
        out.sum().backward()  # the weights are still held, as a caller keeping them would
        del weights

    return train_step


def speed_input(batch: int, length: int, embed_dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return randn((batch, length, embed_dim), torch.Generator().manual_seed(SEED + 1), device, dtype)  # (B, L, E)


def causal_torch_mask(length: int, device: torch.device) -> Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)  # (L, L), True = masked


# ---------------------------------------------------------------- C. speed


@dataclass(frozen=True)
class SpeedPlan:
    shapes: tuple[Shape, ...]
    warmup: int
    rounds: int
    cell_cap_s: float  # fewer rounds (at least 3) when a cell's rounds would take longer


SPEED_FULL = SpeedPlan(
    shapes=(
        Shape(8, 512, 1024, 16),
        Shape(4, 2048, 1024, 16),
        Shape(1, 8192, 1024, 16),
        Shape(1, 8192, 1024, 16, causal=True),
    ),
    warmup=3,
    rounds=20,
    cell_cap_s=6.0,
)
SPEED_QUICK = SpeedPlan(
    shapes=(Shape(2, 64, 64, 4), Shape(1, 128, 64, 4), Shape(1, 128, 64, 4, causal=True)),
    warmup=1,
    rounds=3,
    cell_cap_s=0.5,
)


class CudaClock:
    """Times calls with CUDA events; read after a synchronize."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[torch.cuda.Event, torch.cuda.Event]] = {}

    def call(self, name: str, step: Step) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        self.marks[name] = (start, end)

    def read_ms(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {name: start.elapsed_time(end) for name, (start, end) in self.marks.items()}


class HostClock:
    """Times calls with ``time.perf_counter`` (CPU runs)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def call(self, name: str, step: Step) -> None:
        start = time.perf_counter()
        step()
        self.ms[name] = 1e3 * (time.perf_counter() - start)

    def read_ms(self) -> dict[str, float]:
        return dict(self.ms)


def timed_round(steps: dict[str, Step], order: Sequence[str], device: torch.device, failed: dict[str, str]) -> dict[str, float]:
    """One call of each step in ``order``; ms per call.  Failures (OOM...) go to ``failed``."""
    clock: CudaClock | HostClock = CudaClock() if device.type == "cuda" else HostClock()
    if device.type == "cuda":
        torch.cuda.synchronize()
    for name in order:
        try:
            clock.call(name, steps[name])
        except Exception as error:
            failed[name] = describe(error)
            free_memory(device)
    return clock.read_ms()


def time_steps(steps: dict[str, Step], plan: SpeedPlan, device: torch.device) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Warm-up, then round-robin rounds (round r starts at step r mod n); ms per call per round."""
    failed: dict[str, str] = {}
    last: dict[str, float] = {}
    for _ in range(plan.warmup):
        live = {n: s for n, s in steps.items() if n not in failed}
        last = timed_round(live, list(live), device, failed)
    round_ms = sum(ms for name, ms in last.items() if name not in failed)
    rounds = max(3, min(plan.rounds, int(1e3 * plan.cell_cap_s / max(round_ms, 1e-3))))
    samples: dict[str, list[float]] = {name: [] for name in steps if name not in failed}
    for r in range(rounds):
        names = [n for n in samples if n not in failed]
        shift = r % max(1, len(names))
        times = timed_round(steps, names[shift:] + names[:shift], device, failed)
        for name, ms in times.items():
            samples[name].append(ms)
    return {n: s for n, s in samples.items() if n not in failed and s}, failed


def per_round_ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float] | None:
    if numerator not in samples or denominator not in samples:
        return None
    ratios = [n / d for n, d in zip(samples[numerator], samples[denominator], strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios)}


def speed_cell(shape: Shape, dtype: torch.dtype, mode: str, plan: SpeedPlan, device: torch.device) -> dict:
    models = build_models(shape.embed_dim, shape.num_heads, device, dtype)
    models.set_training(mode == "train")
    x = speed_input(shape.batch, shape.length, shape.embed_dim, device, dtype)
    mask = causal_torch_mask(shape.length, device) if shape.causal else None
    steps = {impl: make_step(models, forward_fn(models, impl, x, mask), mode) for impl in IMPLS}
    grad_mode = torch.inference_mode() if mode == "infer" else contextlib.nullcontext()
    with grad_mode:
        samples, failed = time_steps(steps, plan, device)
    return {
        "rounds": max((len(s) for s in samples.values()), default=0),
        "median_ms": {n: statistics.median(s) for n, s in samples.items()},
        "samples_ms": samples,
        "errors": failed,
        "ratios": {f"{n}/{d}": per_round_ratio(samples, n, d) for n, d in SPEED_RATIOS},
    }


def speed_row(record: dict) -> list[str]:
    label = f"{record['dtype']} {record['mode']} {record['shape']}"
    if "median_ms" not in record:
        return [label, "-", *("-" for _ in IMPLS), *("-" for _ in SPEED_RATIOS), record.get("status", "")]
    medians, errors = record["median_ms"], record["errors"]
    times = [fixed(medians[i], 3) if i in medians else errors.get(i, "-")[:12] for i in IMPLS]
    ratios = [fixed(r["median"]) if r else "-" for r in (record["ratios"][f"{n}/{d}"] for n, d in SPEED_RATIOS)]
    note = "; ".join(f"{i}: {e}" for i, e in errors.items())
    return [label, str(record["rounds"]), *times, *ratios, note[:100]]


def section_c(settings: Settings) -> dict[str, object]:
    plan = SPEED_QUICK if settings.quick else SPEED_FULL
    clock = "CUDA events" if settings.cuda else "time.perf_counter"
    say(f"ms per call ({clock}), warm-up {plan.warmup}, then up to {plan.rounds} round-robin rounds")
    records: list[dict] = []
    skipped: list[str] = []
    for dtype in (torch.bfloat16, torch.float32):
        for mode in ("infer", "train"):
            for shape in plan.shapes:
                head = {"dtype": dtype_name(dtype), "mode": mode, "shape": shape.label, "shape_args": vars(shape)}
                if settings.over_budget():
                    skipped.append(f"{head['dtype']} {mode} {shape.label}")
                    records.append({**head, "status": "skipped (time budget)"})
                    continue
                try:
                    records.append({**head, **speed_cell(shape, dtype, mode, plan, settings.device)})
                except Exception as error:
                    records.append({**head, "status": f"error: {describe(error)}"})
                free_memory(settings.device)
    headers = ["dtype mode shape", "rounds", *(f"{i} ms" for i in IMPLS), *(f"{n}/{d}" for n, d in SPEED_RATIOS), "notes"]
    say(format_table(headers, [speed_row(r) for r in records]))
    say(
        "infer: eval + torch.inference_mode, forward; train: forward + backward of out.sum(), weights held. "
        "ratios X/Y: median over rounds of time(X)/time(Y); > 1 means Y is faster"
    )
    if skipped:
        say(f"SKIPPED {len(skipped)} speed cells: total elapsed passed {settings.budget_s:g} s")
    return {"records": records, "skipped": skipped}


# ---------------------------------------------------------------- D. peak memory


def step_peak_mib(step: Step, models: Models, device: torch.device) -> float | None:
    """MiB allocated at the peak of ``step`` above what was allocated before it (None on CPU)."""
    models.clear_grads()
    if device.type != "cuda":
        step()
        return None
    free_memory(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - baseline) / MiB


def memory_ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def memory_length(length: int, embed_dim: int, heads: int, device: torch.device) -> dict[str, object]:
    dtype = torch.bfloat16
    models = build_models(embed_dim, heads, device, dtype)
    models.set_training(True)
    small = speed_input(1, 128, embed_dim, device, dtype)
    x = speed_input(1, length, embed_dim, device, dtype)
    mib: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for impl in IMPLS:
        try:
            make_step(models, forward_fn(models, impl, small, None), "train")()  # warm-up: workspaces, grads
            mib[impl] = step_peak_mib(make_step(models, forward_fn(models, impl, x, None), "train"), models, device)
        except Exception as error:
            errors[impl] = describe(error)
        free_memory(device)
    ratios = {f"{n}/{d}": memory_ratio(mib.get(n), mib.get(d)) for n, d in MEMORY_RATIOS}
    return {"length": length, "mib": mib, "errors": errors, "ratios": ratios}


def section_d(settings: Settings) -> dict[str, object]:
    embed_dim, heads, lengths = (64, 4, (256, 512)) if settings.quick else (1024, 16, (8192, 16384))
    say(f"one training step, bf16, B=1 E={embed_dim} H={heads}; MiB = max_memory_allocated - allocated before the step")
    if not settings.cuda:
        say("(CPU: the steps run to check the code path; no memory figures)")
    records: list[dict] = []
    for length in lengths:
        if settings.over_budget():
            records.append({"length": length, "status": "skipped (time budget)"})
            continue
        try:
            records.append(memory_length(length, embed_dim, heads, settings.device))
        except Exception as error:
            records.append({"length": length, "status": f"error: {describe(error)}"})
        free_memory(settings.device)
    rows = []
    for r in records:
        if "mib" not in r:
            rows.append([str(r["length"]), *("-" for _ in IMPLS), *("-" for _ in MEMORY_RATIOS), r["status"]])
            continue
        cells = [fixed(r["mib"][i], 1) if r["mib"].get(i) is not None else r["errors"].get(i, "-")[:12] for i in IMPLS]
        ratios = [fixed(r["ratios"][f"{n}/{d}"]) for n, d in MEMORY_RATIOS]
        rows.append([str(r["length"]), *cells, *ratios, "; ".join(f"{i}: {e}" for i, e in r["errors"].items())[:100]])
    headers = ["L", *(f"{i} MiB" for i in IMPLS), *(f"{n}/{d}" for n, d in MEMORY_RATIOS), "notes"]
    say(format_table(headers, rows))
    return {"embed_dim": embed_dim, "heads": heads, "records": records}


# ---------------------------------------------------------------- main


def environment(settings: Settings) -> dict[str, object]:
    env: dict[str, object] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "headwise": headwise.__version__,
        "headwise_path": str(Path(headwise.__file__).parent),
        "device": str(settings.device),
        "quick": settings.quick,
        "argv": sys.argv,
        "budget_s": settings.budget_s,
    }
    if settings.cuda:
        env["device_name"] = torch.cuda.get_device_name(settings.device)
        env["capability"] = list(torch.cuda.get_device_capability(settings.device))
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
        env["loadavg"] = list(os.getloadavg())
    return env


def save(report: dict, settings: Settings) -> None:
    path = settings.out_dir / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def run_section(name: str, title: str, body: Callable[[Settings], dict], report: dict, settings: Settings) -> None:
    say(f"\n== {name}. {title} (t={settings.elapsed():.0f} s) ==")
    start = time.perf_counter()
    try:
        report[name] = body(settings)
    except Exception as error:  # a bug in this script must not lose the other sections
        report[name] = {"error": describe(error), "traceback": traceback.format_exc()}
        say(f"section {name} failed: {describe(error)}\n{traceback.format_exc()}")
    report["seconds"][name] = time.perf_counter() - start
    free_memory(settings.device)
    save(report, settings)


def count_statuses(records: Sequence[dict]) -> dict[str, int]:
    """A and B: PASS / FAIL / unsupported / error per case."""
    counts = {"PASS": 0, "FAIL": 0, "unsupported": 0, "error": 0}
    for record in records:
        status = str(record.get("status", ""))
        counts[next((k for k in counts if status.startswith(k)), "error")] += 1
    return counts


def count_cells(records: Sequence[dict]) -> dict[str, int]:
    """C and D: cells measured in full, with some implementation failing (OOM...), skipped, failed."""
    counts = {"measured": 0, "with failures": 0, "skipped": 0, "error": 0}
    for record in records:
        status = str(record.get("status", ""))
        if status.startswith("skipped"):
            counts["skipped"] += 1
        elif status:
            counts["error"] += 1
        else:
            counts["with failures" if record.get("errors") else "measured"] += 1
    return counts


def summary(report: dict) -> dict[str, dict[str, int]]:
    out = {}
    for name in ("A", "B", "C", "D"):
        section = report.get(name, {})
        records = section.get("records", [])
        out[name] = count_statuses(records) if name in ("A", "B") else count_cells(records)
        if "error" in section:
            out[name]["section error"] = 1
    return out


def summary_line(counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for name, c in counts.items():
        text = ", ".join(f"{v} {k}" for k, v in c.items() if v)
        parts.append(f"{name}: {text or 'nothing run'}")
    return "SUMMARY " + " | ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json (created)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions")
    parser.add_argument("--budget-s", type=float, default=None, help="skip speed/memory cells past this many s")
    return parser.parse_args(argv)


def recap(report: dict) -> list[str]:
    """The cases of A and B that neither passed nor were refused by their kernel, one line each."""
    lines = []
    for name in ("A", "B"):
        for r in report.get(name, {}).get("records", []):
            status = str(r.get("status", ""))
            if not status.startswith(("PASS", "unsupported")):
                where = f"{r.get('dtype', '')} {r['case']} {r.get('kernel', '')}".strip()
                lines.append(f"  {name} {where}: {status[:160]}")
    return lines


def run(settings: Settings) -> int:
    report: dict = {"seconds": {}}
    if settings.cuda and not torch.cuda.is_available():
        report["error"] = "CUDA is not available"
        save(report, settings)
        say("gpu_check: CUDA is not available; use --device cpu")
        return 1
    report["environment"] = env = environment(settings)
    say(f"gpu_check: torch {env['torch']} (cuda {env['cuda']}, cudnn {env['cudnn']}), python {env['python']}")
    say(f"device: {env['device_name']} ({settings.device}), headwise {env['headwise']} from {env['headwise_path']}")
    say(f"quick={settings.quick}, time budget {settings.budget_s:g} s for speed and memory cells")
    save(report, settings)
    run_section("A", "sdpa backend under each forced kernel vs float64 oracle", section_a, report, settings)
    run_section("B", "MultiheadAttention parity with torch.nn.MultiheadAttention", section_b, report, settings)
    run_section("D", "peak memory of one training step", section_d, report, settings)
    run_section("C", "speed", section_c, report, settings)
    report["summary"] = summary(report)
    report["seconds"]["total"] = settings.elapsed()
    save(report, settings)
    problems = recap(report)
    say("\n" + ("cases that did not pass (FAIL or error):" if problems else "no FAIL or error in A and B"))
    for line in problems:
        say(line)
    say(summary_line(report["summary"]))
    say(f"total {settings.elapsed():.1f} s; results in {settings.out_dir}/gpu_check.json and gpu_check.txt")
    return 0


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S)
    settings = Settings(
        device=torch.device(args.device), quick=args.quick, out_dir=args.out, start=start, budget_s=budget
    )
    with (args.out / "gpu_check.txt").open("w") as log, contextlib.redirect_stdout(Tee(sys.stdout, log)):
        return run(settings)


if __name__ == "__main__":
    sys.exit(main())
