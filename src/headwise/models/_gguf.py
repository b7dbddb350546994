"""GGUF checkpoints (llama.cpp's format) read as a Hugging Face Llama checkpoint.

:class:`GGUFSource` is a tensor source (``keys()``, ``shape()``, ``dtype()``, ``read()``,
``path``; the interface of the safetensors sources) over one ``.gguf`` file of architecture
``llama``.  It presents the tensors under transformers' ``LlamaForCausalLM`` key names,
in torch's shape convention, dequantized to float32 by ``gguf.quants.dequantize`` (every
type that function supports) and with llama.cpp's Q/K row permutation undone::

    source = GGUFSource(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    config = llama_config(source)                  # transformers' config.json as a dict
    source.shape("model.layers.0.self_attn.k_proj.weight")   # (K * D, E) = (192, 576)
    weight = source.read("model.layers.0.self_attn.q_proj.weight")   # (H * D, E), float32

Shapes use E hidden size, H query heads, K kv heads, D head dim, F feed-forward size and
V vocabulary size.  Key names (HF -> GGUF, under ``model.layers.{i}`` / ``blk.{i}``)::

    model.embed_tokens.weight        token_embd.weight        (V, E)
    self_attn.q_proj.weight          attn_q.weight            (H * D, E)
    self_attn.k_proj.weight          attn_k.weight            (K * D, E)
    self_attn.v_proj.weight          attn_v.weight            (K * D, E)
    self_attn.o_proj.weight          attn_output.weight       (E, H * D)
    mlp.gate_proj.weight             ffn_gate.weight          (F, E)
    mlp.up_proj.weight               ffn_up.weight            (F, E)
    mlp.down_proj.weight             ffn_down.weight          (E, F)
    input_layernorm.weight           attn_norm.weight         (E,)
    post_attention_layernorm.weight  ffn_norm.weight          (E,)
    model.norm.weight                output_norm.weight       (E,)
    lm_head.weight                   output.weight            (V, E), only when the file has it

The constructor parses the header and metadata, builds the config and checks every tensor's
presence, shape and quantization type before any tensor data is dequantized, so a bad file
raises :class:`~headwise.errors.CheckpointError` and nothing is half-loaded.  Reading never
runs code from the file.  Needs the ``gguf`` package.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from headwise.errors import CheckpointError, fmt_shape

if TYPE_CHECKING:
    import gguf

__all__ = ["ARCHITECTURE", "GGUFSource", "llama_config"]

#: The only ``general.architecture`` this reader maps to Hugging Face names.
ARCHITECTURE = "llama"

_MAGIC = b"GGUF"

#: GGUF tensor name under ``blk.{i}.`` -> Hugging Face name under ``model.layers.{i}.``, in HF order.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_EMBED, _NORM, _OUTPUT = "token_embd", "output_norm", "output"
_HF_EMBED, _HF_NORM, _HF_OUTPUT = "model.embed_tokens", "model.norm", "lm_head"

#: GGUF tensors some Llama-architecture files carry that a plain LlamaForCausalLM cannot hold,
#: and why (a hint for the error message).
_UNSUPPORTED_TENSORS = {
    "rope_freqs": "per-frequency RoPE factors (Llama 3.1-style rope scaling)",
    "attn_rot_embd": "a stored rotary table",
    "ffn_gate_inp": "a mixture-of-experts router",
    "ffn_gate_exps": "mixture-of-experts weights",
    "ffn_up_exps": "mixture-of-experts weights",
    "ffn_down_exps": "mixture-of-experts weights",
}

#: Config keys read from the metadata (``llama.`` prefix), after transformers' GGUF mapping.
_REQUIRED_INTS = {
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "context_length": "max_position_embeddings",
}
_EPS_KEY = "attention.layer_norm_rms_epsilon"
#: transformers' LlamaConfig default, used when the file states no rope.freq_base
_DEFAULT_ROPE_THETA = 10000.0
#: torch dtypes :meth:`GGUFSource.read` can return
_READ_DTYPES = (torch.float32, torch.bfloat16)


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        raise ImportError(
            "reading GGUF files needs the 'gguf' package (llama.cpp's gguf-py); install it with "
            "`pip install gguf`."
        ) from err
    return gguf


class GGUFSource:
    """The tensors of one Llama-architecture GGUF file under Hugging Face Llama key names.

    Args:
        path: the ``.gguf`` file.
        dtype: what :meth:`read` returns: ``torch.float32`` (default; dequantized exactly as
            ``gguf.quants.dequantize`` computes it) or ``torch.bfloat16`` (dequantized to
            float32, then cast).

    Attributes:
        path: the file, named in every error message.
        metadata: the file's key/value pairs as a plain dict: strings decoded, numbers as
            Python numbers, arrays (the tokenizer's vocabulary and merges included) as lists.
            The header's own counts (``GGUF.version``, ...) are not key/values and are left out.
        config: :func:`llama_config` of the file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a ``dtype`` other than float32 and bfloat16.
        CheckpointError: (a ValueError) not a GGUF file, a truncated or corrupt one, another
            architecture, a config key missing or out of range, a missing, unexpected or
            wrongly shaped tensor, or a quantization type ``gguf.quants.dequantize`` cannot
            dequantize.  The message names the file and the key.

    Shape:
        :meth:`shape` gives torch's convention, ``(out_features, in_features)`` for a
        projection; see the module docstring for every key.
    """

    def __init__(self, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in _READ_DTYPES:
            raise ValueError(
                f"dtype={dtype!r} is not supported; GGUFSource reads torch.float32 (default) or "
                "torch.bfloat16 (dequantized to float32, then cast); cast the tensors yourself for another dtype."
            )
        self.path = Path(path)
        self._dtype = dtype
        reader = _open(self.path)
        self.metadata = _read_metadata(reader, self.path)
        raw = {tensor.name: tensor for tensor in reader.tensors}
        self.config = _llama_config(self.metadata, raw, self.path)
        self._tensors = _map_tensors(raw, self.config, self.path)  # HF name -> ReaderTensor, in HF order
        self._heads = {
            f"model.layers.{i}.self_attn.{proj}.weight": heads
            for i in range(self.config["num_hidden_layers"])
            for proj, heads in (
                ("q_proj", self.config["num_attention_heads"]),
                ("k_proj", self.config["num_key_value_heads"]),
            )
        }
        self._reader = reader

    def keys(self) -> list[str]:
        """The Hugging Face key names, in LlamaForCausalLM's state-dict order."""
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key`` in torch's convention, e.g. ``(out_features, in_features)``."""
        return _torch_shape(self._tensor(key))

    def dtype(self, key: str) -> torch.dtype:
        """The dtype :meth:`read` returns for ``key`` (every tensor of an accepted file is readable)."""
        self._tensor(key)
        return self._dtype

    def ggml_type(self, key: str) -> str:
        """How ``key`` is stored in the file: the ggml type name (``"Q4_1"``, ``"F32"``, ...)."""
        return self._tensor(key).tensor_type.name

    def read(self, key: str) -> Tensor:
        """Dequantize one tensor (on the CPU), with the Q/K row permutation undone.

        Every call dequantizes afresh; nothing is cached.

        Shape:
            :meth:`shape` of ``key``.
        """
        tensor = self._tensor(key)
        shape = _torch_shape(tensor)
        gguf = _import_gguf()
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if not values.flags.writeable:  # F32 comes back as a view of the read-only memory map
            values = np.array(values)
        out = torch.from_numpy(values)
        if tuple(out.shape) != shape:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name!r} ({key}) dequantized to shape {fmt_shape(out.shape)}, "
                f"but its header says {fmt_shape(shape)}; the file is corrupt."
            )
        heads = self._heads.get(key)
        if heads is not None:
            out = _unpermute_rows(out, heads)
        return out if self._dtype == torch.float32 else out.to(self._dtype)

    def _tensor(self, key: str) -> Any:
        try:
            return self._tensors[key]
        except KeyError:
            raise KeyError(
                f"{self.path} has no tensor {key!r}; GGUFSource names tensors as transformers' "
                f"LlamaForCausalLM does ({len(self._tensors)} keys, e.g. {next(iter(self._tensors))!r}); "
                "see keys()."
            ) from None

    def __repr__(self) -> str:
        return f"GGUFSource({str(self.path)!r}, {len(self._tensors)} tensors, dtype={self._dtype})"


