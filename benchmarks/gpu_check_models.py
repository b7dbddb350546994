"""One-shot GPU check of headwise's modules, real encoder, long-sequence variants and int8.

The companion of ``gpu_check.py`` (which checks the functional core and the drop-in layer):

E. ``headwise.Attention`` (grouped-query, rotary) on the GPU: the full causal pass and cached
   token-by-token decoding against the float64 oracle, fp32 and bf16; compiled cached decoding
   counts its compilations (CompileCounter) instead of recompiling per token.
F. all-MiniLM-L6-v2 on the GPU against transformers' BertModel on the same weights (last hidden
   state, every attention map, sentence embeddings), the bf16 model's embeddings against fp32,
   and encode time side by side with transformers (fp32 and bf16), plus a model with a third
   of its heads physically pruned.
G. Sliding-window and linear attention on the GPU: exact against the dense-mask math path and the
   quadratic reference; then time and peak memory against full SDPA (flash) at L = 8k .. 128k.
H. int8 weight-only quantization (torchao) of the encoder on the GPU: cosine to fp32 and time.

Every case records its own exception and the run goes on; results go to OUT/gpu_models.json
after each section and the printed tables to OUT/gpu_models.txt.  Run from the repository root::

    PYTHONPATH=src:benchmarks python3 benchmarks/gpu_check_models.py --model DIR --out $OUT

and validate on the CPU with tiny shapes::

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/gpu_check_models.py --device cpu --quick --out /tmp/g

``--model`` is a Hugging Face folder of all-MiniLM-L6-v2 (the fp16 copy that travels to a device
machine is loaded into fp32; transformers gets the same weights); default the embedded one.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import headwise
import headwise.models as hm
from gpu_check import Tee, describe, free_memory, say, sci
from headwise import Attention, RotaryEmbedding
from headwise.bench.harness import format_table
from headwise.functional import attention
from headwise.heads import prune_heads_
from headwise.texts import doc_sentences
from headwise.variants import (
    linear_attention,
    linear_attention_reference,
    sliding_window_attention,
    window_mask,
)

SEED = 0
RESULTS: dict[str, object] = {}


def max_abs(a: Tensor, b: Tensor) -> float:
    """max |a - b| in float64 on the CPU (the oracle lives there); NaN if either holds NaN."""
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(
    calls: dict[str, Callable[[], object]], device: torch.device, rounds: int, inner: int
) -> dict[str, float]:
    """Median seconds per call of each callable, round-robin over ``rounds`` rounds of ``inner`` calls."""
    for call in calls.values():  # warm-up
        call()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                calls[name]()
            sync(device)
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_mib(call: Callable[[], object], device: torch.device) -> float | None:
    """Peak GPU memory a call adds above what was allocated before it (MiB); None on the CPU."""
    if device.type != "cuda":
        return None
    free_memory(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = call()
    sync(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def save(out_dir: Path) -> None:
    (out_dir / "gpu_models.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------- E. Attention module


def section_e(device: torch.device, quick: bool) -> None:
    say("\n== E. Attention (H=8, K=2, rotary): full causal pass and cached decoding vs float64 ==")
    embed, heads, kv_heads, length = (64, 8, 2, 12) if quick else (512, 8, 2, 96)
    torch.manual_seed(SEED)
    oracle = (
        Attention(embed, heads, num_kv_heads=kv_heads, rotary=RotaryEmbedding(embed // heads)).double().eval()
    )
    x64 = torch.randn(2, length, embed, dtype=torch.float64)  # (B, L, E)
    with torch.no_grad():
        expected, _ = oracle(x64, is_causal=True)  # (B, L, E) float64 on the CPU
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        layer = copy.deepcopy(oracle).to(device=device, dtype=dtype)
        x = x64.to(device=device, dtype=dtype)
        row: dict[str, object] = {"dtype": str(dtype).removeprefix("torch.")}
        try:
            with torch.no_grad():
                full, _ = layer(x, is_causal=True)
                math_out = layer.out_proj(_math_heads(layer, x))
                cache = layer.new_cache(2, length)
                prefill = length // 3
                steps = [layer(x[:, :prefill], is_causal=True, cache=cache)[0]]
                steps += [
                    layer(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(prefill, length)
                ]
                decoded = torch.cat(steps, 1)
            row["math err"] = max_abs(math_out, expected)
            row["auto err"] = max_abs(full, expected)
            row["decode err"] = max_abs(decoded, expected)
            limit = 4 * row["math err"] + 1e-6
            row["status"] = status(row["auto err"] <= limit and row["decode err"] <= limit)
        except Exception as error:
            row["status"] = describe(error)
        rows.append(row)
    say(
        format_table(
            ["dtype", "math err", "auto err", "decode err", "status"],
            [
                [
                    r["dtype"],
                    sci(r.get("math err")),
                    sci(r.get("auto err")),
                    sci(r.get("decode err")),
                    r["status"],
                ]
                for r in rows
            ],
        )
    )
    RESULTS["E_attention"] = rows

    try:
        from torch._dynamo.testing import CompileCounter

        torch._dynamo.reset()
        layer = copy.deepcopy(oracle).to(device=device, dtype=torch.float32)
        x = x64.to(device=device, dtype=torch.float32)
        counter = CompileCounter()
        compiled = torch.compile(layer, backend=counter)
        with torch.no_grad():
            full, _ = layer(x, is_causal=True)
            cache = layer.new_cache(2, length)
            steps = [compiled(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(length)]
        err = max_abs(torch.cat(steps, 1), full)
        compile_row = {
            "steps": length,
            "compilations": counter.frame_count,
            "err": err,
            "status": status(counter.frame_count <= 2 and err <= 1e-4),
        }
    except Exception as error:
        compile_row = {"status": describe(error)}
    say(f"compiled cached decoding: {compile_row}")
    RESULTS["E_compile"] = compile_row


def _math_heads(layer: Attention, x: Tensor) -> Tensor:
    """The layer's heads through the math backend: (B, L, E) -> (B, L, H*D)."""
    b, n, _ = x.shape
    d = layer.head_dim
    q = layer.q_proj(x).view(b, n, -1, d).transpose(1, 2)  # (B, H, L, D)
    k = layer.k_proj(x).view(b, n, -1, d).transpose(1, 2)  # (B, K, L, D)
    v = layer.v_proj(x).view(b, n, -1, d).transpose(1, 2)
    positions = torch.arange(n, device=x.device)
    q, k = layer.rotary(q, k, positions, positions)
    out, _ = attention(q, k, v, is_causal=True, backend="math")  # (B, H, L, D)
    return out.transpose(1, 2).reshape(b, n, -1)


