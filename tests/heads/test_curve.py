"""The pruning curve: agreement, random orders, masked curves, importance against random."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from headwise.heads import (
    Agreement,
    PruneConfig,
    agreement,
    masked_curve,
    prune_heads_,
    pruning_curve,
    random_order,
)
from headwise.texts import doc_sentences

CALIBRATION = doc_sentences()[30:36]
EVALUATION = doc_sentences()[36:44]


@pytest.fixture(scope="module")
def minilm():
    import headwise.models as hm

    return hm.load()


@pytest.fixture(scope="module")
def minilm64():
    """For identities (pruning equals masking): float64, as float32 rounding differs between processors."""
    import headwise.models as hm

    return hm.load(dtype=torch.float64)


def test_agreement_of_identical_and_changed_embeddings():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(10, 16), dim=1)
    same = agreement(a, a.clone())
    assert same.cosine == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)
    flipped = agreement(a, -a)  # every cosine -1, and pairwise similarities keep their ranks
    assert flipped.cosine == pytest.approx(-1.0) and flipped.spearman == pytest.approx(1.0)
    noisy = agreement(a, a + 0.5 * torch.randn(10, 16))
    assert 0 < noisy.cosine < 1 and noisy.spearman < 1
    with pytest.raises(ValueError, match=r"two \(N, E\) embeddings of the same N >= 3 texts, got \(10, 16\) and \(9, 16\)"):
        agreement(a, a[:9])


def test_random_order_keeps_min_heads_and_depends_on_seed():
    order = random_order([4, 2, 3], seed=1)
    assert len(order) == 3 + 1 + 2 and len(set(order)) == len(order)
    for layer, count in enumerate([4, 2, 3]):
        assert sum(1 for where, _ in order if where == layer) == count - 1
    assert random_order([4, 2, 3], seed=1) == order and random_order([4, 2, 3], seed=2) != order
    assert len(random_order([4, 2, 3], seed=1, min_heads=2)) == 2 + 0 + 1


def test_masked_curve_equals_pruning(minilm64):
    minilm = minilm64
    order = [(0, 3), (5, 1), (5, 2)]
    texts = EVALUATION[:3]
    results = masked_curve(minilm, order, lambda m: m.encode(texts), [0, 1, 3])
    torch.testing.assert_close(results[0], minilm.encode(texts))
    pruned = copy.deepcopy(minilm)
    prune_heads_(pruned, {0: [3], 5: [1, 2]})
    torch.testing.assert_close(results[2], pruned.encode(texts), atol=1e-10, rtol=0)
    assert all(bool((layer.head_gate == 1).all()) for layer in minilm.attention_layers)  # model untouched
    with pytest.raises(ValueError, match=r"counts must be ascending within \[0, 3\]"):
        masked_curve(minilm, order, lambda m: 0, [2, 1])


def test_pruning_curve_on_minilm(minilm):
    seen = []
    curve = pruning_curve(
        minilm, CALIBRATION, EVALUATION, fractions=[0.0, 0.1, 0.3], config=PruneConfig(remove=0, step=4, probes=1),
        seeds=2, on_point=lambda kind, k, model: seen.append((kind, k, sum(model.num_heads))),
    )
    assert curve.total_heads == 72 and curve.removed == (0, 7, 22)
    assert curve.importance[0] == Agreement(cosine=pytest.approx(1.0, abs=1e-5), spearman=pytest.approx(1.0, abs=1e-5))
    assert len(curve.random) == 2 and all(len(seed) == 3 for seed in curve.random)
    assert curve.importance[2].cosine < curve.importance[1].cosine < 1.0
    # importance pruning shrinks the copy; the random baseline only silences heads
    assert seen[:3] == [("importance", 0, 72), ("importance", 7, 65), ("importance", 22, 50)]
    assert [(kind, k) for kind, k, _ in seen[3:]] == [("random", k) for _ in range(2) for k in (0, 7, 22)]
    mean, std = curve.random_mean(), curve.random_std()
    assert mean[0] == pytest.approx(1.0, abs=1e-5) and std[0] == pytest.approx(0.0, abs=1e-5)
    assert mean[2] == pytest.approx(sum(seed[2].cosine for seed in curve.random) / 2)
    assert json.loads(json.dumps(curve.to_dict()))["removed"] == [0, 7, 22]
    assert sum(minilm.num_heads) == 72  # the model is not changed


def test_pruning_curve_errors(minilm):
    with pytest.raises(ValueError, match=r"fractions must be ascending shares of the heads in \[0, 1\), got \[0.5, 0.1\]"):
        pruning_curve(minilm, CALIBRATION, EVALUATION, fractions=[0.5, 0.1])
    with pytest.raises(ValueError, match=r"fraction 0.95 would remove 68 of 72 heads, but only 66 can go"):
        pruning_curve(minilm, CALIBRATION, EVALUATION, fractions=[0.95])
    with pytest.raises(ValueError, match=r"evaluation needs at least 3 texts"):
        pruning_curve(minilm, CALIBRATION, EVALUATION[:2], fractions=[0.1])
    with pytest.raises(ValueError, match=r"seeds must be a positive int, got 0"):
        pruning_curve(minilm, CALIBRATION, EVALUATION, fractions=[0.1], seeds=0)
    with pytest.raises(ValueError, match=r"field must be 'cosine' or 'spearman'"):
        pruning_curve(minilm, CALIBRATION, EVALUATION, fractions=[0.0], seeds=1).random_mean("probe")
