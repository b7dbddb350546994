"""CausalLM's generation, streaming, stopping, sampling, perplexity and their errors, on a small random Llama.

The model is float64 with a byte-level tokenizer (tests/parallel/_checks._tiny_causal_lm), so every
identity below is exact; the real decoder's generation is compared with transformers in
test_llama_parity.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import headwise.models as hm
from tests.parallel._checks import _tiny_causal_lm


@pytest.fixture(scope="module")
def model() -> hm.CausalLM:
    return _tiny_causal_lm(2)


def _greedy_by_hand(model: hm.CausalLM, prompt: str, count: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence through the network at every step."""
    ids = model.tokenize([prompt])["input_ids"][0].tolist()
    out = []
    with torch.inference_mode():
        for _ in range(count):
            logits, _ = model.network(torch.tensor([ids + out]))
            out.append(int(logits[0, -1].argmax()))
    return out


def test_cached_greedy_equals_recomputing_the_prefix(model):
    tokens = torch.stack(list(model.generate_tokens(model.tokenize(["The cat"])["input_ids"], max_new_tokens=10)), 1)
    assert tokens[0].tolist() == _greedy_by_hand(model, "The cat", 10)


def test_generate_stream_and_on_token_agree(model):
    text = model.generate("Once upon", max_new_tokens=12, stop_at_eos=False)
    pieces = list(model.stream("Once upon", max_new_tokens=12, stop_at_eos=False))
    assert "".join(pieces) == text and len(pieces) > 1
    seen = []
    again = model.generate(["Once upon", "A"], max_new_tokens=12, stop_at_eos=False, on_token=lambda r, t: seen.append((r, t)))
    assert again[0] == text
    assert "".join(t for r, t in seen if r == 0) == text and "".join(t for r, t in seen if r == 1) == again[1]


def test_stop_strings_cut_before_them(model):
    full = model.generate("Once upon", max_new_tokens=24, stop_at_eos=False)
    stop = full[5:7]
    cut = model.generate("Once upon", max_new_tokens=24, stop=stop, stop_at_eos=False)
    assert cut == full[: full.index(stop)]
    assert "".join(model.stream("Once upon", max_new_tokens=24, stop=stop, stop_at_eos=False)) == cut


def test_end_of_sequence_stops_a_row(model):
    ids = model.tokenize(["Once upon"])["input_ids"]
    first = int(next(iter(model.generate_tokens(ids, max_new_tokens=1)))[0])
    stopping = hm.CausalLM(model.network, tokenizer=model.tokenizer, special=hm.SpecialTokenIds(eos_token_ids=(first,)))
    assert stopping.generate("Once upon", max_new_tokens=8) == ""
    assert stopping.generate("Once upon", max_new_tokens=8, stop_at_eos=False) != ""


def test_sampling_is_seeded_and_filtered(model):
    options = dict(max_new_tokens=16, do_sample=True, temperature=0.7, stop_at_eos=False)
    a = model.generate("The cat", seed=3, **options)
    assert model.generate("The cat", seed=3, **options) == a
    assert model.generate("The cat", seed=4, **options) != a
    assert model.generate("The cat", seed=5, top_k=1, **options) == model.generate("The cat", max_new_tokens=16, stop_at_eos=False)
    assert model.generate("The cat", seed=6, top_p=1e-9, **options) == model.generate("The cat", max_new_tokens=16, stop_at_eos=False)


def test_top_k_and_top_p_keep_the_right_tokens():
    from headwise.models._causal import _pick

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    config = hm.GenerationConfig(do_sample=True, top_k=2)
    assert {int(_pick(logits, config, generator)) for _ in range(200)} == {0, 1}
    config = hm.GenerationConfig(do_sample=True, top_p=0.7)  # 0.5 + 0.3 reach 0.7
    assert {int(_pick(logits, config, generator)) for _ in range(200)} == {0, 1}
    config = hm.GenerationConfig(do_sample=True, top_p=0.9)
    assert {int(_pick(logits, config, generator)) for _ in range(400)} == {0, 1, 2}


def test_batched_prompts_continue_as_alone(model):
    prompts = ["A", "A much longer prompt than the first one", "Mid length"]
    together = model.generate(prompts, max_new_tokens=8, stop_at_eos=False)
    assert together == [model.generate(p, max_new_tokens=8, stop_at_eos=False) for p in prompts]


def test_outputs_and_loss_are_the_next_token_distributions(model):
    batch = model.tokenize(["The cat sat.", "A dog"])
    logits, _ = model(**batch)
    outputs = model.outputs(batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert outputs.shape == (sum(n - 1 for n in lengths), 256)
    expected = torch.cat([F.log_softmax(logits[i, : n - 1], -1) for i, n in enumerate(lengths)])
    torch.testing.assert_close(outputs, expected, atol=1e-12, rtol=0)
    targets = torch.cat([batch["input_ids"][i, 1:n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(model.loss(batch), F.nll_loss(expected, targets), atol=1e-12, rtol=0)


def test_perplexity_windows_score_every_token_once(model):
    text = "The quick brown fox. " * 2  # 42 tokens, within the model's 64 positions
    ids = model.tokenize([text])["input_ids"]
    n = ids.shape[1]
    with torch.inference_mode():
        logits, _ = model.network(ids)
    nll = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
    whole = model.perplexity([text], context_length=n)
    assert whole.tokens == n - 1 and whole.windows == 1
    assert whole.value == pytest.approx(math.exp(nll / (n - 1)), rel=1e-12)
    strided = model.perplexity([text], context_length=16, stride=8)
    assert strided.tokens == n - 1 and strided.windows > 1 and strided.context_length == 16


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.generate("x", max_new_tokens=0), ValueError, r"max_new_tokens must be an int >= 1, got 0"),
        (lambda m: m.generate("x", do_sample=True, temperature=0), ValueError, r"temperature must be a positive number"),
        (lambda m: m.generate("x", top_k=0), ValueError, r"top_k must be an int >= 1 or None, got 0"),
        (lambda m: m.generate("x", top_p=1.5), ValueError, r"top_p must be in \(0, 1\] or None, got 1.5"),
        (lambda m: m.generate("x", stop=[""]), ValueError, r"stop must be non-empty strings"),
        (lambda m: m.generate("x", temprature=0.5), TypeError, r"unknown generation option 'temprature'"),
        (lambda m: m.generate([]), ValueError, r"prompts is empty"),
        (lambda m: m.generate(""), ValueError, r"text 0 gives no tokens"),
        (lambda m: m.generate("x" * 60, max_new_tokens=10), ValueError, r"60 tokens; with max_new_tokens=10 that is 70 positions, past the model's 64"),
        (lambda m: m.stream(["a", "b"]), TypeError, r"stream takes one prompt"),
        (lambda m: m.chat([{"role": "user", "content": "hi"}]), ValueError, r"has no chat template"),
        (lambda m: m.perplexity(["ab"], context_length=30), ValueError, r"context_length=30 is longer than the texts \(2 tokens\)"),
        (lambda m: m.perplexity(["a"]), ValueError, r"the texts hold 1 token\(s\); perplexity needs at least 2"),
        (lambda m: m.perplexity(["abcdef"], stride=0), ValueError, r"stride must be an int in 1..6"),
        (lambda m: m.tokenize(["a"], padding_side="middle"), ValueError, r"padding_side must be 'right' or 'left'"),
        (lambda m: m.network(torch.tensor([[300]])), ValueError, r"input_ids holds the id 300, outside the vocabulary of 256"),
    ],
)
def test_bad_input(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)