# ---------------------------------------------------------------- F. real encoder


def texts_for(quick: bool) -> tuple[list[str], list[str]]:
    """(parity texts: short and 100+ token ones in one batch, speed texts)."""
    sentences = doc_sentences(64 if quick else 256)
    long_ones = [" ".join(sentences[i : i + 8]) for i in range(0, 24, 8)]
    return sentences[:13] + long_ones, sentences


def section_f(device: torch.device, quick: bool, model_dir: str | None) -> None:
    say("\n== F. all-MiniLM-L6-v2: parity with transformers, bf16, encode time ==")
    import transformers

    model = (
        hm.load(model_dir, device=device, dtype=torch.float32) if model_dir else hm.load(device=device)
    ).eval()
    source = model.source
    parity_texts, speed_texts = texts_for(quick)
    batch = model.tokenize(parity_texts)
    real = batch["attention_mask"].bool()  # (B, L)
    result: dict[str, object] = {"tokens": list(batch["input_ids"].shape)}
    reference = {
        impl: transformers.BertModel.from_pretrained(source, attn_implementation=impl, dtype=torch.float32)
        .to(device)
        .eval()
        for impl in ("eager", "sdpa")
    }
    with torch.inference_mode():
        hidden, weights = model(**batch, output_attentions=True)
        eager = reference["eager"](**batch, output_attentions=True)
        sdpa = reference["sdpa"](**batch)
        ours = model.encode(parity_texts, batch_size=len(parity_texts))
        pooled = hm.pool(sdpa.last_hidden_state, batch["attention_mask"], ("mean",))
        theirs = F.normalize(pooled, p=2, dim=1)
    result["hidden err (real tokens)"] = max_abs(hidden[real], sdpa.last_hidden_state[real])
    result["weights err"] = max(  # real query rows: a padded query's row is not used by anything
        max_abs(a.transpose(1, 2)[real], b.transpose(1, 2)[real])  # (real tokens, H, S)
        for a, b in zip(weights, eager.attentions, strict=True)
    )
    result["embedding err"] = max_abs(ours, theirs)
    result["parity"] = status(
        result["hidden err (real tokens)"] <= 1e-4
        and result["weights err"] <= 1e-5
        and result["embedding err"] <= 1e-5
    )
    say(
        f"fp32 parity on {device.type} ({result['tokens']} tokens): hidden {sci(result['hidden err (real tokens)'])} "
        f"(<= 1e-4), weights of real queries {sci(result['weights err'])} (<= 1e-5), embeddings {sci(result['embedding err'])} "
        f"(<= 1e-5): {result['parity']}"
    )

    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        full_emb = model.encode(speed_texts, batch_size=64)
        half_emb = half.encode(speed_texts, batch_size=64).float()
    cosine = F.cosine_similarity(full_emb, half_emb, dim=1)
    result["bf16 cosine min/mean"] = [cosine.min().item(), cosine.mean().item()]
    say(
        f"bf16 embeddings vs fp32 over {len(speed_texts)} texts: cosine min {cosine.min():.5f} mean {cosine.mean():.5f}"
    )

    pruned = copy.deepcopy(half)
    prune_heads_(pruned, {layer: [0, 1, 2, 3] for layer in range(6)})  # 24 of 72 heads
    ref_half = copy.deepcopy(reference["sdpa"]).to(torch.bfloat16)
    ref_full = reference["sdpa"]

    def hf_encode(ref: torch.nn.Module, size: int) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                for start in range(0, len(speed_texts), size):
                    features = model.tokenize(speed_texts[start : start + size])
                    out = ref(**features).last_hidden_state
                    hm.pool(out, features["attention_mask"], ("mean",))
            return None

        return call

    def hw_encode(m: hm.SentenceEncoder, size: int) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return m.encode(speed_texts, batch_size=size)

        return call

    speed_rows = []
    for size in (32, 128):
        calls = {
            "transformers fp32": hf_encode(ref_full, size),
            "headwise fp32": hw_encode(model, size),
            "transformers bf16": hf_encode(ref_half, size),
            "headwise bf16": hw_encode(half, size),
            "headwise bf16 pruned 1/3": hw_encode(pruned, size),
        }
        times = timed(calls, device, rounds=3 if quick else 7, inner=1)
        speed_rows.append({"batch": size, **{k: v * 1e3 for k, v in times.items()}})
    names = list(speed_rows[0])[1:]
    say(f"encode {len(speed_texts)} texts, ms (median of rounds; tokenizing included on both sides):")
    say(format_table(["batch", *names], [[r["batch"], *[f"{r[n]:.1f}" for n in names]] for r in speed_rows]))
    for r in speed_rows:
        say(
            f"batch {r['batch']}: fp32 transformers/headwise {r['transformers fp32'] / r['headwise fp32']:.2f}x, "
            f"bf16 {r['transformers bf16'] / r['headwise bf16']:.2f}x, "
            f"pruned bf16 vs unpruned bf16 {r['headwise bf16'] / r['headwise bf16 pruned 1/3']:.2f}x"
        )
    result["encode ms"] = speed_rows
    RESULTS["F_encoder"] = result


