"""head_statistics: values against a direct computation on kept maps, padding, clusters."""

from __future__ import annotations

import math

import pytest
import torch

from headwise.heads import HeadStatistics, head_statistics
from headwise.texts import doc_sentences

TEXTS = [doc_sentences()[0], "Short one.", doc_sentences()[3], "Another short text here."]


@pytest.fixture(scope="module")
def minilm():
    """float64: the statistics are checked as identities against a direct computation."""
    import headwise.models as hm

    return hm.load(dtype=torch.float64)


@pytest.fixture(scope="module")
def stats(minilm):
    return head_statistics(minilm, TEXTS, batch_size=3)  # batches of 3 and 1: accumulation across batches


def test_statistics_match_a_direct_computation(minilm, stats):
    entropy, distance, cls, sep = (torch.zeros(6, 12, dtype=torch.float64) for _ in range(4))
    count = 0
    flat_maps = [[] for _ in range(72)]
    for text in TEXTS:  # one text at a time: no padding at all
        features = minilm.tokenize([text])
        with torch.no_grad():
            _, maps = minilm(**features, output_attentions=True)
        n = features["input_ids"].shape[1]
        count += n
        gap = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
        for layer, m in enumerate(maps):
            p = m[0].double()  # (H, n, n)
            entropy[layer] += -(p * p.clamp_min(1e-300).log()).sum(dim=(1, 2))
            distance[layer] += (p * gap).sum(dim=(1, 2))
            cls[layer] += p[:, :, 0].sum(dim=1)
            sep[layer] += p[:, :, n - 1].sum(dim=1)
            for h in range(12):
                flat_maps[layer * 12 + h].append(p[h].reshape(-1))
    assert stats.num_tokens == count
    for name, expected in (("entropy", entropy), ("distance", distance), ("cls_share", cls), ("sep_share", sep)):
        got = torch.stack(getattr(stats, name)).double()
        # the statistics are returned in float32: one rounding of each value
        torch.testing.assert_close(got, expected / count, rtol=2**-23, atol=1e-12)
    flat = torch.stack([torch.cat(v) for v in flat_maps])  # (72, all entries)
    cosine = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(flat, dim=1).T
    torch.testing.assert_close(stats.map_similarity.double(), cosine, rtol=2**-23, atol=1e-12)


def test_padding_gets_no_attention_and_values_are_in_range(stats):
    assert stats.heads[:2] == [(0, 0), (0, 1)] and len(stats.heads) == 72
    assert all(torch.equal(p, torch.zeros(12)) for p in stats.pad_share)
    shares = torch.stack(stats.cls_share) + torch.stack(stats.sep_share)
    assert (shares >= 0).all() and (shares <= 1 + 1e-5).all()
    assert (torch.stack(stats.entropy) >= 0).all() and (torch.stack(stats.entropy) <= math.log(200)).all()
    for sim in (stats.map_similarity, stats.output_similarity):
        assert sim.shape == (72, 72)
        torch.testing.assert_close(sim.diagonal(), torch.ones(72))
        torch.testing.assert_close(sim, sim.T)


def test_output_similarity_sees_a_duplicated_head(minilm):
    import copy

    model = copy.deepcopy(minilm)
    layer = model.attention_layers[3]
    with torch.no_grad():  # head 1 becomes a scaled copy of head 0
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            proj.weight[32:64] = proj.weight[0:32]
            proj.bias[32:64] = proj.bias[0:32]
        layer.out_proj.weight[:, 32:64] = 0.5 * layer.out_proj.weight[:, 0:32]
    stats = head_statistics(model, TEXTS)
    assert stats.output_similarity[36, 37] > 0.999 and stats.map_similarity[36, 37] > 0.999
    clusters = stats.redundant_clusters(threshold=0.999)
    assert [(3, 0), (3, 1)] in clusters


