"""Importance scores on the real MiniLM: Fisher agrees with ablation; scoring never changes the model."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import headwise
from headwise.heads import (
    ablation_importance,
    fisher_importance,
    gradient_importance,
    head_statistics,
    normalize_per_layer,
)
from headwise.texts import doc_sentences

TEXTS = [s for s in doc_sentences() if len(s) < 110][:8]  # short: ablation runs 72 passes


@pytest.fixture(scope="module")
def minilm():
    import headwise.models as hm

    return hm.load()


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def _assert_same(model, before):
    state, flags, modes = _state(model)
    assert all(torch.equal(before[0][k], v) for k, v in state.items())
    assert flags == before[1] and modes == before[2]
    assert all(p.grad is None for p in model.parameters())


def _rank(x):
    return x.argsort().argsort().double()


def _spearman(a, b):
    return torch.corrcoef(torch.stack([_rank(a), _rank(b)]))[0, 1].item()


def test_fisher_agrees_with_ablation(minilm):
    fisher = torch.cat(fisher_importance(minilm, TEXTS, probes=16))
    ablation = torch.cat(ablation_importance(minilm, TEXTS))
    assert fisher.shape == ablation.shape == (72,)
    assert _spearman(fisher, ablation) > 0.7
    # same scale: both estimate ½ E||Δe||² of removing one head
    assert 0.3 < (fisher.sum() / ablation.sum()).item() < 3.0


def test_first_order_score_of_self_distillation_is_zero(minilm):
    """Why fisher_importance exists: at the unpruned model the distillation loss is at its minimum."""
    reference = minilm.encode(TEXTS)
    labels = torch.arange(len(TEXTS))
    scores = gradient_importance(
        minilm, TEXTS, labels, loss_fn=lambda e, idx: 0.5 * (e - reference[idx]).square().sum(dim=1).mean()
    )
    assert max(s.abs().max().item() for s in scores) < 1e-6


def test_gradient_importance_with_a_task_loss(minilm):
    probe = torch.nn.Linear(384, 2)
    labels = torch.tensor([0, 1] * 4)
    scores = gradient_importance(minilm, TEXTS, labels, loss_fn=lambda e, y: F.cross_entropy(probe(e), y), batch_size=3)
    assert [s.shape for s in scores] == [(12,)] * 6
    assert all((s >= 0).all() for s in scores) and sum(s.sum() for s in scores) > 0


def test_scoring_leaves_the_model_unchanged(minilm):
    minilm.train()
    minilm.attention_layers[1].head_gate.requires_grad_(True)
    with torch.no_grad():
        minilm.attention_layers[2].head_gate[3] = 0.5
    before = _state(minilm)
    try:
        fisher_importance(minilm, TEXTS[:2], probes=1)
        _assert_same(minilm, before)
        ablation_importance(minilm, TEXTS[:2])
        _assert_same(minilm, before)
        head_statistics(minilm, TEXTS[:2])
        _assert_same(minilm, before)

        def failing(e, y):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            gradient_importance(minilm, TEXTS[:2], torch.zeros(2), loss_fn=failing)
        _assert_same(minilm, before)
    finally:
        minilm.eval()
        minilm.attention_layers[1].head_gate.requires_grad_(False)
        with torch.no_grad():
            minilm.attention_layers[2].head_gate[3] = 1.0


def test_normalize_per_layer():
    scores = normalize_per_layer([torch.tensor([3.0, 4.0]), torch.zeros(3)])
    torch.testing.assert_close(scores[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(scores[1], torch.zeros(3))


def test_long_texts_are_truncated_and_said_so(minilm, caplog):
    long_text = " ".join(doc_sentences()[:40])
    with caplog.at_level(logging.WARNING, logger="headwise.heads"):
        fisher_importance(minilm, [long_text, TEXTS[0]], probes=1)
    assert "1 of 2 texts are longer than the model's 256 tokens and were truncated" in caplog.text


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: fisher_importance(m, []), ValueError, r"texts is empty; scoring heads needs at least one text"),
        (lambda m: fisher_importance(m, "a text"), TypeError, r"texts must be a sequence of str, got str"),
        (lambda m: ablation_importance(m, ["ok", 3]), TypeError, r"texts\[1\] is a int, not a str"),
        (lambda m: fisher_importance(m, ["ok"], probes=0), ValueError, r"probes must be a positive int, got 0"),
        (lambda m: fisher_importance(m, ["ok"], batch_size=0), ValueError, r"batch_size must be a positive int"),
        (
            lambda m: gradient_importance(m, ["a", "b"], torch.zeros(3), loss_fn=F.mse_loss),
            ValueError,
            r"labels must be a tensor with one row per text \(2\), got \(3,\)",
        ),
        (
            lambda m: gradient_importance(m, ["a"], torch.zeros(1), loss_fn=lambda e, y: e.sum(dim=1)),
            ValueError,
            r"the loss must be a scalar tensor",
        ),
    ],
)
def test_bad_input(minilm, call, error, match):
    before = _state(minilm)
    with pytest.raises(error, match=match):
        call(minilm)
    _assert_same(minilm, before)


def test_models_that_cannot_be_scored():
    with pytest.raises(TypeError, match=r"Attention is not a model headwise.heads can score on texts: it has no "
                       r"attention_layers, tokenize, outputs, output_kind, causal"):
        fisher_importance(headwise.Attention(8, 2), ["a"])

    class Holder(torch.nn.Module):
        output_kind, causal = "vectors", False

        def __init__(self):
            super().__init__()
            self.attn = headwise.MultiheadAttention(8, 2)

        @property
        def attention_layers(self):
            return [self.attn]

        def tokenize(self, texts):
            return {}

        def outputs(self, features):
            return torch.zeros(1)

    with pytest.raises(TypeError, match=r"scoring needs headwise.Attention layers.*'attn', a MultiheadAttention"):
        fisher_importance(Holder(), ["a"])
