"""Token-by-token decoding: headwise's KV cache against recomputing the prefix and a hand-written cache.

Four implementations decode the same sequence (B=1, E=512, H=8, 256 tokens by default)
with identical weights, in one process, eval mode under ``torch.inference_mode`` with
2 threads, round-robin after a warm-up; one sample is one whole decode:

* ``hw_cache``: ``headwise.Attention`` with its preallocated cache
  (``attn.new_cache(1, N)``, then ``attn(x_t, is_causal=True, cache=cache)`` per token)
* ``torch_recompute``: ``torch.nn.MultiheadAttention`` run on the whole prefix
  ``x[:, :t+1]`` at every step with a (t+1, t+1) causal bool mask, keeping the last position,
  with its default call (need_weights=True)
* ``torch_recompute_nw``: the same with need_weights=False
* ``manual_cache_sdpa``: four ``nn.Linear`` with the same weights, preallocated K/V buffers
  (B, H, N, D) written in place, ``F.scaled_dot_product_attention`` of the new query
  against the filled prefix (no mask: the query is the newest position)

A second table decodes through a stack of two such attention layers (the output of
the first is the input of the second, no residual or norm), one cache per layer.
Before timing, every implementation's N outputs are compared: a max abs difference
above 1e-4 raises RuntimeError.

Usage::

    python -m headwise.bench.decode [--quick] [--tokens N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise import Attention
from headwise.bench import harness as hx

IMPLS = ("hw_cache", "torch_recompute", "torch_recompute_nw", "manual_cache_sdpa")
RATIOS = (
    ("torch_recompute", "hw_cache"),
    ("torch_recompute_nw", "hw_cache"),
    ("manual_cache_sdpa", "hw_cache"),
)
TARGETS = {"torch_recompute/hw_cache": 14.0, "manual_cache_sdpa/hw_cache": 0.95}
EMBED_DIM, NUM_HEADS, BATCH = 512, 8, 1
OUTPUT_TOL = 1e-4
THREADS = 2
SEED = 0

Decode = Callable[[], Tensor]


@dataclass(frozen=True)
class Config:
    tokens: int
    layer_counts: tuple[int, ...]
    budget: hx.Budget
    warmup_decodes: int  # untimed decodes of each implementation after the agreement check


FULL = Config(
    tokens=256,
    layer_counts=(1, 2),
    budget=hx.Budget(seconds=15.0, min_rounds=7, max_rounds=25, min_sample_s=0.0, max_inner=1),
    warmup_decodes=2,
)
QUICK = Config(
    tokens=32,
    layer_counts=(1, 2),
    budget=hx.Budget(seconds=1.0, min_rounds=5, max_rounds=10, min_sample_s=0.0, max_inner=1),
    warmup_decodes=1,
)


# ---------------------------------------------------------------- models


class ManualCacheLayer(nn.Module):
    """Baseline: four ``nn.Linear`` and K/V buffers written in place, around the fused SDPA kernel."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        embed_dim = mha.embed_dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(embed_dim, embed_dim) for _ in range(4)
        )
        copy_from_torch(mha, self.q_proj, self.k_proj, self.v_proj, self.out_proj)

    def new_buffers(self, batch: int, max_len: int) -> tuple[Tensor, Tensor]:
        """Shape: returns keys, values (B, H, max_len, D)."""
        keys = torch.zeros(batch, self.num_heads, max_len, self.head_dim)  # (B, H, N, D)
        return keys, torch.zeros_like(keys)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, position: int) -> Tensor:
        """One decoding step at ``position``.  Shape: x (B, 1, E) -> (B, 1, E)."""
        batch, _, embed_dim = x.shape
        q, k, v = (
            proj(x).view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, D)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        end = position + 1
        keys[:, :, position:end] = k
        values[:, :, position:end] = v
        out = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end])  # (B, H, 1, D)
        out = out.transpose(1, 2).reshape(batch, 1, embed_dim)  # (B, 1, E)
        return self.out_proj(out)


def copy_from_torch(
    mha: nn.MultiheadAttention, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear
) -> None:
    """Copy torch's packed in-projection and out-projection into four ``nn.Linear``."""
    weights = mha.in_proj_weight.detach().chunk(3)  # 3 x (E, E)
    biases = mha.in_proj_bias.detach().chunk(3)  # 3 x (E,)
    with torch.no_grad():
        for proj, weight, bias in zip((q_proj, k_proj, v_proj), weights, biases, strict=True):
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)
        out_proj.weight.copy_(mha.out_proj.weight)
        out_proj.bias.copy_(mha.out_proj.bias)


