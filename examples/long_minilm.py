"""all-MiniLM-L6-v2 switched to windowed or linear attention, with its own weights: agreement with full attention.

Texts: the longest documents of the Lee news corpus (lee_background.cor, shipped in the
gensim wheel and read as a file; gensim is never imported), cut to 256 tokens (the
model's configured max_seq_length) and, in a second table, to 512 (its
max_position_embeddings: longer than it was tuned on, but every position is trained).  Each document is encoded once with full attention and once per variant,
with ``headwise.variants.use_variant_`` switching all 6 layers in place:

* sliding windows of w = 16, 32, 64, 128 keys per query (left = right = w / 2), alone
  and with [CLS] (position 0) as a global token;
* linear attention with elu+1 features and with Performer random features (256).

Agreement with full attention: the cosine of the sentence embeddings (mean pooling,
L2-normalized, as ``model.encode``), and the mean over real tokens of the cosine of
the last hidden states.  Also printed: the head statistics of the last layer on the
longest document (entropy, mean distance, output norm; streamed over queries).

    pip install --no-deps gensim==4.4.0       # only for its test_data files
    python examples/long_minilm.py [--docs 32] [--max-tokens 256,512]  # about two minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import headwise.models as hm
from headwise.variants import (
    LinearAttention,
    RandomFeatureMap,
    SlidingWindow,
    streaming_head_statistics,
    use_variant_,
)

WINDOWS = (16, 32, 64, 128)


def lee_documents() -> list[str]:
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("needs gensim's test data: pip install --no-deps gensim==4.4.0")
    path = Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def run(model: hm.SentenceEncoder, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape: -> hidden (B, L, E), embeddings (B, E)."""
    with torch.inference_mode():
        hidden, _ = model(**features)
        return hidden, model.pool(hidden, features["attention_mask"])


def agreement(reference: tuple, other: tuple, real: torch.Tensor) -> tuple[float, float, float]:
    """Mean and min embedding cosine, and mean token cosine over real tokens."""
    embedding = F.cosine_similarity(reference[1], other[1], dim=-1)  # (B,)
    tokens = F.cosine_similarity(reference[0], other[0], dim=-1)[real]  # (n,)
    return embedding.mean().item(), embedding.min().item(), tokens.mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=32, help="how many of the longest documents")
    parser.add_argument("--max-tokens", default="256,512", help="truncation lengths, comma-separated")
    args = parser.parse_args()
    torch.manual_seed(0)
    docs = lee_documents()
    for max_tokens in (int(n) for n in args.max_tokens.split(",")):
        model = hm.load().eval()
        model.tokenizer.enable_truncation(max_length=max_tokens)
        compare(model, docs, args.docs)


def compare(model: hm.SentenceEncoder, docs: list[str], count: int) -> None:
    lengths = [len(model.tokenize(d)["input_ids"][0]) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -lengths[i])[:count]
    texts = [docs[i] for i in order]
    token_counts = [lengths[i] for i in order]
    print(
        f"{len(texts)} longest Lee corpus documents: {min(token_counts)}-{max(token_counts)} tokens "
        f"(median {statistics.median(token_counts):.0f}; truncated at {model.tokenizer.truncation['max_length']})"
    )
    batches = [model.tokenize(texts[i : i + 8]) for i in range(0, len(texts), 8)]
    full = [run(model, f) for f in batches]
    head_dim = model.config.head_dim
    variants = []
    for w in WINDOWS:
        variants.append((f"window {w}", SlidingWindow(w // 2, w // 2)))
        variants.append((f"window {w} + [CLS] global", SlidingWindow(w // 2, w // 2, global_tokens=[0])))
    variants.append(("linear elu+1", LinearAttention()))
    variants.append(("linear Performer 256", LinearAttention(RandomFeatureMap(head_dim, 256, seed=0))))
    print(f"{'attention':28s} {'embedding cos mean':>18s} {'(min)':>7s} {'token cos mean':>15s}")
    for name, variant in variants:
        use_variant_(model, variant)
        scores = [agreement(ref, run(model, f), f["attention_mask"].bool()) for ref, f in zip(full, batches, strict=True)]
        use_variant_(model, None)
        mean = sum(s[0] for s in scores) / len(scores)
        low = min(s[1] for s in scores)
        tokens = sum(s[2] for s in scores) / len(scores)
        print(f"{name:28s} {mean:18.4f} {low:7.4f} {tokens:15.4f}")
    print_head_statistics(model, texts[0])
    print()


def print_head_statistics(model: hm.SentenceEncoder, text: str) -> None:
    """Streaming statistics of the last layer's heads on one document, full vs window 32."""
    layer = model.attention_layers[-1]
    captured = {}
    hook = layer.register_forward_pre_hook(lambda _, args: captured.setdefault("x", args[0]))
    features = model.tokenize(text)
    with torch.inference_mode():
        model(**features)
    hook.remove()
    x = captured["x"]  # (1, L, E)
    b, n, _ = x.shape
    with torch.inference_mode():
        q = layer.q_proj(x).view(b, n, layer.num_heads, layer.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = layer.k_proj(x).view(b, n, layer.num_kv_heads, layer.head_dim).transpose(1, 2)  # (B, K, L, D)
        v = layer.v_proj(x).view(b, n, layer.num_kv_heads, layer.head_dim).transpose(1, 2)  # (B, K, L, D)
    print(f"\nlast layer, {n} tokens: per-head statistics, streamed over queries in chunks of 64")
    for name, variant in (("full", None), ("window 32", SlidingWindow(16, 16))):
        stats = streaming_head_statistics(q, k, v, variant=variant, chunk_size=64)
        print(f"  {name:10s} entropy  " + " ".join(f"{e:5.2f}" for e in stats.entropy[0].tolist()))
        print(f"  {name:10s} distance " + " ".join(f"{d:5.1f}" for d in stats.distance[0].tolist()))
        print(f"  {name:10s} out norm " + " ".join(f"{o:5.2f}" for o in stats.output_norm[0].tolist()))


if __name__ == "__main__":
    main()