def llama_config(
    source_or_metadata: GGUFSource | Mapping[str, Any],
    *,
    tensor_names: Collection[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a Llama GGUF file.

    Equal, key for key, to the config transformers builds from the same file
    (``load_gguf_checkpoint(path)["config"]``) for every key both have, and it also
    states ``architectures``, ``hidden_act``, ``attention_bias`` and ``mlp_bias``.  A token id
    the file does not state is ``None`` (transformers' LlamaConfig would fill 1 / 2 in).

    Args:
        source_or_metadata: a :class:`GGUFSource`, or its ``metadata`` dict.
        tensor_names: with a metadata dict, the file's GGUF tensor names (``tie_word_embeddings``
            is true when there is no ``output.weight``).
        path: with a metadata dict, the file to name in error messages.

    Raises:
        CheckpointError: another architecture, or a config key missing or out of range.
        TypeError: a metadata dict without ``tensor_names``.
    """
    if isinstance(source_or_metadata, GGUFSource):
        return copy.deepcopy(source_or_metadata.config)
    if not isinstance(source_or_metadata, Mapping):
        raise TypeError(
            f"llama_config expects a GGUFSource or its metadata dict, got {type(source_or_metadata).__name__}."
        )
    if tensor_names is None:
        raise TypeError(
            "llama_config(metadata) needs tensor_names= (the file's GGUF tensor names): tie_word_embeddings "
            "depends on whether the file has 'output.weight'; or pass the GGUFSource itself."
        )
    return _llama_config(source_or_metadata, tensor_names, Path(path) if path is not None else Path("<metadata>"))


# ---------------------------------------------------------------- reading the file


def _open(path: Path) -> Any:
    """A ``gguf.GGUFReader`` over ``path`` (header, metadata and tensor table; no data read)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file); pass the path of a .gguf file.")
    with path.open("rb") as f:
        magic = f.read(len(_MAGIC))
    if not magic:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a GGUF file; download or convert it again.")
    if magic != _MAGIC:
        raise CheckpointError(
            f"{path}: not a GGUF file: it starts with {magic!r}, a GGUF file with {_MAGIC!r}. "
            "Check the path; a Hugging Face folder's weights load from model.safetensors instead."
        )
    gguf = _import_gguf()
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(
            f"{path}: cannot be parsed as GGUF ({type(err).__name__}: {err}); the file ({size} bytes) is "
            f"truncated or corrupt, or uses a type this gguf package ({_gguf_version(gguf)}) does not know. "
            "Download or convert it again, or upgrade gguf."
        ) from err
    return reader


def _gguf_version(gguf: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"version {version('gguf')}"
    except PackageNotFoundError:
        return f"at {Path(gguf.__file__).parent}"


def _read_metadata(reader: Any, path: Path) -> dict[str, Any]:
    """Every key/value of the file, decoded (the header's ``GGUF.*`` counts are not key/values)."""
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            metadata[key] = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as err:
            raise CheckpointError(
                f"{path}: metadata key {key!r} cannot be decoded ({err}); the file is corrupt. "
                "Download or convert it again."
            ) from err
    return metadata


def _torch_shape(tensor: Any) -> tuple[int, ...]:
    """ggml lists dimensions fastest-moving first; torch the other way round."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


@functools.cache
def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether ``gguf.quants.dequantize`` supports ``qtype`` (tried on one all-zero block)."""
    gguf = _import_gguf()
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


# ---------------------------------------------------------------- config


def _llama_config(metadata: Mapping[str, Any], tensor_names: Collection[str], path: Path) -> dict[str, Any]:
    architecture = metadata.get("general.architecture")
    if architecture is None:
        raise CheckpointError(
            f"{path}: metadata key 'general.architecture' is missing; every GGUF file written by "
            "llama.cpp's converters states it. The file is incomplete: convert it again."
        )
    if architecture != ARCHITECTURE:
        raise CheckpointError(
            f"{path}: metadata key 'general.architecture' is {architecture!r}; GGUFSource reads only "
            f"{ARCHITECTURE!r} files (Hugging Face LlamaForCausalLM weights). Load a {architecture!r} model "
            "with a reader for that architecture."
        )

    def key(name: str) -> str:
        return f"{ARCHITECTURE}.{name}"

    def integer(name: str, value: Any, *, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CheckpointError(
                f"{path}: metadata key {key(name)!r} is {value!r}; expected an integer >= {minimum}. "
                "The file is malformed: convert it again."
            )
        return value

    config: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    for name, hf_key in _REQUIRED_INTS.items():
        if key(name) not in metadata:
            raise CheckpointError(
                f"{path}: metadata key {key(name)!r} ({hf_key}) is missing; a Llama GGUF states "
                f"{', '.join(key(n) for n in _REQUIRED_INTS)} and {key(_EPS_KEY)!r}. Convert the file again."
            )
        config[hf_key] = integer(name, metadata[key(name)])
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = integer("attention.head_count_kv", metadata.get(key("attention.head_count_kv"), heads))
    if heads % kv_heads:
        raise CheckpointError(
            f"{path}: metadata key {key('attention.head_count_kv')!r} is {kv_heads}, which does not divide "
            f"{key('attention.head_count')!r} = {heads}; grouped-query attention needs kv heads that divide "
            "the query heads. The file is malformed."
        )
    config["num_key_value_heads"] = kv_heads

    rope_dims = metadata.get(key("rope.dimension_count"))
    if key("attention.key_length") in metadata:
        head_dim, head_dim_key = integer("attention.key_length", metadata[key("attention.key_length")]), "attention.key_length"
    elif rope_dims is not None:
        head_dim, head_dim_key = integer("rope.dimension_count", rope_dims), "rope.dimension_count"
    elif hidden % heads == 0:
        head_dim, head_dim_key = hidden // heads, "embedding_length"
    else:
        raise CheckpointError(
            f"{path}: {key('embedding_length')!r} = {hidden} is not divisible by {key('attention.head_count')!r} "
            f"= {heads}, and the file states no {key('rope.dimension_count')!r} to give the head dim."
        )
    for name in ("rope.dimension_count", "attention.value_length"):
        value = metadata.get(key(name))
        if value is not None and value != head_dim:
            raise CheckpointError(
                f"{path}: metadata key {key(name)!r} is {value!r}, but the head dim ({key(head_dim_key)!r}) is "
                f"{head_dim}; a Hugging Face Llama rotates and projects whole heads of one size."
            )
    if head_dim % 2:
        raise CheckpointError(
            f"{path}: the head dim ({key(head_dim_key)!r}) is {head_dim}, an odd number; rotary embeddings "
            "rotate pairs of dimensions, so a Llama head dim is even."
        )
    config["head_dim"] = head_dim

    eps = metadata.get(key(_EPS_KEY))
    if isinstance(eps, bool) or not isinstance(eps, float) or not eps > 0:
        raise CheckpointError(
            f"{path}: metadata key {key(_EPS_KEY)!r} is {eps!r}; expected a positive float (the RMSNorm epsilon, "
            "e.g. 1e-05). Convert the file again."
        )
    config["rms_norm_eps"] = eps
    theta = metadata.get(key("rope.freq_base"), _DEFAULT_ROPE_THETA)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise CheckpointError(
            f"{path}: metadata key {key('rope.freq_base')!r} is {theta!r}; expected a positive number (the RoPE "
            "base, e.g. 10000.0)."
        )
    config["rope_theta"] = float(theta)
    scaling = metadata.get(key("rope.scaling.type"), "none")
    if scaling != "none":
        raise CheckpointError(
            f"{path}: metadata key {key('rope.scaling.type')!r} is {scaling!r}; GGUFSource maps only unscaled "
            "RoPE to the Llama config (transformers' GGUF reader drops the scaling, which would change the "
            "model's outputs). Use the original Hugging Face checkpoint."
        )
    experts = metadata.get(key("expert_count"), 0)
    if experts:
        raise CheckpointError(
            f"{path}: metadata key {key('expert_count')!r} is {experts!r}; this is a mixture-of-experts model "
            "(Mixtral-style), not a dense LlamaForCausalLM."
        )

    if key("vocab_size") in metadata:
        config["vocab_size"] = integer("vocab_size", metadata[key("vocab_size")])
    elif isinstance(metadata.get("tokenizer.ggml.tokens"), list):
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])  # as transformers does
    else:
        raise CheckpointError(
            f"{path}: metadata key {key('vocab_size')!r} is missing and there is no 'tokenizer.ggml.tokens' "
            "to count; the vocabulary size is unknown. Convert the file again."
        )
    config["tie_word_embeddings"] = f"{_OUTPUT}.weight" not in tensor_names
    for hf_key, gguf_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        value = metadata.get(gguf_key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CheckpointError(f"{path}: metadata key {gguf_key!r} is {value!r}; expected a token id >= 0.")
        config[hf_key] = value
    config.update(hidden_act="silu", attention_bias=False, mlp_bias=False)
    return config


# ---------------------------------------------------------------- tensors


def _expected_shapes(config: Mapping[str, Any], tied: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF key -> (GGUF tensor name, torch shape), in LlamaForCausalLM's state-dict order."""
    vocab, hidden, ffn = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]  # H * D
    kv_rows = config["num_key_value_heads"] * config["head_dim"]  # K * D
    per_layer = {
        "attn_q": (q_rows, hidden),
        "attn_k": (kv_rows, hidden),
        "attn_v": (kv_rows, hidden),
        "attn_output": (hidden, q_rows),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
        "attn_norm": (hidden,),
        "ffn_norm": (hidden,),
    }
    expected = {f"{_HF_EMBED}.weight": (f"{_EMBED}.weight", (vocab, hidden))}
    for i in range(config["num_hidden_layers"]):
        for name, shape in per_layer.items():
            expected[f"model.layers.{i}.{_LAYER_NAMES[name]}.weight"] = (f"blk.{i}.{name}.weight", shape)
    expected[f"{_HF_NORM}.weight"] = (f"{_NORM}.weight", (hidden,))
    if not tied:
        expected[f"{_HF_OUTPUT}.weight"] = (f"{_OUTPUT}.weight", (vocab, hidden))
    return expected


def _map_tensors(raw: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """HF key -> ReaderTensor, after checking names, shapes and types of every tensor."""
    layers = config["num_hidden_layers"]
    blocks = {name.split(".")[1] for name in raw if name.startswith("blk.")}
    if layers > len(blocks):  # checked before listing every block's tensors (a corrupt count may be huge)
        raise CheckpointError(
            f"{path}: metadata key {ARCHITECTURE + '.block_count'!r} is {layers}, but the file holds the tensors "
            f"of {len(blocks)} blocks (blk.N.*); the metadata and the weights disagree. The file is corrupt: "
            "convert it again."
        )
    expected = _expected_shapes(config, config["tie_word_embeddings"])
    wanted = {gguf_name for gguf_name, _ in expected.values()}
    unexpected = [name for name in raw if name not in wanted]
    if unexpected:
        name = unexpected[0]
        what = _UNSUPPORTED_TENSORS.get(name.split(".")[-2] if name.count(".") else name)
        reason = (
            f"it holds {what}, which a plain LlamaForCausalLM has no place for"
            if what
            else "it has no counterpart in transformers' LlamaForCausalLM (biases, extra layers "
            f"beyond {config['num_hidden_layers']} blocks and other architectures' tensors are not supported)"
        )
        raise CheckpointError(
            f"{path}: unexpected tensor {name!r} ({len(unexpected)} unexpected in all); {reason}. "
            "Nothing was loaded."
        )
    tensors: dict[str, Any] = {}
    for hf_key, (gguf_name, shape) in expected.items():
        tensor = raw.get(gguf_name)
        if tensor is None:
            raise CheckpointError(
                f"{path}: tensor {gguf_name!r} ({hf_key}) is missing; a Llama GGUF with "
                f"{config['num_hidden_layers']} blocks has every blk.N.{{{','.join(_LAYER_NAMES)}}}.weight. "
                "The file is incomplete: convert it again."
            )
        actual = _torch_shape(tensor)
        if actual != shape:
            raise CheckpointError(
                f"{path}: tensor {gguf_name!r} ({hf_key}) has shape {fmt_shape(actual)} (torch order), but the "
                f"config in the file's metadata gives {fmt_shape(shape)}; the metadata and the weights disagree. "
                "Convert the file again."
            )
        if not _dequantizable(tensor.tensor_type):
            raise CheckpointError(
                f"{path}: tensor {gguf_name!r} ({hf_key}) is stored as {tensor.tensor_type.name}, which "
                "gguf.quants.dequantize cannot dequantize; re-quantize the model to a supported type "
                "(F32, F16, BF16, Q8_0, Q4_K, ...) or upgrade the gguf package."
            )
        tensors[hf_key] = tensor
    return tensors


def _unpermute_rows(weight: Tensor, heads: int) -> Tensor:
    """Undo llama.cpp's Q/K row permutation, back to Hugging Face's rotate-half RoPE layout.

    llama.cpp's converter interleaves each head's two rotary halves (row ``h*D + j*D/2 + d`` goes
    to ``h*D + 2*d + j``); this is the inverse.  ``heads`` is H for q_proj and K for k_proj.

    Shape:
        weight: (heads * D, E) -> (heads * D, E)
    """
    rows, columns = weight.shape
    half = rows // heads // 2
    split = weight.reshape(heads, half, 2, columns)  # (heads, D/2, 2, E)
    return split.transpose(1, 2).reshape(rows, columns)  # (heads, 2, D/2, E) -> (heads * D, E)
