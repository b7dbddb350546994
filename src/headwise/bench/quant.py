"""int8 and bfloat16 all-MiniLM-L6-v2 against float32: quality, saved size and encode speed.

Four models on the same real sentences (prose from CPython's bundled documentation,
``pydoc_data.topics``):

* ``float32``: ``headwise.models.load()``, the baseline;
* ``bfloat16``: the same model cast with ``model.to(torch.bfloat16)``; not quantization,
  but the obvious alternative to it;
* ``int8_weight_only`` (torchao, the default) and ``int8_dynamic`` (PyTorch's fbgemm
  kernels): each ``headwise.quant.QuantConfig`` mode, with int8 embedding tables.

Three tables:

* quality and size: cosine of each sentence embedding to float32's, min and mean; bytes
  of ``torch.save(state_dict)`` (float32, bfloat16) or ``save_quantized`` (int8), and how
  many times smaller than float32 that is;
* eager speed: ``model.encode(texts, batch_size=b)`` end to end, the four models in one
  process, round-robin after a warm-up; speedup = time(float32) / time(model) per round,
  median (min); > 1 means faster than float32;
* compiled speed: float32 and int8 weight-only (torchao's int8 weight-only is meant to be
  fast under ``torch.compile``) with their transformer stack (``model.encoder``, every int8
  projection but the pooler's) compiled by ``torch.compile(dynamic=True)`` (one graph for
  every padded length, not a recompile per length), ``encode`` timed as above.  Both are
  compiled and warmed up on the very calls that are timed before any timing; compiling
  during the timed rounds is an error (``error_on_recompile``), so compile time is never in
  the figures (the table gives it apart, as the first call's time).  A case that fails to
  compile is recorded with its reason and the suite goes on.

Peak memory is not compared: quantizing (and ``load_quantized``) starts from the float
model, so a process's peak holds it either way; the saved size is the memory gain.
Needs torchao (the ``quant`` extra).

Usage::

    python -m headwise.bench.quant [--quick] [--texts N] [--batch-sizes 1 8 32] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

import headwise.models
from headwise.bench import harness as hx
from headwise.quant import MODES, QuantConfig, quantize_, save_quantized
from headwise.texts import doc_sentences

THREADS = 2
FULL = hx.Budget(seconds=30.0, min_rounds=3, max_rounds=10, min_sample_s=0.0, max_inner=1)
QUICK = hx.Budget(seconds=1.0, min_rounds=3, max_rounds=3, min_sample_s=0.0, max_inner=1)
BASELINE = "float32"
CANDIDATES = ("bfloat16", *MODES)
COMPILED = "int8_weight_only"  # the mode compared under torch.compile


def build(name: str) -> headwise.models.SentenceEncoder:
    """One of the benchmark's models, in eval mode: ``float32``, ``bfloat16`` or a ``QuantConfig`` mode."""
    model = headwise.models.load().eval()
    if name == "bfloat16":
        model.to(torch.bfloat16)
    elif name != BASELINE:
        quantize_(model, QuantConfig(mode=name))
    return model


def saved_bytes(name: str, model: torch.nn.Module, folder: Path) -> int:
    """Bytes on disk: ``torch.save(state_dict)`` for a float model, ``save_quantized`` for an int8 one."""
    path = folder / f"{name}.pt"
    if name in MODES:
        save_quantized(model, path, QuantConfig(mode=name))
    else:
        torch.save(model.state_dict(), path)
    return os.path.getsize(path)