@dataclass
class Stack:
    """The same ``num_layers`` layers in each implementation's form."""

    torch_layers: list[nn.MultiheadAttention]
    hw_layers: list[Attention]
    manual_layers: list[ManualCacheLayer]


def build_torch_layer() -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(EMBED_DIM, NUM_HEADS, batch_first=True)
    with torch.no_grad():  # random biases, so their slicing is checked too
        mha.in_proj_bias.normal_(std=0.1)
        mha.out_proj.bias.normal_(std=0.1)
    return mha.eval()


def hw_from_torch(mha: nn.MultiheadAttention) -> Attention:
    attn = Attention(EMBED_DIM, NUM_HEADS)
    copy_from_torch(mha, attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)
    return attn.eval()


def build_stack(num_layers: int) -> Stack:
    torch.manual_seed(SEED)
    torch_layers = [build_torch_layer() for _ in range(num_layers)]
    return Stack(
        torch_layers=torch_layers,
        hw_layers=[hw_from_torch(mha) for mha in torch_layers],
        manual_layers=[ManualCacheLayer(mha).eval() for mha in torch_layers],
    )


def build_input(tokens: int) -> Tensor:
    """Shape: returns (B, N, E)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(BATCH, tokens, EMBED_DIM, generator=generator)  # (B, N, E)


# ---------------------------------------------------------------- decoders


def decode_hw_cache(layers: Sequence[Attention], x: Tensor) -> Tensor:
    """Shape: x (B, N, E) -> (B, N, E), one token at a time through every layer's cache."""
    batch, tokens, _ = x.shape
    caches = [layer.new_cache(batch, tokens) for layer in layers]
    outputs = []
    for t in range(tokens):
        h = x[:, t : t + 1]  # (B, 1, E)
        for layer, cache in zip(layers, caches, strict=True):
            h, _ = layer(h, is_causal=True, cache=cache)  # (B, 1, E)
        outputs.append(h)
    return torch.cat(outputs, dim=1)  # (B, N, E)


def decode_torch_recompute(layers: Sequence[nn.MultiheadAttention], x: Tensor, *, need_weights: bool) -> Tensor:
    """Shape: x (B, N, E) -> (B, N, E); step t recomputes every layer over x[:, :t+1].

    ``need_weights=True`` is torch's default call; False is the tuned one.
    """
    tokens = x.shape[1]
    masks = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)  # (N, N), True = masked
    outputs = []
    for t in range(tokens):
        h = x[:, : t + 1]  # (B, t+1, E)
        mask = masks[: t + 1, : t + 1]  # (t+1, t+1)
        for layer in layers:
            h, _ = layer(h, h, h, attn_mask=mask, need_weights=need_weights)  # (B, t+1, E)
        outputs.append(h[:, -1:])  # (B, 1, E)
    return torch.cat(outputs, dim=1)  # (B, N, E)


def decode_manual_cache(layers: Sequence[ManualCacheLayer], x: Tensor) -> Tensor:
    """Shape: x (B, N, E) -> (B, N, E), one token at a time through hand-written caches."""
    batch, tokens, _ = x.shape
    buffers = [layer.new_buffers(batch, tokens) for layer in layers]
    outputs = []
    for t in range(tokens):
        h = x[:, t : t + 1]  # (B, 1, E)
        for layer, (keys, values) in zip(layers, buffers, strict=True):
            h = layer(h, keys, values, t)  # (B, 1, E)
        outputs.append(h)
    return torch.cat(outputs, dim=1)  # (B, N, E)


def make_decoders(stack: Stack, x: Tensor) -> dict[str, Decode]:
    return {
        "hw_cache": lambda: decode_hw_cache(stack.hw_layers, x),
        "torch_recompute": lambda: decode_torch_recompute(stack.torch_layers, x, need_weights=True),
        "torch_recompute_nw": lambda: decode_torch_recompute(stack.torch_layers, x, need_weights=False),
        "manual_cache_sdpa": lambda: decode_manual_cache(stack.manual_layers, x),
    }


# ---------------------------------------------------------------- agreement and timing


def full_causal_pass(layers: Sequence[nn.MultiheadAttention], x: Tensor) -> Tensor:
    """One causal pass over the whole sequence with torch's module: the reference."""
    tokens = x.shape[1]
    mask = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)  # (N, N), True = masked
    h = x
    for layer in layers:
        h, _ = layer(h, h, h, attn_mask=mask, need_weights=False)  # (B, N, E)
    return h


