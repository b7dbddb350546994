"""Loader fuzzing: broken model folders and GGUF files give one clear error, never a raw traceback.

Small models are written here (a tiny BERT and a tiny Llama saved by headwise, a tiny Llama GGUF
written with ``gguf.GGUFWriter``); each case breaks one file (truncated, bytes changed, a header
field, a tensor's dtype or shape, a config value, a JSON file) and loads it with
``headwise.models.load``.  Whatever the damage, the load either succeeds (bytes changed inside
the weights are still weights) or raises CheckpointError, ValueError, FileNotFoundError or
TypeError whose message names the broken file, and the key where one is at fault.  Tensor and
config errors are raised before any tensor data is read: nothing is loaded half-way.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import headwise.models as hm
from headwise.errors import CheckpointError
from headwise.models._sources import SafetensorsSource
from tests.models.test_checkpoint_errors import tiny
from tests.models.test_gguf import tiny_metadata, write_gguf
from tests.parallel._checks import _tiny_causal_lm

ALLOWED = (CheckpointError, ValueError, FileNotFoundError, TypeError)
FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

#: config.json keys each architecture reads, with the JSON type each must have
BERT_KEYS = {
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "intermediate_size": int, "max_position_embeddings": int, "type_vocab_size": int, "pad_token_id": int,
    "hidden_act": str, "layer_norm_eps": float, "hidden_dropout_prob": float, "attention_probs_dropout_prob": float,
}
LLAMA_KEYS = {
    "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
    "num_attention_heads": int, "num_key_value_heads": int, "head_dim": int, "max_position_embeddings": int,
    "rms_norm_eps": float, "rope_theta": float, "tie_word_embeddings": bool, "attention_bias": bool,
    "mlp_bias": bool, "bos_token_id": int, "pad_token_id": int,
}
KEYS = {"bert": BERT_KEYS, "llama": LLAMA_KEYS}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=4,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT folder (layer 1 pruned to 2 heads), a tiny Llama folder and a tiny Llama GGUF file."""
    root = tmp_path_factory.mktemp("sources")
    return {
        "bert": tiny(num_heads=(4, 2, 4)).save(root / "bert"),
        "llama": _tiny_causal_lm(2).save(root / "llama"),
        "gguf": write_gguf(root / "tiny.gguf"),
    }


