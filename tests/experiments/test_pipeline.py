"""Training, the results cache and the whole pipeline at tiny scale: deterministic, resumable, well formed."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from headwise.experiments import (
    CLAIMS,
    STATUSES,
    ByteLM,
    ModelConfig,
    ResultsCache,
    RunConfig,
    SuiteConfig,
    planned_runs,
    run_experiments,
    suite_config,
    train,
)
from headwise.experiments._data import corpus
from headwise.heads import HeadModel, prune_heads_
from headwise.texts import doc_topics

TINY = RunConfig(
    model=ModelConfig(embed_dim=16, num_layers=1, num_heads=2, max_length=16),
    steps=6, batch_size=2, lr=1e-2, warmup=1, eval_every=3, eval_windows=2,
)


def _numbers(record) -> dict:
    data = record.to_dict()
    del data["seconds"]
    return data


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums in every run of a test
    yield
    torch.set_num_threads(threads)


def test_a_run_is_deterministic_with_its_seed():
    first, model = train(TINY)
    again, _ = train(TINY)
    assert _numbers(first) == _numbers(again)
    assert first.seed == 0 and first.config["seed"] == 0 and first.key == TINY.key()
    assert first.steps == [3, 6] and len(first.val_loss) == len(first.entropy) == 2
    other, _ = train(replace(TINY, seed=1))
    assert other.val_loss != first.val_loss and other.key != first.key
    assert not model.training


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_training_lowers_the_loss_from_a_uniform_guess():
    record, _ = train(replace(TINY, steps=30, eval_every=30, batch_size=4))
    assert record.val_loss[-1] < torch.log(torch.tensor(256.0)).item()  # learned something about bytes
    assert all(g > 0 for g in record.grad_norm) and not record.diverged


def test_the_split_is_by_whole_topics():
    text = corpus()
    assert set(text.train_topics).isdisjoint(text.validation_topics)
    names = list(doc_topics())
    assert text.validation_topics == tuple(names[2::5])  # every fifth topic, from the third
    assert sorted(text.train_topics + text.validation_topics) == names
    assert text.train.dtype == torch.int64 and int(text.train.max()) < 256


def test_byte_lm_is_a_head_model_and_pruning_equals_masking():
    torch.manual_seed(0)
    model = ByteLM(ModelConfig(embed_dim=16, num_layers=2, num_heads=4, max_length=32)).double().eval()
    assert isinstance(model, HeadModel)
    features = model.tokenize(["The cat sat on the mat.", "A dog."])
    assert features["attention_mask"].sum(dim=1).tolist() == [23, 6]
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.attention_layers[0].head_gate[[1, 3]] = 0.0
        masked.attention_layers[1].head_gate[0] = 0.0
    prune_heads_(model, {0: [1, 3], 1: [0]})
    assert [layer.num_heads for layer in model.attention_layers] == [2, 3]
    torch.testing.assert_close(model.outputs(features), masked.outputs(features), rtol=0, atol=1e-10)


def test_cache_round_trip(tmp_path):
    cache = ResultsCache(tmp_path)
    assert cache.get(TINY) is None
    record, model = train(TINY)
    cache.put(record, model)
    assert _numbers(cache.get(TINY, weights=True)) == _numbers(record)
    loaded = cache.model(TINY)
    batch = corpus().validation[:17][None]  # (1, 17)
    torch.testing.assert_close(loaded.next_byte_loss(batch), model.next_byte_loss(batch), rtol=0, atol=0)
    cache.put(*train(replace(TINY, seed=1))[:1])
    assert cache.get(replace(TINY, seed=1)) is not None and cache.get(replace(TINY, seed=1), weights=True) is None
    with pytest.raises(FileNotFoundError, match="cached without its weights"):
        cache.model(replace(TINY, seed=1))


def test_the_pipeline_is_deterministic_and_resumes(tmp_path):
    events: list[tuple[int, bool]] = []
    first = run_experiments(tmp_path / "a", "tiny", on_run=lambda i, n, c, cached: events.append((i, cached)))
    total = len(planned_runs(suite_config("tiny"), CLAIMS))
    assert events == [(i, False) for i in range(1, total + 1)]
    again = run_experiments(tmp_path / "b", "tiny")
    for one, two in zip(first["claims"], again["claims"], strict=True):
        assert one["verdicts"] == two["verdicts"] and one["table"] == two["table"]
    events.clear()
    steps: list[int] = []
    resumed = run_experiments(tmp_path / "a", "tiny", on_run=lambda i, n, c, cached: events.append((i, cached)),
                              on_step=lambda step, steps_, loss: steps.append(step))
    assert events == [(i, True) for i in range(1, total + 1)] and steps == []  # nothing retrained
    assert resumed["runs"] == {**first["runs"], "trained": 0, "cached": total}
    assert [c["verdicts"] for c in resumed["claims"]] == [c["verdicts"] for c in first["claims"]]
    for claim in first["claims"]:
        assert claim["status"] in STATUSES
        assert all(v["status"] in STATUSES and len(v["effects"]) == 3 for v in claim["verdicts"])
        assert any(v["primary"] for v in claim["verdicts"])
    records = {r["key"]: r for r in first["records"]}
    assert len(records) == total and {r["config"]["seed"] for r in records.values()} == {0, 1, 2}
    assert json.loads((tmp_path / "a" / "experiments.json").read_text())["suite"] == "tiny"


def test_a_subset_of_claims_trains_only_what_it_needs(tmp_path):
    report = run_experiments(tmp_path, "tiny", claims=["specialization"])
    assert [c["name"] for c in report["claims"]] == ["specialization"]
    assert report["runs"]["total"] == 3  # the analysed models of claim 2, one per seed
    assert len(list((tmp_path / "runs").glob("*.pt"))) == 3


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"seeds": (0, 1)}, ValueError, r"seeds must be at least 3 distinct non-negative ints .* got \(0, 1\)"),
        ({"head_counts": (2, 4, 8)}, ValueError, "one of them 1; got"),
        ({"head_size_dims": (8,)}, ValueError, "must hold the width-tied head dim 4 of 4 heads"),
        ({"analysed_heads": 3}, ValueError, "analysed_heads must be one of head_counts"),
        ({"fractions": (0.25, 0.5)}, ValueError, "fractions must ascend from 0.0"),
        ({"little_loss_fraction": 0.3}, ValueError, "little_loss_fraction must be one of the nonzero fractions"),
        ({"dropout": 0.0}, ValueError, r"dropout must be in \(0, 1\)"),
    ],
)
def test_suite_config_refuses_bad_settings(change, error, match):
    with pytest.raises(error, match=match):
        replace(suite_config("tiny"), **change)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ModelConfig(embed_dim=30, num_heads=4), "embed_dim=30 is not divisible by num_heads=4"),
        (lambda: ModelConfig(scaling="cosine"), "scaling must be one of"),
        (lambda: ModelConfig(embed_dim=12, num_heads=4), "head_dim=3 is odd"),
        (lambda: replace(TINY, warmup=6), r"warmup must be an int in \[0, steps=6\), got 6"),
        (lambda: replace(TINY, lr=-1.0), "lr must be a positive number, got -1.0"),
        (lambda: replace(TINY, train_bytes=10), r"above one window \(17 bytes\), got 10"),
        (lambda: replace(TINY, seed=-1), "seed must be a non-negative int, got -1"),
        (lambda: run_experiments("x", "huge"), "no suite named 'huge'; the presets are full, quick, tiny"),
        (lambda: run_experiments("x", "tiny", claims=["7"]), "no claim '7'; choose from 1 scaling"),
    ],
)
def test_bad_settings_are_refused_in_words(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_presets_are_valid_and_run_three_seeds():
    for name in ("full", "quick", "tiny"):
        suite = suite_config(name)
        assert isinstance(suite, SuiteConfig) and len(suite.seeds) >= 3
    full = planned_runs(suite_config("full"), CLAIMS)
    assert len({c.key() for c, _ in full}) == len(full) == 84
    assert sum(c.steps for c, _ in full) == 50_400
