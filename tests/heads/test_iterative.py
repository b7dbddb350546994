"""prune_by_importance_ and PruneConfig."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from headwise.heads import PruneConfig, fisher_importance, prune_by_importance_
from headwise.heads._iterative import _lowest
from headwise.texts import doc_sentences

TEXTS = doc_sentences()[20:24]


@pytest.fixture(scope="module")
def minilm():
    import headwise.models as hm

    return hm.load()


@pytest.fixture(scope="module")
def minilm64():
    """For identities (pruning equals masking): float64, as float32 rounding differs between processors."""
    import headwise.models as hm

    return hm.load(dtype=torch.float64)


def test_config_round_trips_and_validates():
    config = PruneConfig(remove=10, step=3, normalize=True)
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["version"] == 1
    with pytest.raises(ValueError, match=r"PruneConfig.step must be an int >= 1, got 0"):
        PruneConfig(remove=1, step=0)
    with pytest.raises(ValueError, match=r"PruneConfig.remove must be an int >= 0, got -1"):
        PruneConfig(remove=-1)
    with pytest.raises(ValueError, match=r"PruneConfig.method must be one of \('fisher', 'ablation', 'gradient'\), got 'taylor'"):
        PruneConfig(remove=1, method="taylor")
    with pytest.raises(TypeError, match=r"PruneConfig.normalize must be a bool, got 1"):
        PruneConfig(remove=1, normalize=1)
    with pytest.raises(ValueError, match=r"PruneConfig version 2 is not supported"):
        PruneConfig(remove=1, version=2)
    with pytest.raises(ValueError, match=r"unknown PruneConfig keys \['fraction'\]"):
        PruneConfig.from_dict({"remove": 1, "fraction": 0.5})


def test_lowest_respects_the_floor():
    scores = [torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.05, 5.0]), torch.tensor([0.3])]
    assert _lowest(scores, 3, 1) == {1: [0], 0: [0, 1]}
    assert _lowest(scores, 1, 2) == {0: [0]}


def test_first_step_removes_the_least_important_heads(minilm):
    model = copy.deepcopy(minilm)
    scores = torch.cat(fisher_importance(model, TEXTS, probes=2, seed=0))
    removed = prune_by_importance_(model, TEXTS, PruneConfig(remove=3, step=3, probes=2))
    expected = {(int(i) // 12, int(i) % 12) for i in scores.argsort()[:3]}
    assert set(removed) == expected
    assert sum(model.num_heads) == 69


def test_iterative_pruning_keeps_track_of_original_indices(minilm64):
    minilm = minilm64
    model = copy.deepcopy(minilm)
    removed = prune_by_importance_(model, TEXTS, PruneConfig(remove=7, step=2, probes=1, min_heads=10))
    assert len(removed) == len(set(removed)) == 7
    assert all(count >= 10 for count in model.num_heads) and sum(model.num_heads) == 65
    # the kept heads are the unpruned model's heads minus the removed ones: masking them is the same model
    masked = copy.deepcopy(minilm)
    with torch.no_grad():
        for layer, head in removed:
            masked.attention_layers[layer].head_gate[head] = 0.0
    torch.testing.assert_close(model.encode(TEXTS), masked.encode(TEXTS), rtol=0, atol=1e-10)


def test_ablation_method(minilm):
    model = copy.deepcopy(minilm)
    removed = prune_by_importance_(model, TEXTS[:2], PruneConfig(remove=1, method="ablation"))
    assert len(removed) == 1 and sum(model.num_heads) == 71


def test_bad_requests_leave_the_model_unchanged(minilm):
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    with pytest.raises(ValueError, match=r"PruneConfig.remove=67 but only 66 heads can go while every layer keeps min_heads=1"):
        prune_by_importance_(minilm, TEXTS, PruneConfig(remove=67))
    with pytest.raises(TypeError, match=r"config must be a PruneConfig, got dict"):
        prune_by_importance_(minilm, TEXTS, {"remove": 1})
    with pytest.raises(ValueError, match=r"texts is empty"):
        prune_by_importance_(minilm, [], PruneConfig(remove=1))
    assert all(torch.equal(before[k], v) for k, v in minilm.state_dict().items())


def test_grouped_query_decoder_prunes_query_heads_and_equals_masking():
    """A grouped-query causal LM: single query heads go, kv heads stay while a query head reads them."""
    from tests.parallel._checks import _tiny_causal_lm

    unpruned = _tiny_causal_lm(2)  # float64, 2 layers of 4 query heads over 2 kv heads
    model = copy.deepcopy(unpruned)
    texts = ["The cat sat on the mat.", "def f(x): return x + 1", "Attention is all you need."]
    removed = prune_by_importance_(model, texts, PruneConfig(remove=3, step=1, probes=1))
    assert len(set(removed)) == 3 and sum(model.num_heads) == 5
    masked = copy.deepcopy(unpruned)
    with torch.no_grad():
        for layer, head in removed:
            masked.attention_layers[layer].head_gate[head] = 0.0
    features = model.tokenize(texts)
    torch.testing.assert_close(model(**features)[0], masked(**features)[0], rtol=0, atol=1e-10)