def quality_and_size(models: dict[str, torch.nn.Module], texts: list[str]) -> list[dict[str, object]]:
    """Per model: cosine of its embeddings to float32's (min, mean), saved bytes and float32 bytes / them."""
    reference = models[BASELINE].encode(texts)  # (N, E)
    results = []
    with tempfile.TemporaryDirectory(prefix="headwise-bench-quant-") as folder:
        base_bytes = saved_bytes(BASELINE, models[BASELINE], Path(folder))
        for name, model in models.items():
            cosine = F.cosine_similarity(model.encode(texts).float(), reference, dim=1)  # (N,)
            size = base_bytes if name == BASELINE else saved_bytes(name, model, Path(folder))
            results.append(
                {
                    "model": name,
                    "cosine_min": cosine.min().item(),
                    "cosine_mean": cosine.mean().item(),
                    "saved_bytes": size,
                    "smaller": base_bytes / size,
                }
            )
    return results


def compare_eager(
    models: dict[str, torch.nn.Module], texts: list[str], batch_sizes: list[int], budget: hx.Budget
) -> list[dict[str, object]]:
    """All models round-robin per batch size: sentences per second, and time(float32) / time(model)."""
    results = []
    for batch_size in batch_sizes:
        steps = {
            name: (lambda m=model, b=batch_size: m.encode(texts, batch_size=b))
            for name, model in models.items()
        }
        samples = hx.round_robin(steps, hx.plan_from_warmup(hx.warm_up(steps), budget))
        results.append(
            {
                "batch_size": batch_size,
                "sent_per_s": {name: len(texts) / statistics.median(s) for name, s in samples.items()},
                "ratios": {
                    name: asdict(hx.pair_ratio(samples[BASELINE], samples[name]))
                    for name in models
                    if name != BASELINE
                },
            }
        )
    return results


def _reason(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first[:150]}" if first else type(error).__name__


def compare_compiled(texts: list[str], batch_sizes: list[int], budget: hx.Budget) -> list[dict[str, object]]:
    """float32 and int8 weight-only with ``model.encoder`` compiled: time(float32) / time(int8) per batch size.

    Each batch size is compiled (if its shapes need it) and warmed up before it is timed; a
    failure (compiling, or recompiling while timed) gives that batch size an ``error`` and
    no figures.
    """
    models = {}
    for name in (BASELINE, COMPILED):
        model = build(name)
        model.network.encoder.compile(dynamic=True)
        models[name] = model
    results = []
    for batch_size in batch_sizes:
        steps = {
            name: (lambda m=model, b=batch_size: m.encode(texts, batch_size=b))
            for name, model in models.items()
        }
        first_call_s: dict[str, float] = {}
        try:
            for name, step in steps.items():
                start = time.perf_counter()
                step()  # compiles the shapes of this batch size, if not yet compiled
                first_call_s[name] = time.perf_counter() - start
            plan = hx.plan_from_warmup(hx.warm_up(steps), budget)
            with torch._dynamo.config.patch(error_on_recompile=True):  # nothing compiles while timed
                samples = hx.round_robin(steps, plan)
        except Exception as error:  # a benchmark records why a case failed and goes on
            results.append({"batch_size": batch_size, "first_call_s": first_call_s, "error": _reason(error)})
            continue
        results.append(
            {
                "batch_size": batch_size,
                "first_call_s": first_call_s,
                "sent_per_s": {name: len(texts) / statistics.median(s) for name, s in samples.items()},
                "ratio": asdict(hx.pair_ratio(samples[BASELINE], samples[COMPILED])),
                "error": None,
            }
        )
    return results