def test_clusters():
    sim = torch.tensor([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.95, 0.0], [0.1, 0.95, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    stats = HeadStatistics([], [], [], [], [], sim, sim, [(0, 0), (0, 1), (1, 0), (1, 1)], 1)
    assert stats.redundant_clusters(threshold=0.85) == [[(0, 0), (0, 1), (1, 0)]]  # single linkage chains
    assert stats.redundant_clusters(threshold=0.92, kind="map") == [[(0, 1), (1, 0)]]
    with pytest.raises(ValueError, match=r"kind must be 'output' or 'map', got 'maps'"):
        stats.redundant_clusters(threshold=0.5, kind="maps")
    with pytest.raises(ValueError, match=r"threshold must be a cosine similarity in \(-1, 1\], got 2"):
        stats.redundant_clusters(threshold=2)


def test_most_similar():
    sim = torch.tensor([[1.0, 0.9, 0.1, 0.05], [0.9, 1.0, 0.95, 0.01], [0.1, 0.95, 1.0, -0.2], [0.05, 0.01, -0.2, 1.0]])
    stats = HeadStatistics([], [], [], [], [], sim, -sim, [(0, 0), (0, 1), (1, 0), (1, 1)], 1)
    pairs = stats.most_similar(3)  # output similarity is -sim here
    assert [(a, b) for a, b, _ in pairs] == [((1, 0), (1, 1)), ((0, 1), (1, 1)), ((0, 0), (1, 1))]
    assert pairs[0][2] == pytest.approx(0.2)
    assert stats.most_similar(1, kind="map") == [((0, 1), (1, 0), pytest.approx(0.95))]
    assert len(stats.most_similar(100, kind="map")) == 6  # every pair of distinct heads, no more
    with pytest.raises(ValueError, match=r"count must be a positive int, got 0"):
        stats.most_similar(0)


def test_empty_texts(minilm):
    with pytest.raises(ValueError, match=r"texts is empty"):
        head_statistics(minilm, [])


def test_causal_model_statistics_sinks_and_self_attention():
    """A decoder: only allowed keys carry weight; sink (first tokens) and current-token shares, float64."""
    from tests.parallel._checks import _tiny_causal_lm

    model = _tiny_causal_lm(2)  # a random float64 Llama with a byte-level tokenizer
    texts = ["The cat sat on the mat.", "A dog.", "Attention sinks hold the first token."]
    stats = head_statistics(model, texts, batch_size=2, sink_tokens=2)
    sums = {name: torch.zeros(2, 4, dtype=torch.float64) for name in ("cls", "sink", "self", "entropy", "distance")}
    count = 0
    for text in texts:  # one text at a time: no padding at all
        features = model.tokenize([text])
        with torch.no_grad():
            _, maps = model(**features, output_attentions=True)
        n = features["input_ids"].shape[1]
        count += n
        gap = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
        for layer, m in enumerate(maps):
            p = m[0]  # (H, n, n)
            assert torch.equal(p.triu(1), torch.zeros_like(p))  # a causal model: no weight on the future
            sums["cls"][layer] += p[:, :, 0].sum(1)
            sums["sink"][layer] += p[:, :, :2].sum((1, 2))
            sums["self"][layer] += p.diagonal(dim1=-2, dim2=-1).sum(1)
            sums["entropy"][layer] += -(p * p.clamp_min(1e-300).log()).sum((1, 2))
            sums["distance"][layer] += (p * gap).sum((1, 2))
    assert stats.num_tokens == count
    for name, got in (
        ("cls", stats.cls_share), ("sink", stats.sink_share), ("self", stats.self_share),
        ("entropy", stats.entropy), ("distance", stats.distance),
    ):
        torch.testing.assert_close(torch.stack(got).double(), sums[name] / count, rtol=2**-23, atol=1e-12)
    assert all(float(s.max()) == 0 for s in stats.pad_share)
    with pytest.raises(ValueError, match="sink_tokens must be a positive int, got 0"):
        head_statistics(model, texts, sink_tokens=0)
