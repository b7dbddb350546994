"""Hugging Face Llama folders in and out: small random models written by transformers (test-only reference).

Identities, so float64 at 1e-10: headwise reads what transformers wrote and computes the same
logits; what headwise writes, transformers reads with the same logits; a pruned model keeps
its per-layer head counts, and its zero-padded copy loads in stock transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

import headwise.models as hm
from headwise.heads import prune_heads_
from tests.helpers import float64_llama_norms

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _float64_oracle():
    with float64_llama_norms():
        yield

BASE = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1000.0,
)
CASES = {
    "grouped-query, tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "multi-head, untied": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "explicit head_dim, multi-query": dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False),
    "attention and mlp biases": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True),
}


def _reference(tmp_path, case: str, **save):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**BASE, **CASES[case])
    model = transformers.LlamaForCausalLM(config).double().eval()
    folder = tmp_path / "hf"
    model.save_pretrained(folder, **save)
    return model, folder


def _batch():
    ids = torch.randint(0, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_folder_loads_with_equal_logits(tmp_path, case):
    reference, folder = _reference(tmp_path, case)
    model = hm.load(folder)
    assert isinstance(model, hm.CausalLM) and model.config.tie_word_embeddings == reference.config.tie_word_embeddings
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    ids, mask = _batch()
    with torch.inference_mode():
        got, _ = model(ids, mask)
        expected = reference(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-10, rtol=0)


def test_sharded_folder(tmp_path):
    reference, folder = _reference(tmp_path, "multi-head, untied", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    model = hm.load(folder)
    ids, mask = _batch()
    with torch.inference_mode():
        torch.testing.assert_close(
            model(ids)[0], reference(input_ids=ids).logits, atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("case", ["grouped-query, tied", "explicit head_dim, multi-query"])
def test_saved_folder_loads_in_transformers_and_back(tmp_path, case):
    reference, folder = _reference(tmp_path, case)
    model = hm.load(folder)
    out = model.save(tmp_path / "ours")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["headwise_num_heads"] == [4, 4]
    theirs = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
    again = hm.load(out)
    ids, mask = _batch()
    with torch.inference_mode():
        expected, _ = model(ids, mask)
        torch.testing.assert_close(theirs(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-10, rtol=0)
        torch.testing.assert_close(again(ids, mask)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("plan", "heads", "kv_heads", "kv_index"),
    [
        ({0: [2, 3], 1: [1, 3]}, (2, 2), (1, 2), (None, None)),  # a whole kv group; one query head per group
        ({0: [0], 1: [3]}, (3, 3), (2, 2), ((0, 1, 1), (0, 0, 1))),  # groups of unequal size
    ],
)
def test_pruned_model_round_trips_and_exports_zero_heads(tmp_path, plan, heads, kv_heads, kv_index):
    _, folder = _reference(tmp_path, "grouped-query, tied")
    model = hm.load(folder)
    masked = hm.load(folder)
    with torch.no_grad():
        for layer, drop in plan.items():
            masked.attention_layers[layer].head_gate[drop] = 0.0
    prune_heads_(model, plan)
    assert model.num_heads == heads and model.num_kv_heads == kv_heads
    assert model.config.num_heads == heads and model.config.num_kv_heads == kv_heads
    assert model.config.kv_index == kv_index
    ids, mask = _batch()
    with torch.inference_mode():
        expected, _ = masked(ids, mask)
        got, _ = model(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    small = model.save(tmp_path / "pruned")
    config = json.loads((small / "config.json").read_text())
    assert config["headwise_num_heads"] == list(heads) and config["headwise_num_key_value_heads"] == list(kv_heads)
    again = hm.load(small)
    assert again.num_heads == heads and again.num_kv_heads == kv_heads
    assert tuple(layer.kv_index for layer in again.attention_layers) == kv_index
    full = model.save(tmp_path / "full", full_heads=True)
    theirs = transformers.LlamaForCausalLM.from_pretrained(full, dtype=torch.float64).eval()
    with torch.inference_mode():
        torch.testing.assert_close(again(ids, mask)[0], got, atol=1e-12, rtol=0)
        torch.testing.assert_close(theirs(input_ids=ids, attention_mask=mask).logits, got, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), r"'rope_scaling' is .*plain rotary positions"),
        (dict(sliding_window=16), r"'sliding_window' is 16"),
        (dict(hidden_act="gelu"), r"'hidden_act' is 'gelu'; Llama's feed-forward is SwiGLU"),
        (dict(rms_norm_eps="1e-5"), r"'rms_norm_eps' is '1e-5' \(str\); expected a number; write it without quotes"),
        (dict(num_key_value_heads=3), r"num_key_value_heads=3 must divide num_attention_heads=4"),
        (dict(headwise_num_heads=[4]), r"num_heads must give a positive head count for each of the 2 layers"),
    ],
)
def test_bad_configs(tmp_path, change, match):
    _, folder = _reference(tmp_path, "grouped-query, tied")
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(hm.CheckpointError, match=match):
        hm.load(folder)