def summarize(report: dict) -> list[hx.Row]:
    """Saved size and eager speed per model against float32, and the compiled comparison per batch size.

    The min cosine to float32 is in each candidate's name.  A compiled case that failed has
    its reason in the name and a NaN ratio.
    """
    cosine = {q["model"]: q["cosine_min"] for q in report["quality"]}

    def label(name: str) -> str:
        return f"{name} (cosine min {cosine[name]:.4f})"

    rows = [
        hx.Row(
            "quant",
            "saved size",
            BASELINE,
            label(q["model"]),
            hx.Ratio(q["smaller"], q["smaller"]),
            "saved size",
        )
        for q in report["quality"]
        if q["model"] != BASELINE
    ]
    for r in report["eager"]:
        for name, ratio in r["ratios"].items():
            rows.append(
                hx.Row("quant", f"encode, batch {r['batch_size']}", BASELINE, label(name), hx.Ratio(**ratio))
            )
    for r in report["compiled"]:
        case = f"encode compiled, batch {r['batch_size']}"
        if r["error"] is None:
            rows.append(
                hx.Row("quant", case, f"{BASELINE} compiled", f"{COMPILED} compiled", hx.Ratio(**r["ratio"]))
            )
        else:
            failed = f"{COMPILED} compiled: failed, {r['error']}"
            rows.append(hx.Row("quant", case, f"{BASELINE} compiled", failed, hx.Ratio(math.nan, math.nan)))
    return rows


def _print_tables(report: dict) -> None:
    rows = [
        [
            q["model"],
            f"{q['cosine_min']:.4f}",
            f"{q['cosine_mean']:.4f}",
            f"{q['saved_bytes'] / 2**20:.1f} MiB",
            f"{q['smaller']:.2f}x",
        ]
        for q in report["quality"]
    ]
    print()
    print(hx.format_table(["model", "cosine min", "cosine mean", "saved", "smaller"], rows))

    headers = ["batch", f"{BASELINE} sent/s"]
    for name in CANDIDATES:
        headers += [f"{name} sent/s", "speedup med (min)"]
    rows = []
    for r in report["eager"]:
        row = [str(r["batch_size"]), f"{r['sent_per_s'][BASELINE]:.1f}"]
        for name in CANDIDATES:
            row += [f"{r['sent_per_s'][name]:.1f}", hx.Ratio(**r["ratios"][name]).fmt()]
        rows.append(row)
    print()
    print("eager")
    print(hx.format_table(headers, rows))

    if not report["compiled"]:
        return
    headers = [
        "batch",
        f"{BASELINE} sent/s",
        f"{COMPILED} sent/s",
        "speedup med (min)",
        "first call s (compile)",
    ]
    rows = []
    for r in report["compiled"]:
        first = " / ".join(
            f"{r['first_call_s'][n]:.1f}" if n in r["first_call_s"] else "-" for n in (BASELINE, COMPILED)
        )
        if r["error"] is not None:
            rows.append([str(r["batch_size"]), "-", "-", f"failed: {r['error']}", first])
            continue
        per_s = r["sent_per_s"]
        ratio = hx.Ratio(**r["ratio"]).fmt()
        rows.append([str(r["batch_size"]), f"{per_s[BASELINE]:.1f}", f"{per_s[COMPILED]:.1f}", ratio, first])
    print()
    print("torch.compile(model.encoder, dynamic=True), compiled and warmed up before timing")
    print(hx.format_table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 texts, 3 rounds, compiled at batch 8 only (smoke test)"
    )
    parser.add_argument("--texts", type=int, default=None, help="number of sentences (default 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--compile-batch-sizes", type=int, nargs="+", default=None, help="default: --batch-sizes (--quick: 8)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    count = args.texts or (32 if args.quick else 128)
    compile_batch_sizes = args.compile_batch_sizes or ([8] if args.quick else args.batch_sizes)
    budget = QUICK if args.quick else FULL
    texts = doc_sentences(count)
    models = {name: build(name) for name in (BASELINE, *CANDIDATES)}
    print(
        f"all-MiniLM-L6-v2, {count} sentences; torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}"
    )

    report = {
        "torch": torch.__version__,
        "texts": count,
        "threads": THREADS,
        "quality": quality_and_size(models, texts),
        "eager": compare_eager(models, texts, args.batch_sizes, budget),
    }
    del models
    report["compiled"] = [] if args.no_compile else compare_compiled(texts, compile_batch_sizes, budget)
    _print_tables(report)
    print()
    print("speedup = time(float32) / time(model) per round, median (min); > 1 means faster than float32")
    print(hx.load_line("end"))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