@contextlib.contextmanager
def broken_copy(source: Path) -> Iterator[Path]:
    """A fresh copy of a folder or file, in a directory removed afterwards (hypothesis examples share no state)."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        yield target


@contextlib.contextmanager
def counting_reads(monkeypatch_context) -> Iterator[list[str]]:
    """The keys read from safetensors files (the real read runs; only the calls are recorded)."""
    reads: list[str] = []
    real = SafetensorsSource.read

    def read(self, key):
        reads.append(key)
        return real(self, key)

    with monkeypatch_context() as patch:
        patch.setattr(SafetensorsSource, "read", read)
        yield reads


def load_or_error(target: Path, *names: str) -> str | None:
    """Load ``target``: None if it loads, else the message of an allowed error, checked to name the file."""
    try:
        hm.load(target)
    except ALLOWED as err:
        message = str(err)
        assert "Traceback" not in message and "\n" not in message.strip(), message
        assert any(name in message for name in names), f"{message!r} names none of {names}"
        return message
    return None


# ---------------------------------------------------------------- model.safetensors


@FUZZ
@given(arch=st.sampled_from(["bert", "llama"]), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_weights_name_the_file(sources, arch, fraction):
    with broken_copy(sources[arch]) as folder:
        path = folder / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: int(fraction * len(data))])
        message = load_or_error(folder, str(path))
    assert message is not None and "safetensors" in message


@FUZZ
@given(
    arch=st.sampled_from(["bert", "llama"]),
    changes=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
    in_header=st.booleans(),
)
def test_changed_bytes_load_or_name_the_file(sources, arch, changes, in_header):
    """Bytes changed in the header (JSON, lengths, names) or anywhere: the file still loads, or its error names it."""
    with broken_copy(sources[arch]) as folder:
        path = folder / "model.safetensors"
        data = bytearray(path.read_bytes())
        span = 8 + struct.unpack("<Q", data[:8])[0] if in_header else len(data)
        for where, value in changes:
            data[int(where * span)] = value
        path.write_bytes(bytes(data))
        load_or_error(folder, str(path))


HEADER_VALUES = st.one_of(
    st.sampled_from(["F32", "F16", "I64", "I32", "BOOL", "U8", "F8_E4M3", "X9", ""]),
    st.lists(st.integers(-2, 2**40), max_size=3),
    st.integers(-1, 2**63),
    st.none(),
    st.just({}),
)


@FUZZ
@given(
    arch=st.sampled_from(["bert", "llama"]),
    pick=st.floats(0.0, 1.0, exclude_max=True),
    field=st.sampled_from(["dtype", "shape", "data_offsets", "whole entry", "metadata"]),
    value=HEADER_VALUES,
)
def test_header_fields_of_the_wrong_kind_name_the_file(sources, arch, pick, field, value):
    """A valid JSON header whose dtype, shape, offsets or metadata are wrong: an error naming the file, no read."""
    with broken_copy(sources[arch]) as folder:
        path = folder / "model.safetensors"
        data = path.read_bytes()
        size = struct.unpack("<Q", data[:8])[0]
        header, body = json.loads(data[8 : 8 + size]), data[8 + size :]
        names = sorted(k for k in header if k != "__metadata__")
        name = names[int(pick * len(names))]
        if field == "metadata":
            header["__metadata__"] = value
        elif field == "whole entry":
            header[name] = value
        else:
            header[name][field] = value
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        with counting_reads(pytest.MonkeyPatch.context) as reads:
            message = load_or_error(folder, str(path))
        if message is not None:
            assert reads == []


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8, torch.float8_e4m3fn])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_tensor_of_a_non_float_dtype_names_file_key_and_dtype(sources, arch, dtype):
    with broken_copy(sources[arch]) as folder:
        path = folder / "model.safetensors"
        tensors = load_file(path)
        key = sorted(tensors)[len(tensors) // 2]
        tensors[key] = torch.zeros(tensors[key].shape).to(dtype)
        save_file(tensors, path)
        with counting_reads(pytest.MonkeyPatch.context) as reads:
            message = load_or_error(folder, str(path))
    assert message is not None and f"tensor {key!r} has dtype" in message and "expected a float dtype" in message
    assert reads == []


@FUZZ
@given(
    arch=st.sampled_from(["bert", "llama"]),
    pick=st.floats(0.0, 1.0, exclude_max=True),
    shape=st.lists(st.integers(0, 70), min_size=0, max_size=3),
)
def test_tensor_of_another_shape_names_file_and_key(sources, arch, pick, shape):
    with broken_copy(sources[arch]) as folder:
        path = folder / "model.safetensors"
        tensors = load_file(path)
        key = sorted(tensors)[int(pick * len(tensors))]
        if list(tensors[key].shape) == shape:
            return
        tensors[key] = torch.zeros(shape, dtype=tensors[key].dtype)
        save_file(tensors, path)
        with counting_reads(pytest.MonkeyPatch.context) as reads:
            message = load_or_error(folder, str(path))
    assert message is not None and f"tensor {key!r} has shape {_shape(shape)}, expected" in message
    assert reads == []


def _shape(shape: list[int]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(map(str, shape)) + ")"


@pytest.mark.parametrize(
    ("index", "pattern"),
    [
        ([], r"index.json: expected an object with a 'weight_map'"),
        ({"weight_map": {"a": 1}}, r"index.json: expected an object with a 'weight_map'"),
        ({"weight_map": {"embeddings.word_embeddings.weight": "../x.safetensors"}}, r"index.json: shard '../x.safetensors' is not a file name"),
        ({"weight_map": {"embeddings.word_embeddings.weight": "gone.safetensors"}}, r"index.json names the shard gone.safetensors, which does not exist"),
        ({"weight_map": {"not.there": "model-00001-of-00001.safetensors"}}, r"index.json: tensor 'not.there' is listed in model-00001-of-00001.safetensors, which does not hold it"),
    ],
)
def test_sharded_index_errors_name_the_index(sources, index, pattern):
    with broken_copy(sources["bert"]) as folder:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        message = load_or_error(folder, "model.safetensors.index.json")
    assert message is not None and re.search(pattern, message), message


# ---------------------------------------------------------------- config.json


def _edit_config(folder: Path, **changes: object) -> Path:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))
    return path


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind) and (kind is not int or -(2**63) <= value < 2**63)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(arch=st.sampled_from(["bert", "llama"]), pick=st.floats(0.0, 1.0, exclude_max=True), value=JSON_VALUES)
def test_config_value_of_any_kind_loads_or_names_file_and_key(sources, arch, pick, value):
    """Any JSON value for any key: a value of the wrong type is named with its key; a right-typed value that does
    not fit the weights (or the architecture) gives an error naming a file of the folder, before any read."""
    keys = KEYS[arch]
    key = sorted(keys)[int(pick * len(keys))]
    with broken_copy(sources[arch]) as folder:
        config = _edit_config(folder, **{key: value})
        with counting_reads(pytest.MonkeyPatch.context) as reads:
            message = load_or_error(folder, str(config), str(folder / "model.safetensors"))
    if value is not None and not _has_type(value, keys[key]):
        assert message is not None and message.startswith(f"{config}: {key!r} is"), message
    if message is not None:
        assert reads == []


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_missing_required_keys_are_named(sources, arch):
    required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
    for key in required:
        with broken_copy(sources[arch]) as folder:
            config = _edit_config(folder, **{key: ...})
            message = load_or_error(folder, str(config))
        assert message is not None and f"missing key {key!r}" in message


@pytest.mark.parametrize(
    ("arch", "changes", "pattern"),
    [
        ("bert", dict(num_hidden_layers=10**12), r"'num_hidden_layers' is 1000000000000, but .*model.safetensors holds the weights of 3 layers"),
        ("llama", dict(num_hidden_layers=2**62), r"'num_hidden_layers' is 4611686018427387904, but .*model.safetensors holds the weights of 2 layers"),
        ("llama", dict(hidden_size=2**40), r"model.safetensors: tensor .model.embed_tokens.weight. has shape \(256, 48\), expected \(256, 1099511627776\)"),
        ("llama", dict(intermediate_size=2**62), r"config.json: its sizes .* give tensors too large to exist"),
        ("bert", dict(hidden_size=2**40), r"1_Pooling/config.json: 'word_embedding_dimension' is 16 but config.json has hidden_size=1099511627776"),
        ("bert", dict(hidden_size=10**12 + 1), r"config.json: embed_dim=1000000000001 is not divisible by num_heads=4 .*divides 1000000000001\.$"),
        ("llama", dict(head_dim=2**62), r"config.json: its sizes .* give tensors too large to exist"),
        ("bert", dict(vocab_size=2**64), r"'vocab_size' is 18446744073709551616 \(int\); expected an integer that fits in 64 bits"),
        ("llama", dict(max_position_embeddings=-3), r"config.json: max_position_embeddings must be a positive int, got -3"),
    ],
)
def test_huge_or_negative_sizes_fail_fast_naming_the_key(sources, arch, changes, pattern):
    with broken_copy(sources[arch]) as folder:
        _edit_config(folder, **changes)
        message = load_or_error(folder, "config.json")
    assert message is not None and re.search(pattern, message), message


@FUZZ
@given(
    arch=st.sampled_from(["bert", "llama"]),
    damage=st.one_of(
        st.floats(0.0, 1.0, exclude_max=True).map(lambda f: ("cut", f)),
        st.binary(min_size=1, max_size=20).map(lambda b: ("bytes", b)),
        JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("value", v)),
    ),
)
def test_config_that_is_not_a_json_object_names_the_file(sources, arch, damage):
    kind, what = damage
    with broken_copy(sources[arch]) as folder:
        path = folder / "config.json"
        if kind == "cut":
            text = path.read_text()
            path.write_text(text[: int(what * len(text))])
        elif kind == "bytes":
            path.write_bytes(b"\xff" + what)  # never valid UTF-8
        else:
            path.write_text(json.dumps(what))
        message = load_or_error(folder, str(path))
    assert message is not None and ("not valid JSON" in message or "expected a JSON object" in message)


# ---------------------------------------------------------------- the folder's other JSON files

OTHER_FILES = {
    "bert": ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json"],
    "llama": ["tokenizer_config.json", "tokenizer.json"],
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    arch=st.sampled_from(["bert", "llama"]),
    pick=st.floats(0.0, 1.0, exclude_max=True),
    where=st.floats(0.0, 1.0, exclude_max=True),
    value=JSON_VALUES,
    whole=st.booleans(),
)
def test_other_json_files_load_or_name_the_file(sources, arch, pick, where, value, whole):
    """modules.json, sentence_bert_config.json, the pooling config, tokenizer_config.json, tokenizer.json: any
    value replacing the file or one of its entries loads, or gives an error naming the file."""
    name = OTHER_FILES[arch][int(pick * len(OTHER_FILES[arch]))]
    with broken_copy(sources[arch]) as folder:
        path = folder / name
        data = json.loads(path.read_text())
        if whole or not data:
            data = value
        elif isinstance(data, dict):
            data[sorted(data)[int(where * len(data))]] = value
        else:
            entry = data[int(where * len(data))]
            if isinstance(entry, dict) and entry:
                entry[sorted(entry)[int(where * len(entry))]] = value
            else:
                data[int(where * len(data))] = value
        path.write_text(json.dumps(data))
        load_or_error(folder, name.split("/")[-1], str(folder / "modules.json"))


# ---------------------------------------------------------------- GGUF


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_gguf_names_the_file(sources, fraction):
    with broken_copy(sources["gguf"]) as path:
        data = path.read_bytes()
        path.write_bytes(data[: int(fraction * len(data))])
        message = load_or_error(path, str(path))
    assert message is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    changes=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=3),
    span=st.sampled_from([64, 1024, 8192, None]),
)
def test_changed_gguf_bytes_load_or_name_the_file(sources, changes, span):
    """Bytes changed in the header, the metadata (sizes, strings, array lengths), the tensor table or the data."""
    with broken_copy(sources["gguf"]) as path:
        data = bytearray(path.read_bytes())
        limit = min(span or len(data), len(data))
        for where, value in changes:
            data[int(where * limit)] = value
        path.write_bytes(bytes(data))
        load_or_error(path, str(path))


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"llama.block_count": 2**31}, r"'llama.block_count' is 2147483648, but the file holds the tensors of 2 blocks"),
        ({"llama.block_count": 3}, r"'llama.block_count' is 3, but the file holds the tensors of 2 blocks"),
        ({"llama.embedding_length": 2**31}, r"tensor 'token_embd.weight' .* has shape \(266, 32\) .*gives \(266, 2147483648\)"),
        ({"llama.attention.head_count": 2**31}, r"'llama.attention.head_count_kv' is 2, .*|tensor 'blk.0.attn_q.weight'"),
    ],
)
def test_gguf_metadata_out_of_range_fails_fast_naming_the_key(tmp_path, changes, pattern):
    path = write_gguf(tmp_path / "bad.gguf", metadata=tiny_metadata(**changes))
    message = load_or_error(path, str(path))
    assert message is not None and re.search(pattern, message), message
