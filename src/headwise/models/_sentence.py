"""The sentence-transformers side of a model folder: text preparation, pooling, normalization.

A sentence-transformers folder lists its pipeline in ``modules.json`` (Transformer ->
Pooling -> Normalize for all-MiniLM-L6-v2), the pooling modes in ``1_Pooling/config.json``
and the truncation length in ``sentence_bert_config.json``.  This module reads and writes
those files and reproduces the Pooling and Normalize steps exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from headwise.models._files import CheckpointError, read_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["POOLING_MODES", "SentenceConfig", "pool"]

#: Pooling modes headwise reproduces, in the order sentence-transformers concatenates them.
POOLING_MODES: tuple[str, ...] = ("cls", "max", "mean", "mean_sqrt_len")

_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
_UNSUPPORTED_POOLING_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_ST_PACKAGE = "sentence_transformers.models."
_POOLING_DIR = "1_Pooling"
_NORMALIZE_DIR = "2_Normalize"


@dataclass(frozen=True)
class SentenceConfig:
    """How a model turns texts into one embedding each, as sentence-transformers does.

    Args:
        max_seq_length: texts are truncated to this many tokens, special tokens included.
        do_lower_case: lower-case texts before tokenizing (on top of the tokenizer's own
            normalizer; sentence-transformers' ``do_lower_case``).
        pooling: pooling modes from :data:`POOLING_MODES`; several are concatenated.
        normalize: L2-normalize the pooled vectors (a ``Normalize`` module in modules.json).
    """

    max_seq_length: int
    do_lower_case: bool = False
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_seq_length, bool)
            or not isinstance(self.max_seq_length, int)
            or self.max_seq_length < 2
        ):
            raise ValueError(
                f"max_seq_length must be an int >= 2 (room for [CLS] and [SEP]), got {self.max_seq_length!r}."
            )
        modes = tuple(self.pooling)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise ValueError(
                f"pooling must be a non-empty tuple of modes from {POOLING_MODES}, got {modes!r}."
            )
        # sentence-transformers concatenates in a fixed order, whatever order the flags came in
        object.__setattr__(self, "pooling", tuple(m for m in POOLING_MODES if m in modes))


def pool(token_states: Tensor, attention_mask: Tensor, modes: tuple[str, ...]) -> Tensor:
    """Sentence vectors from token states, step for step as sentence-transformers' ``Pooling``.

    Padding positions (``attention_mask == 0``) never contribute.  Several modes are
    concatenated in the order of :data:`POOLING_MODES`.

    Shape:
        token_states (B, L, E), attention_mask (B, L) -> (B, len(modes) * E).
    """
    mask = attention_mask.unsqueeze(-1).expand(token_states.size()).to(token_states.dtype)  # (B, L, E)
    vectors: list[Tensor] = []
    if "cls" in modes:
        vectors.append(token_states[:, 0])  # (B, E)
    if "max" in modes:
        vectors.append(token_states.masked_fill(mask == 0, -1e9).max(dim=1).values)  # (B, E)
    if "mean" in modes or "mean_sqrt_len" in modes:
        summed = torch.sum(token_states * mask, 1)  # (B, E)
        counts = torch.clamp(mask.sum(1), min=1e-9)  # (B, E)
        if "mean" in modes:
            vectors.append(summed / counts)
        if "mean_sqrt_len" in modes:
            vectors.append(summed / torch.sqrt(counts))
    return vectors[0] if len(vectors) == 1 else torch.cat(vectors, 1)  # (B, P)


def read_sentence_config(folder: Path, *, hidden_size: int, max_position_embeddings: int) -> SentenceConfig:
    """The sentence pipeline of ``folder``; plain Hugging Face folders get mean pooling, no normalization.

    That default is what sentence-transformers builds for a folder without modules.json.
    """
    bert_config_path = folder / "sentence_bert_config.json"
    bert_config = read_json(bert_config_path) if bert_config_path.is_file() else {}
    max_seq_length = bert_config.get("max_seq_length") or max_position_embeddings
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 2:
        raise CheckpointError(
            f"{bert_config_path}: 'max_seq_length' is {max_seq_length!r}; expected an int >= 2."
        )
    if max_seq_length > max_position_embeddings:
        raise CheckpointError(
            f"{bert_config_path}: 'max_seq_length' is {max_seq_length} but config.json has "
            f"max_position_embeddings={max_position_embeddings}; the model has no positions past "
            f"{max_position_embeddings}. Lower max_seq_length to at most {max_position_embeddings}."
        )
    do_lower_case = bool(bert_config.get("do_lower_case", False))

    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return SentenceConfig(max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    modules = read_json(modules_path)
    if not isinstance(modules, list):
        raise CheckpointError(
            f"{modules_path}: expected a JSON list of modules, got {type(modules).__name__}."
        )
    pooling: tuple[str, ...] | None = None
    normalize = False
    for entry in sorted(modules, key=lambda e: e.get("idx", 0) if isinstance(e, dict) else 0):
        if not isinstance(entry, dict) or "type" not in entry:
            raise CheckpointError(f"{modules_path}: entry {entry!r} has no 'type'.")
        kind = str(entry["type"]).removeprefix(_ST_PACKAGE)
        path = str(entry.get("path", ""))
        if kind == "Transformer" and path == "":
            continue
        if kind == "Pooling":
            pooling = _read_pooling(folder / path / "config.json", hidden_size=hidden_size)
        elif kind == "Normalize":
            normalize = True
        else:
            raise CheckpointError(
                f"{modules_path}: module {entry['type']!r} (path {path!r}) is not one headwise.models "
                "implements; it reproduces a Transformer at the folder's root followed by Pooling and "
                "Normalize. Remove the module from modules.json only if dropping it is what you want."
            )
    return SentenceConfig(
        max_seq_length=max_seq_length,
        do_lower_case=do_lower_case,
        pooling=pooling if pooling is not None else ("mean",),
        normalize=normalize,
    )


def _read_pooling(path: Path, *, hidden_size: int) -> tuple[str, ...]:
    data = read_json(path)
    dim = data.get("word_embedding_dimension", hidden_size)
    if dim != hidden_size:
        raise CheckpointError(
            f"{path}: 'word_embedding_dimension' is {dim} but config.json has hidden_size={hidden_size}; "
            "the pooling config belongs to another model."
        )
    for key in _UNSUPPORTED_POOLING_KEYS:
        if data.get(key):
            raise CheckpointError(
                f"{path}: {key!r} is true, a pooling mode headwise.models does not implement; "
                f"supported: {', '.join(_POOLING_KEYS.values())}."
            )
    modes = tuple(mode for mode, key in _POOLING_KEYS.items() if data.get(key))
    if not modes:
        raise CheckpointError(
            f"{path}: no pooling mode is true; set one of {', '.join(_POOLING_KEYS.values())}."
        )
    return modes


def write_sentence_files(folder: Path, config: SentenceConfig, *, hidden_size: int) -> None:
    """Write modules.json, sentence_bert_config.json and 1_Pooling/config.json."""
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": _ST_PACKAGE + "Transformer"},
        {"idx": 1, "name": "1", "path": _POOLING_DIR, "type": _ST_PACKAGE + "Pooling"},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": _NORMALIZE_DIR, "type": _ST_PACKAGE + "Normalize"})
    pooling: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    pooling.update({key: mode in config.pooling for mode, key in _POOLING_KEYS.items()})
    pooling.update(dict.fromkeys(_UNSUPPORTED_POOLING_KEYS, False))
    (folder / _POOLING_DIR).mkdir(exist_ok=True)
    _write_json(folder / "modules.json", modules)
    _write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": config.max_seq_length, "do_lower_case": config.do_lower_case},
    )
    _write_json(folder / _POOLING_DIR / "config.json", pooling)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_tokenizer(folder: Path) -> Tokenizer | None:
    """``folder/tokenizer.json`` through the ``tokenizers`` library, or ``None`` if the folder has none."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs the 'tokenizers' package; install it with "
            "`pip install 'headwise[models]'` (or `pip install tokenizers`)."
        ) from err
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises a bare Exception for a bad file
        raise CheckpointError(f"{path}: not a readable tokenizers file ({err}).") from err
    return tokenizer


def configure_tokenizer(
    tokenizer: Tokenizer, config: SentenceConfig, *, pad_token_id: int, source: Path | str = "tokenizer"
) -> Tokenizer:
    """Set ``tokenizer`` up as sentence-transformers calls it (in place), and return it.

    Truncation to ``config.max_seq_length`` (longest first) and right padding to the
    longest text of each batch, whatever truncation and fixed padding the file stores
    (all-MiniLM-L6-v2's tokenizer.json says 128 and pads every text to 128).  The pad
    token is the file's, else ``pad_token_id``.
    """
    padding = tokenizer.padding
    pad_id = padding["pad_id"] if padding else pad_token_id
    pad_token = padding["pad_token"] if padding else tokenizer.id_to_token(pad_id)
    if pad_token is None:
        raise CheckpointError(
            f"{source}: the pad id {pad_id} (config.json's pad_token_id) is not in the vocabulary of "
            f"{tokenizer.get_vocab_size()} tokens; set pad_token_id to the id of the padding token."
        )
    tokenizer.enable_truncation(max_length=config.max_seq_length, strategy="longest_first", stride=0)
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad_token)
    return tokenizer