# ---------------------------------------------------------------- G. long-sequence variants


def section_g(device: torch.device, quick: bool) -> None:
    say("\n== G. sliding window and linear attention: exactness, then time and memory vs full SDPA ==")
    generator = torch.Generator().manual_seed(SEED)
    n = 64 if quick else 1024
    q, k, v = (torch.randn(2, 4, n, 32, generator=generator, dtype=torch.float64) for _ in range(3))
    rows = []
    cases = [
        ("window causal (31, 0)", dict(left=31, right=0, is_causal=True)),
        ("window (16, 15) + 2 global", dict(left=16, right=15, global_tokens=[0, n // 2])),
    ]
    for name, kwargs in cases:
        try:
            dense = window_mask(
                n,
                n,
                left=kwargs["left"],
                right=kwargs["right"],
                global_tokens=kwargs.get("global_tokens", ()),
                is_causal=kwargs.get("is_causal", False),
            )
            expected, _ = attention(q, k, v, attn_mask=dense, backend="math")
            got = sliding_window_attention(
                *(t.to(device=device, dtype=torch.float32) for t in (q, k, v)), **kwargs
            )
            oracle_err = max_abs(
                attention(*(t.float() for t in (q, k, v)), attn_mask=dense, backend="math")[0], expected
            )
            err = max_abs(got, expected)
            rows.append([name, sci(err), sci(oracle_err), status(err <= 4 * oracle_err + 1e-6)])
        except Exception as error:
            rows.append([name, "-", "-", describe(error)])
    for causal in (False, True):
        name = f"linear elu {'causal' if causal else 'bidirectional'}"
        try:
            expected = linear_attention_reference(q, k, v, is_causal=causal)
            got = linear_attention(
                *(t.to(device=device, dtype=torch.float32) for t in (q, k, v)), is_causal=causal
            )
            f32 = linear_attention_reference(*(t.float() for t in (q, k, v)), is_causal=causal)
            err, oracle_err = max_abs(got, expected), max_abs(f32, expected)
            rows.append([name, sci(err), sci(oracle_err), status(err <= 4 * oracle_err + 1e-6)])
        except Exception as error:
            rows.append([name, "-", "-", describe(error)])
    say(format_table(["case (fp32 on device vs float64)", "err", "fp32 reference err", "status"], rows))
    RESULTS["G_exact"] = rows

    lengths = (1024, 2048) if quick else (8192, 32768, 65536, 131072)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    table = []
    for causal in (True, False):
        for length in lengths:
            gen = torch.Generator().manual_seed(SEED)
            q, k, v = (
                torch.randn(1, 8, length, 64, generator=gen).to(device=device, dtype=dtype) for _ in range(3)
            )
            calls = long_calls(q, k, v, causal)
            row: dict[str, object] = {"mode": "causal" if causal else "bidir", "L": length}
            try:
                times = timed(calls, device, rounds=3 if quick else 5, inner=1 if quick else 3)
                row.update({f"{k} ms": t * 1e3 for k, t in times.items()})
                row.update({f"{k} MiB": peak_mib(c, device) for k, c in calls.items()})
            except Exception as error:
                row["error"] = describe(error)
            table.append(row)
            del q, k, v, calls
            free_memory(device)
    header = [
        "mode",
        "L",
        "full ms",
        "window ms",
        "linear ms",
        "full/window",
        "full/linear",
        "full MiB",
        "window MiB",
        "linear MiB",
    ]

    def cell(r: dict, key: str) -> str:
        value = r.get(key)
        return "-" if value is None else f"{value:.2f}"

    say(f"B=1, H=8, D=64, {str(dtype).removeprefix('torch.')}, window 512 keys, linear elu chunk 128:")
    say(
        format_table(
            header,
            [
                [
                    r["mode"],
                    r["L"],
                    cell(r, "full ms"),
                    cell(r, "window ms"),
                    cell(r, "linear ms"),
                    f"{r['full ms'] / r['window ms']:.2f}" if "full ms" in r else r.get("error", "-"),
                    f"{r['full ms'] / r['linear ms']:.2f}" if "full ms" in r else "-",
                    cell(r, "full MiB"),
                    cell(r, "window MiB"),
                    cell(r, "linear MiB"),
                ]
                for r in table
            ],
        )
    )
    RESULTS["G_long"] = table


def long_calls(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> dict[str, Callable[[], object]]:
    """Full SDPA, window 512 and linear attention on (B, H, L, D) heads."""
    left, right = (511, 0) if causal else (256, 255)
    return {
        "full": lambda: attention(q, k, v, is_causal=causal, backend="sdpa")[0],
        "window": lambda: sliding_window_attention(q, k, v, left=left, right=right, is_causal=causal),
        "linear": lambda: linear_attention(q, k, v, is_causal=causal),
    }


# ---------------------------------------------------------------- H. int8 on the GPU


def section_h(device: torch.device, quick: bool, model_dir: str | None) -> None:
    say("\n== H. int8 weight-only (torchao) encoder on the device ==")
    try:
        import torchao

        from headwise.quant import QuantConfig, quantize_

        model = (
            hm.load(model_dir, device=device, dtype=torch.float32) if model_dir else hm.load(device=device)
        ).eval()
        _, texts = texts_for(quick)
        quantized = copy.deepcopy(model)
        # int8 tables use PyTorch's CPU embedding kernel, so off the CPU only the projections go int8
        quantize_(quantized, QuantConfig(mode="int8_weight_only", embeddings=device.type == "cpu"))
        half = copy.deepcopy(model).to(torch.bfloat16)
        with torch.inference_mode():
            full = model.encode(texts, batch_size=64)
            got = quantized.encode(texts, batch_size=64).float()
        cosine = F.cosine_similarity(full, got, dim=1)
        calls = {
            "fp32": lambda: model.encode(texts, batch_size=64),
            "bf16": lambda: half.encode(texts, batch_size=64),
            "int8 weight-only": lambda: quantized.encode(texts, batch_size=64),
        }
        with torch.inference_mode():
            times = timed(calls, device, rounds=3 if quick else 5, inner=1)
        row = {
            "torchao": torchao.__version__,
            "cosine min": cosine.min().item(),
            "cosine mean": cosine.mean().item(),
            **{f"{k} ms": t * 1e3 for k, t in times.items()},
        }
    except Exception as error:
        row = {"error": describe(error)}
    say(json.dumps(row, indent=1))
    RESULTS["H_int8"] = row


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for a CPU dry run)")
    parser.add_argument("--model", default=None, help="a Hugging Face folder of all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", default="EFGH")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    log = (args.out / "gpu_models.txt").open("w")
    sys.stdout = Tee(sys.__stdout__, log)  # type: ignore[assignment]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    say(
        f"gpu_check_models: torch {torch.__version__}, python {platform.python_version()}, device {name}, "
        f"headwise {headwise.__version__}, quick={args.quick}"
    )
    RESULTS["device"] = name
    RESULTS["torch"] = torch.__version__
    sections = {
        "E": lambda: section_e(device, args.quick),
        "F": lambda: section_f(device, args.quick, args.model),
        "G": lambda: section_g(device, args.quick),
        "H": lambda: section_h(device, args.quick, args.model),
    }
    for key in args.sections:
        start = time.perf_counter()
        try:
            sections[key]()
        except Exception as error:
            say(f"section {key} failed: {describe(error)}")
            RESULTS[f"{key}_error"] = describe(error)
        say(f"(section {key}: {time.perf_counter() - start:.0f} s)")
        save(args.out)
        free_memory(device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
