"""int8 all-MiniLM-L6-v2 against float32: quality, saved size and encode speed.

Each ``headwise.quant.QuantConfig`` mode (int8 weight-only through torchao, the default;
dynamic int8 through PyTorch's fbgemm kernels) with int8 embedding tables, on the same
real sentences (prose from CPython's bundled documentation, ``pydoc_data.topics``):

* quality: cosine of each sentence embedding to float32's, min and mean;
* size: bytes of ``torch.save(state_dict)`` for float32 against ``save_quantized``;
* speed: ``model.encode(texts, batch_size=b)`` end to end, all models in one process,
  round-robin after a warm-up; ratio = time(float32) / time(int8) per round, median
  (min); > 1 means int8 is faster.

Peak memory is not compared: quantizing (and ``load_quantized``) starts from the float
model, so a process's peak holds it either way; the saved size is the memory gain.

Usage::

    .venv/bin/python benchmarks/bench_quant.py [--quick] [--texts N] [--batch-sizes 1 8 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import _harness as hx
import headwise.models
from headwise.bench.encode import real_sentences
from headwise.quant import MODES, QuantConfig, quantize_, save_quantized

THREADS = 2
FULL = hx.Budget(seconds=30.0, min_rounds=3, max_rounds=10, min_sample_s=0.0, max_inner=1)
QUICK = hx.Budget(seconds=1.0, min_rounds=3, max_rounds=3, min_sample_s=0.0, max_inner=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 texts and 3 rounds (smoke test)")
    parser.add_argument("--texts", type=int, default=None, help="number of sentences (default 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)

    count = args.texts or (32 if args.quick else 128)
    texts = real_sentences(count)
    models = {"float32": headwise.models.load().eval()}
    for mode in MODES:
        model = headwise.models.load().eval()
        quantize_(model, QuantConfig(mode=mode))
        models[mode] = model
    print(f"all-MiniLM-L6-v2, {count} sentences; torch {torch.__version__}, {THREADS} threads; {hx.load_line('start')}")

    reference = models["float32"].encode(texts)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(models["float32"].state_dict(), Path(folder, "float32.pt"))
        fp32_bytes = os.path.getsize(Path(folder, "float32.pt"))
        rows = [["float32", "1.0000", "1.0000", f"{fp32_bytes / 2**20:.1f} MiB", "1.00x"]]
        for mode in MODES:
            cosine = F.cosine_similarity(models[mode].encode(texts), reference, dim=1)
            size = os.path.getsize(save_quantized(models[mode], Path(folder, f"{mode}.pt"), QuantConfig(mode=mode)))
            rows.append([mode, f"{cosine.min().item():.4f}", f"{cosine.mean().item():.4f}",
                         f"{size / 2**20:.1f} MiB", f"{fp32_bytes / size:.2f}x"])
    print()
    print(hx.format_table(["model", "cosine min", "cosine mean", "saved", "smaller"], rows))

    rows = []
    for batch_size in args.batch_sizes:
        steps = {name: (lambda m=model, b=batch_size: m.encode(texts, batch_size=b)) for name, model in models.items()}
        samples = hx.round_robin(steps, hx.plan_from_warmup(hx.warm_up(steps), QUICK if args.quick else FULL))
        row = [str(batch_size), f"{count / statistics.median(samples['float32']):.1f}"]
        for mode in MODES:
            ratio = hx.pair_ratio(samples["float32"], samples[mode])
            row += [f"{count / statistics.median(samples[mode]):.1f}", ratio.fmt()]
        rows.append(row)
    headers = ["batch", "float32 sent/s"]
    for mode in MODES:
        headers += [f"{mode} sent/s", "speedup med (min)"]
    print()
    print(hx.format_table(headers, rows))
    print()
    print("speedup = time(float32) / time(int8) per round; > 1 means int8 is faster")
    print(hx.load_line("end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