def check_agreement(decoders: dict[str, Decode], reference: Tensor) -> dict[str, float]:
    """Max abs difference of each decode from the full causal pass; RuntimeError past OUTPUT_TOL."""
    diffs = {}
    for impl, decode in decoders.items():
        out = decode()
        if out.shape != reference.shape:
            raise RuntimeError(f"{impl}: output shape {tuple(out.shape)}, expected {tuple(reference.shape)}")
        diff = (out - reference).abs().max().item()
        if not diff <= OUTPUT_TOL:  # also catches NaN
            raise RuntimeError(
                f"{impl}: max abs diff {diff:.3g} from a full causal pass exceeds {OUTPUT_TOL}"
            )
        diffs[impl] = diff
    return diffs


def bench_layers(num_layers: int, tokens: int, config: Config) -> dict[str, object]:
    stack = build_stack(num_layers)
    x = build_input(tokens)
    decoders = make_decoders(stack, x)
    diffs = check_agreement(decoders, full_causal_pass(stack.torch_layers, x))
    for _ in range(config.warmup_decodes - 1):
        hx.warm_up(decoders)
    plan = hx.plan_from_warmup(hx.warm_up(decoders), config.budget)
    samples = hx.round_robin(decoders, plan)
    return {
        "layers": num_layers,
        "tokens": tokens,
        "rounds": plan.rounds,
        "median_ms": {impl: hx.median_ms(s) for impl, s in samples.items()},
        "median_us_per_token": {impl: 1e3 * hx.median_ms(s) / tokens for impl, s in samples.items()},
        "samples_ms": {impl: [1e3 * t for t in s] for impl, s in samples.items()},
        "ratios": {f"{n}/{d}": asdict(hx.pair_ratio(samples[n], samples[d])) for n, d in RATIOS},
        "max_abs_diff": diffs,
    }


# ---------------------------------------------------------------- report


def table(result: dict) -> str:
    headers = ["implementation", "ms / decode", "us / token", "max abs diff"]
    rows = [
        [
            impl,
            f"{result['median_ms'][impl]:.2f}",
            f"{result['median_us_per_token'][impl]:.1f}",
            f"{result['max_abs_diff'][impl]:.1e}",
        ]
        for impl in IMPLS
    ]
    ratio_rows = []
    for name, target in TARGETS.items():
        ratio = hx.Ratio(**result["ratios"][name])
        verdict = "meets" if ratio.median >= target else "MISSES"
        ratio_rows.append([name, ratio.fmt(), f">= {target}", verdict])
    title = (
        f"== decode {result['tokens']} tokens, {result['layers']} attention layer(s), B={BATCH} "
        f"E={EMBED_DIM} H={NUM_HEADS}, {result['rounds']} rounds (median over rounds) =="
    )
    ratios = hx.format_table(["ratio", "median (min)", "target", ""], ratio_rows)
    return "\n".join([title, hx.format_table(headers, rows), "", ratios])


def summarize(report: dict) -> list[hx.Row]:
    """One row per stack depth and baseline: time(baseline) / time(headwise's cache)."""
    rows = []
    for result in report["results"]:
        for numerator, denominator in RATIOS:
            case = f"{result['tokens']} tokens, {result['layers']} layer(s)"
            ratio = hx.Ratio(**result["ratios"][f"{numerator}/{denominator}"])
            rows.append(hx.Row("decode", case, numerator, "headwise.Attention + KVCache", ratio))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 tokens and few rounds (under 30 s)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens to decode (default 256, quick 32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.tokens is not None and args.tokens < 1:
        parser.error(f"--tokens must be a positive int, got {args.tokens}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    tokens = args.tokens if args.tokens is not None else config.tokens
    torch.set_num_threads(THREADS)
    start_load = hx.load_line("start")
    print(start_load)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, eval, inference_mode, float32")
    results = []
    with torch.inference_mode():
        for num_layers in config.layer_counts:
            result = bench_layers(num_layers, tokens, config)
            results.append(result)
            print(table(result), flush=True)
    end_load = hx.load_line("end")
    print(end_load)
    if args.json is not None:
        payload = {
            "torch": torch.__version__,
            "threads": THREADS,
            "quick": args.quick,
            "load": [start_load, end_load],
        }
        args.json.write_text(json.dumps({**payload, "results": results}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
