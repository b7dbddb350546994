"""Heads of a grouped-query causal LM: kv-group importance, group pruning, perplexity curves, windows with sinks.

The model is a small random Llama in float64 with a byte-level tokenizer (2 layers, 4 query
heads over 2 kv heads), so every identity here is exact to rounding; the real decoder's
figures come from examples/prune_smollm2.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from headwise.heads import (
    PruneConfig,
    ablation_importance,
    fisher_importance,
    gradient_importance,
    perplexity_curve,
    prune_by_importance_,
    random_order,
)
from headwise.variants import SlidingWindow, WindowCache, use_variant_
from tests.parallel._checks import _tiny_causal_lm

TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "def add(a, b):\n    return a + b\n",
    "Attention is all you need, they said; then came the heads.",
    "A kv group is a key/value head and the query heads that read it.",
]
HELD_APART = ["Pruning removes heads; perplexity says what it cost.", "Sinks hold the attention of a window."]


@pytest.fixture(scope="module")
def model():
    return _tiny_causal_lm(2)


def _mask(model, heads):
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            masked.attention_layers[layer].head_gate[head] = 0.0
    return masked


def test_group_gradient_importance_is_the_summed_gate_gradient(model):
    scores = gradient_importance(model, TEXTS, batch_size=len(TEXTS), granularity="groups")
    gates = [layer.head_gate for layer in model.attention_layers]
    for gate in gates:
        gate.requires_grad_(True)
    try:
        grads = torch.autograd.grad(model.loss(model.tokenize(TEXTS)), gates)
    finally:
        for gate in gates:
            gate.requires_grad_(False)
    for layer_scores, grad in zip(scores, grads, strict=True):
        assert layer_scores.shape == (2,)
        expected = torch.stack([grad[0:2].sum(), grad[2:4].sum()]).abs()  # heads 0, 1 read kv head 0
        torch.testing.assert_close(layer_scores, expected, rtol=1e-10, atol=1e-14)


def test_group_ablation_silences_the_whole_group(model):
    scores = ablation_importance(model, TEXTS[:2], granularity="groups")
    features = model.tokenize(TEXTS[:2])
    reference = model.outputs(features)
    with torch.no_grad():
        silenced = _mask(model, [(1, 2), (1, 3)]).outputs(features)  # layer 1, kv group 1
    expected = (reference.exp() * (reference - silenced)).sum() / reference.shape[0]
    torch.testing.assert_close(scores[1][1], expected, rtol=1e-10, atol=1e-14)
    assert all(s.shape == (2,) for s in scores)


def test_groups_of_one_head_score_as_heads():
    """Without grouping (K = H) a group is a head: both granularities give the same scores."""
    mha = _tiny_causal_lm(2, num_heads=2)
    for layer in mha.attention_layers:
        assert layer.num_heads == layer.num_kv_heads == 2
    for score in (
        lambda g: fisher_importance(mha, TEXTS[:2], probes=2, seed=3, granularity=g),
        lambda g: gradient_importance(mha, TEXTS[:2], granularity=g),
        lambda g: ablation_importance(mha, TEXTS[:2], granularity=g),
    ):
        for h, g in zip(score("heads"), score("groups"), strict=True):
            torch.testing.assert_close(g, h, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"granularity must be one of \('heads', 'groups'\)"):
        fisher_importance(mha, TEXTS[:2], granularity="kv")


def test_pruning_whole_groups_equals_masking_and_shrinks_the_cache(model):
    pruned = copy.deepcopy(model)
    removed = prune_by_importance_(pruned, TEXTS, PruneConfig(remove=1, probes=1, granularity="groups"))
    (layer, group), = removed
    assert [a.num_kv_heads for a in pruned.attention_layers] == [1 if i == layer else 2 for i in range(2)]
    assert sum(pruned.num_heads) == 6
    masked = _mask(model, [(layer, h) for h in (2 * group, 2 * group + 1)])
    features = model.tokenize(HELD_APART)
    torch.testing.assert_close(pruned(**features)[0], masked(**features)[0], rtol=0, atol=1e-10)
    cache = pruned.network.new_caches(1, 8)
    assert cache[layer].keys.shape[1] == 1  # (B, K, S, D): the removed group's kv head is gone
    with pytest.raises(ValueError, match=r"only 2 kv groups can go while every layer keeps min_heads=1"):
        prune_by_importance_(copy.deepcopy(model), TEXTS, PruneConfig(remove=3, granularity="groups"))


def test_perplexity_curve_points_are_the_masked_and_pruned_models(model):
    seen = []
    curve = perplexity_curve(
        model, TEXTS, HELD_APART, fractions=[0.0, 0.25, 0.5], seeds=2,
        config=PruneConfig(remove=0, probes=1), on_point=lambda kind, k, m: seen.append((kind, k)),
    )
    unpruned = model.perplexity(HELD_APART).value
    assert curve.removed == (0, 2, 4) and curve.total_heads == 8
    assert curve.importance[0] == pytest.approx(unpruned, rel=1e-12)
    for seed, values in enumerate(curve.random):
        order = random_order([4, 4], seed)
        assert values[0] == pytest.approx(unpruned, rel=1e-12)
        assert values[2] == pytest.approx(_mask(model, order[:4]).perplexity(HELD_APART).value, rel=1e-12)
    assert len(curve.random_mean()) == 3
    assert seen.count(("importance", 4)) == 1 and seen.count(("random", 2)) == 2

    groups = perplexity_curve(model, TEXTS, HELD_APART, fractions=[0.0, 0.25], seeds=1, granularity="groups",
                              config=PruneConfig(remove=0, probes=1))
    assert groups.removed == (0, 2) and groups.granularity == "groups"  # one group of 2 heads out of 4 groups
    import headwise.models

    with pytest.raises(TypeError, match=r"SentenceEncoder has no perplexity \(for a sentence encoder use pruning_curve\)"):
        perplexity_curve(headwise.models.load(), TEXTS, HELD_APART, fractions=[0.0])


def test_window_with_sinks_decodes_as_one_windowed_pass():
    """Token by token through WindowCache equals one causal windowed pass with the first tokens global."""
    model = _tiny_causal_lm(2)
    use_variant_(model.network, SlidingWindow(4, 0, global_tokens=[0, 1]))
    ids = model.tokenize(["Streaming with attention sinks keeps the first tokens in cache."])["input_ids"][:, :60]
    with torch.inference_mode():
        full, _ = model.network(ids)  # (1, 24, V)
        caches = model.network.new_caches(1, ids.shape[1])
        assert isinstance(caches[0], WindowCache)
        steps = [model.network(ids[:, t : t + 1], caches=caches)[0] for t in range(ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
    # its buffers hold the sinks, two windows and a margin (2 + 2 * 5 + 16 rows), not all 60 positions
    assert caches[0].keys.shape[2] == 28 and caches[0].held <= 28


def test_streaming_perplexity_equals_one_pass_of_each_attention():
    import math

    import torch.nn.functional as F

    from headwise.report import streaming_perplexity

    model = _tiny_causal_lm(2)
    text = "Sinks keep the first tokens; windows keep the last ones."  # 56 tokens, within the 64 positions
    ids = model.tokenize([text])["input_ids"]  # byte-level: one token per byte
    rows = streaming_perplexity(model, text, windows=[8], sinks=[0, 2], score_from=20, chunk=5)
    assert [r.attention for r in rows] == ["dense", "window 8", "window 8 + 2 sinks"]
    for row in rows:
        use_variant_(model.network, None if row.window is None else SlidingWindow(row.window, 0, global_tokens=list(range(row.sinks))))
        with torch.inference_mode():
            logits, _ = model.network(ids)  # (1, L, V): one pass over the whole text
        use_variant_(model.network, None)
        loss = F.cross_entropy(logits[0, 20:-1], ids[0, 21:])
        assert row.tokens == ids.shape[1] - 21
        assert row.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-9)
    assert rows[1].cache_bytes < rows[0].cache_bytes  # the window's cache does not grow with the text
    assert all(layer.variant is None for layer in model.attention_layers)
    with pytest.raises(ValueError, match=r"the text has \d+ tokens, but scoring starts at position 5000"):
        streaming_perplexity(model, text, windows=[8], score_from=5000)


def test_gradient_method_removes_the_lowest_gate_gradients(model):
    scores = gradient_importance(model, TEXTS, batch_size=32)
    flat = sorted((float(s), layer, head) for layer, v in enumerate(scores) for head, s in enumerate(v))
    pruned = copy.deepcopy(model)
    removed = prune_by_importance_(pruned, TEXTS, PruneConfig(remove=2, step=2, method="gradient"))
    assert set(removed) == {(layer, head) for _, layer, head in flat[:2]}
