"""distill_ and DistillConfig: recovery of a pruned MiniLM toward the unpruned one."""

from __future__ import annotations

import copy
import json
import logging
import sys

import pytest
import torch
import torch.nn.functional as F

from headwise.heads import DistillConfig, DistillResult, distill_, prune_heads_
from headwise.texts import doc_sentences

CALIBRATION = doc_sentences()[:32]
HELD_APART = doc_sentences()[40:56]
# 24 of 72 heads, spread over the six layers (a fixed set: the test is about recovery, not ranking)
PLAN = {layer: [(layer + 5 * i) % 12 for i in range(4)] for layer in range(6)}


@pytest.fixture(scope="module")
def minilm():
    import headwise.models as hm

    return hm.load()


@pytest.fixture(scope="module")
def pruned(minilm):
    model = copy.deepcopy(minilm)
    prune_heads_(model, PLAN)
    return model


def held_apart_cosine(model, teacher) -> float:
    return F.cosine_similarity(model.encode(HELD_APART), teacher.encode(HELD_APART), dim=1).mean().item()


def test_config_round_trips_and_validates():
    config = DistillConfig(steps=7, batch_size=4, lr=1e-4, progress=False)
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["version"] == 1
    with pytest.raises(ValueError, match=r"DistillConfig.steps must be an int >= 1, got 0"):
        DistillConfig(steps=0)
    with pytest.raises(ValueError, match=r"DistillConfig.batch_size must be an int >= 1, got True"):
        DistillConfig(batch_size=True)
    with pytest.raises(ValueError, match=r"DistillConfig.lr must be a finite number > 0, got 0; 1e-5 to 1e-4"):
        DistillConfig(lr=0)
    with pytest.raises(ValueError, match=r"DistillConfig.lr must be a finite number > 0, got -0.001"):
        DistillConfig(lr=-1e-3)
    with pytest.raises(ValueError, match=r"DistillConfig.weight_decay must be a finite number >= 0, got nan"):
        DistillConfig(weight_decay=float("nan"))
    with pytest.raises(ValueError, match=r"DistillConfig.loss must be one of \('cosine',\), got 'mse'"):
        DistillConfig(loss="mse")
    with pytest.raises(TypeError, match=r"DistillConfig.progress must be a bool, got 1"):
        DistillConfig(progress=1)
    with pytest.raises(ValueError, match=r"DistillConfig version 2 is not supported"):
        DistillConfig(version=2)
    with pytest.raises(ValueError, match=r"unknown DistillConfig keys \['epochs'\]"):
        DistillConfig.from_dict({"steps": 1, "epochs": 2})


def test_distillation_recovers_held_apart_agreement(minilm, pruned):
    student = copy.deepcopy(pruned)
    student.train()  # the caller's mode comes back
    teacher_state = {k: v.clone() for k, v in minilm.state_dict().items()}
    before = held_apart_cosine(student, minilm)
    result = distill_(student, minilm, CALIBRATION, DistillConfig(steps=8, batch_size=8, lr=1e-4, progress=False))
    after = held_apart_cosine(student, minilm)

    assert isinstance(result, DistillResult) and len(result.losses) == 8
    assert after > before + 0.03, (before, after)  # measured: 0.805 -> 0.876
    assert all(module.training for module in student.modules())
    assert not minilm.training
    assert minilm.state_dict().keys() == teacher_state.keys()
    assert all(torch.equal(v, teacher_state[k]) for k, v in minilm.state_dict().items())
    assert student.num_heads == pruned.num_heads
    assert all(p.grad is None for p in student.parameters())


def test_losses_are_deterministic(minilm, pruned):
    config = DistillConfig(steps=2, batch_size=4, lr=1e-4, seed=3, progress=False)
    runs = [distill_(copy.deepcopy(pruned), minilm, CALIBRATION[:8], config).losses for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][0] > 0


def test_progress_without_tqdm_logs(minilm, pruned, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if tqdm were missing
    with caplog.at_level(logging.INFO, logger="headwise.heads"):
        distill_(copy.deepcopy(pruned), minilm, CALIBRATION[:4], DistillConfig(steps=2, batch_size=4))
    assert "distill_: step 2/2, loss" in caplog.text


def test_bad_input_raises_and_changes_nothing(minilm, pruned):
    student = copy.deepcopy(pruned)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    config = DistillConfig(steps=1, progress=False)
    with pytest.raises(ValueError, match=r"texts is empty; distill_ needs calibration texts"):
        distill_(student, minilm, [], config)
    with pytest.raises(TypeError, match=r"config must be a DistillConfig, got dict"):
        distill_(student, minilm, CALIBRATION, {"steps": 1})
    with pytest.raises(ValueError, match=r"share parameters \(the same model\?\)"):
        distill_(student, student, CALIBRATION, config)

    narrow = copy.deepcopy(minilm)
    narrow.network.config = copy.copy(minilm.config)
    object.__setattr__(narrow.network.config, "hidden_size", 256)
    with pytest.raises(ValueError, match=r"the teacher has hidden_size=256 but the student 384"):
        distill_(student, narrow, CALIBRATION, config)

    class SmallVocab:
        def get_vocab_size(self):
            return 1000

    other = copy.deepcopy(minilm)
    other.tokenizer = SmallVocab()
    with pytest.raises(ValueError, match=r"the teacher's tokenizer has vocab size 1000 but the student's 30522"):
        distill_(student, other, CALIBRATION, config)

    frozen = copy.deepcopy(pruned)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the student has no parameters that require grad"):
        distill_(frozen, minilm, CALIBRATION, config)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())
