"""Per-head statistics of attention maps and head outputs, accumulated over batches of texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from headwise.heads._scoring import check_texts, scoring_mode, text_batches

__all__ = ["HeadStatistics", "head_statistics"]

#: Tokens per chunk when accumulating the similarity of head outputs (bounds memory).
_CHUNK = 256


@dataclass(frozen=True)
class HeadStatistics:
    """What each head does, averaged over every real (non-padding) query token of the texts.

    Per-layer lists hold one (H_l,) tensor per attention layer.  Similarities are over all
    heads of the model, flattened in layer order: row ``i`` is head ``heads[i]``.

    Attributes:
        entropy: entropy of the attention row, in nats (0 = one key; log S = uniform).
        distance: mean |i - j| between query i and the keys j it attends to, in tokens.
        cls_share: attention on the first token ([CLS] of an encoder; a decoder's attention
            sink, Xiao et al. 2023).
        sink_share: attention on the first ``sink_tokens`` tokens (equal to ``cls_share`` for one).
        self_share: attention of each query on its own position (the current token).
        sep_share: attention on the last real token ([SEP] of a one-segment text; for a causal
            model only the last query sees it).
        pad_share: attention on padding keys; zero when masking works (a check).
        map_similarity: (N, N) cosine similarity of two heads' attention maps on the same texts.
        output_similarity: (N, N) cosine similarity of two heads' contributions to the
            residual stream (the head's output times its block of ``out_proj``).
        heads: (layer, head) for each of the N rows of the similarity matrices.
        num_tokens: real query tokens averaged over.
    """

    entropy: list[Tensor]
    distance: list[Tensor]
    cls_share: list[Tensor]
    sep_share: list[Tensor]
    pad_share: list[Tensor]
    map_similarity: Tensor
    output_similarity: Tensor
    heads: list[tuple[int, int]]
    num_tokens: int
    sink_share: list[Tensor] = field(default_factory=list)
    self_share: list[Tensor] = field(default_factory=list)

    def most_similar(self, count: int = 10, *, kind: str = "output") -> list[tuple[tuple[int, int], tuple[int, int], float]]:
        """The ``count`` most similar pairs of distinct heads, most similar first: (head, head, cosine)."""
        if kind not in ("output", "map"):
            raise ValueError(f"kind must be 'output' or 'map', got {kind!r}.")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}.")
        similarity = self.output_similarity if kind == "output" else self.map_similarity
        rows, cols = torch.triu_indices(len(self.heads), len(self.heads), offset=1)
        values = similarity[rows, cols]
        top = values.topk(min(count, values.numel())).indices
        return [(self.heads[int(rows[i])], self.heads[int(cols[i])], float(values[i])) for i in top]

    def redundant_clusters(self, *, threshold: float, kind: str = "output") -> list[list[tuple[int, int]]]:
        """Groups of heads linked by similarity >= ``threshold`` (single linkage), largest first.

        Args:
            threshold: cosine similarity in (-1, 1] above which two heads count as redundant.
            kind: ``"output"`` (head contributions) or ``"map"`` (attention maps).

        Returns:
            clusters of two or more (layer, head) pairs; heads similar to no other are left out.
        """
        if kind not in ("output", "map"):
            raise ValueError(f"kind must be 'output' or 'map', got {kind!r}.")
        if not isinstance(threshold, (int, float)) or not -1.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in (-1, 1], got {threshold!r}.")
        similarity = self.output_similarity if kind == "output" else self.map_similarity
        parent = list(range(len(self.heads)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        rows, cols = torch.nonzero(torch.triu(similarity >= threshold, diagonal=1), as_tuple=True)
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            parent[root(i)] = root(j)
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, head in enumerate(self.heads):
            groups.setdefault(root(i), []).append(head)
        return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))


@torch.no_grad()
def head_statistics(
    model: nn.Module, texts: Sequence[str], *, batch_size: int = 32, sink_tokens: int = 1
) -> HeadStatistics:
    """Entropy, attention distance, special-token, sink and self shares and redundancy of every head.

    Accumulated batch by batch: no attention map is kept beyond its batch, and the
    similarity matrices are (N, N) running sums.  Only real (non-padding) queries count, and
    masked keys (padding, and a causal model's future) carry no weight, so entropy and distance
    are over the keys a query may attend.  The model is not changed.

    Shape:
        texts N -> per-layer (H_l,) tensors and (sum H_l, sum H_l) similarities.
    """
    texts = check_texts(model, texts)
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 1:
        raise ValueError(f"sink_tokens must be a positive int, got {sink_tokens!r}.")
    with scoring_mode(model) as layers:
        counts = [layer.num_heads for layer in layers]
        total = sum(counts)
        device, dtype = layers[0].q_proj.weight.device, torch.float64
        sums = {key: [torch.zeros(h, dtype=dtype, device=device) for h in counts] for key in _PER_HEAD}
        map_gram = torch.zeros(total, total, dtype=dtype, device=device)
        out_gram = torch.zeros(total, total, dtype=dtype, device=device)
        captured: list[Tensor] = []
        hooks = [
            layer.out_proj.register_forward_pre_hook(lambda _, args: captured.append(args[0])) for layer in layers
        ]
        tokens = 0
        try:
            for _, features in text_batches(model, texts, batch_size):
                captured.clear()
                _, maps = model(**features, output_attentions=True)
                real = features["attention_mask"].bool()  # (b, L)
                tokens += int(real.sum())
                for index, weights in enumerate(maps):
                    _accumulate_maps(weights.to(dtype), real, {k: v[index] for k, v in sums.items()}, sink_tokens)
                map_gram += _map_gram(maps, real)
                out_gram += _output_gram(layers, captured, real)
        finally:
            for hook in hooks:
                hook.remove()
    labels = [(i, h) for i, count in enumerate(counts) for h in range(count)]
    per_head = {key: [(v / tokens).float() for v in values] for key, values in sums.items()}
    return HeadStatistics(
        **per_head,
        map_similarity=_cosine(map_gram),
        output_similarity=_cosine(out_gram),
        heads=labels,
        num_tokens=tokens,
    )


_PER_HEAD = ("entropy", "distance", "cls_share", "sep_share", "pad_share", "sink_share", "self_share")


def _accumulate_maps(weights: Tensor, real: Tensor, sums: dict[str, Tensor], sink_tokens: int) -> None:
    """Add one layer's per-head sums over real query rows.

    Shape:
        weights (b, H, L, L), real (b, L) -> each sum (H,).
    """
    length = weights.shape[-1]
    rows = real[:, None, :, None].to(weights.dtype)  # (b, 1, L, 1): real queries only
    positions = torch.arange(length, device=weights.device)
    gap = (positions[:, None] - positions[None, :]).abs().to(weights.dtype)  # (L, L)
    last = real.sum(dim=1) - 1  # (b,) position of the last real token
    sep = torch.nn.functional.one_hot(last, length).to(weights.dtype)  # (b, L)
    pad = (~real).to(weights.dtype)  # (b, L)
    plogp = torch.special.xlogy(weights, weights)  # (b, H, L, L), 0 log 0 = 0
    sums["entropy"] -= (plogp * rows).sum(dim=(0, 2, 3))
    sums["distance"] += (weights * gap * rows).sum(dim=(0, 2, 3))
    sums["cls_share"] += (weights[..., 0:1] * rows).sum(dim=(0, 2, 3))
    sums["sep_share"] += (weights * sep[:, None, None, :] * rows).sum(dim=(0, 2, 3))
    sums["pad_share"] += (weights * pad[:, None, None, :] * rows).sum(dim=(0, 2, 3))
    sums["sink_share"] += (weights[..., :sink_tokens] * rows).sum(dim=(0, 2, 3))
    sums["self_share"] += (weights.diagonal(dim1=-2, dim2=-1)[..., None] * rows).sum(dim=(0, 2, 3))


def _map_gram(maps: Sequence[Tensor], real: Tensor) -> Tensor:
    """Sum over texts of the dot products of every pair of heads' maps (real rows and columns).

    Shape:
        maps[l] (b, H_l, L, L), real (b, L) -> (N, N).
    """
    grams = []
    for sample in range(real.shape[0]):
        n = int(real[sample].sum())
        flat = torch.cat([m[sample, :, :n, :n].reshape(m.shape[1], -1) for m in maps]).double()  # (N, n*n)
        grams.append(flat @ flat.T)  # (N, N)
    return torch.stack(grams).sum(dim=0)


def _output_gram(layers: Sequence[nn.Module], captured: Sequence[Tensor], real: Tensor) -> Tensor:
    """Sum over real tokens of the dot products of every pair of heads' residual contributions.

    Shape:
        captured[l] (b, L, H_l*D), real (b, L) -> (N, N).
    """
    contributions = []
    for layer, heads_out in zip(layers, captured, strict=True):
        x = heads_out[real].view(-1, layer.num_heads, layer.head_dim)  # (n, H, D)
        w = layer.out_proj.weight.view(-1, layer.num_heads, layer.head_dim)  # (E, H, D)
        contributions.append(torch.einsum("nhd,ehd->nhe", x, w))  # (n, H, E)
    total = sum(c.shape[1] for c in contributions)
    gram = torch.zeros(total, total, dtype=torch.float64, device=real.device)
    for start in range(0, contributions[0].shape[0], _CHUNK):
        chunk = torch.cat([c[start : start + _CHUNK] for c in contributions], dim=1).double()  # (c, N, E)
        gram += torch.einsum("che,cke->hk", chunk, chunk)  # (N, N)
    return gram


def _cosine(gram: Tensor) -> Tensor:
    """Cosine similarities from a Gram matrix.

    Shape:
        (N, N) -> (N, N).
    """
    norms = gram.diagonal().clamp_min(1e-300).sqrt()  # (N,)
    return (gram / norms[:, None] / norms[None, :]).float()
