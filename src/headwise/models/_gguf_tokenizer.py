"""The tokenizer a GGUF file describes in its metadata, built with the ``tokenizers`` library.

A GGUF carries no ``tokenizer.json``: its ``tokenizer.ggml.*`` keys hold the vocabulary, the
merges, each token's type and the special token ids.  This module rebuilds the byte-level BPE
tokenizer of a ``tokenizer.ggml.model = "gpt2"`` file the way transformers' GGUF converter
does, so the ids match ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``::

    source = GGUFSource(path)
    tokenizer = tokenizer_from_gguf(source.metadata, source.path)
    special = special_tokens_from_gguf(source.metadata, source.path)
    ids = tokenizer.encode("<|im_start|>user\\nHi<|im_end|>").ids

What is built, for the file's ``tokenizer.ggml.pre`` values listed in :data:`BYTE_LEVEL_PRE`:

- model: BPE over the vocabulary and merges, no unknown token, no byte fallback; a token not
  spelled in GPT-2's byte alphabet is respelled through it (its UTF-8 bytes, one character each);
- pre-tokenizer: ``ByteLevel`` with GPT-2's split regex, a prefix space only when
  ``tokenizer.ggml.add_space_prefix`` is true; decoder: ``ByteLevel``;
- added tokens: every token of type 3 (control) spelled in the byte alphabet, and the bos /
  eos / unk / pad tokens, as special tokens; tokens of type 4 (user defined) as plain added
  tokens; none is normalized;
- post-processor: ``TemplateProcessing`` with the bos token in front when
  ``tokenizer.ggml.add_bos_token`` is true and the eos token behind when
  ``tokenizer.ggml.add_eos_token`` is true (both default to false for this kind of file).

Other tokenizer kinds (sentencepiece ``"llama"``, ``"t5"``, ...) and other split regexes raise
:class:`~headwise.errors.CheckpointError` instead of being guessed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwise.errors import CheckpointError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "BYTE_LEVEL_PRE",
    "SpecialTokens",
    "chat_template_from_gguf",
    "special_tokens_from_gguf",
    "tokenizer_from_gguf",
]

#: ``tokenizer.ggml.pre`` values whose text splitting is GPT-2's ByteLevel regex in transformers'
#: converter ("smollm" is SmolLM / SmolLM2's; transformers has no special split for it).
BYTE_LEVEL_PRE = ("gpt2", "smollm")

_MODEL_KEY, _PRE_KEY = "tokenizer.ggml.model", "tokenizer.ggml.pre"
_TOKENS_KEY, _MERGES_KEY, _TYPES_KEY = "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"
_TEMPLATE_KEY = "tokenizer.chat_template"
#: llama.cpp's token types
_CONTROL, _USER_DEFINED = 3, 4
#: name -> GGUF key of its id
_SPECIAL_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
}


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens a GGUF file names: each as its string and id, ``None`` where the file has none."""

    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    unk_token: str | None
    unk_token_id: int | None
    pad_token: str | None
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool

    def template_kwargs(self) -> dict[str, str]:
        """The token strings a chat template may read (``bos_token``, ...), as transformers passes them."""
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def special_tokens_from_gguf(metadata: Mapping[str, Any], path: str | os.PathLike[str]) -> SpecialTokens:
    """The bos / eos / unk / pad tokens and the add-bos / add-eos flags of a GGUF file.

    Raises:
        CheckpointError: a missing vocabulary, an id out of its range, a flag that is not a bool.
    """
    path = Path(path)
    tokens = _string_list(metadata, _TOKENS_KEY, path)
    values: dict[str, Any] = {}
    for name, key in _SPECIAL_KEYS.items():
        token_id = metadata.get(key)
        if token_id is not None and (
            isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < len(tokens)
        ):
            raise CheckpointError(
                f"{path}: metadata key {key!r} is {token_id!r}; expected a token id in [0, {len(tokens)}) "
                f"({len(tokens)} tokens in {_TOKENS_KEY!r})."
            )
        values[f"{name}_token_id"] = token_id
        values[f"{name}_token"] = None if token_id is None else tokens[token_id]
    for flag in ("add_bos_token", "add_eos_token"):
        key = f"tokenizer.ggml.{flag}"
        value = metadata.get(key, False)  # transformers' default for byte-level files
        if not isinstance(value, bool):
            raise CheckpointError(f"{path}: metadata key {key!r} is {value!r}; expected true or false.")
        token = flag.split("_")[1]
        if value and values[f"{token}_token_id"] is None:
            raise CheckpointError(
                f"{path}: metadata key {key!r} is true, but the file has no {_SPECIAL_KEYS[token]!r} to add; "
                "the tokenizer metadata is incomplete."
            )
        values[flag] = value
    return SpecialTokens(**values)


def tokenizer_from_gguf(metadata: Mapping[str, Any], path: str | os.PathLike[str]) -> Tokenizer:
    """The byte-level BPE tokenizer of a GGUF file's metadata (see the module docstring).

    Args:
        metadata: the file's key/values (``GGUFSource.metadata``).
        path: the file, named in error messages.

    Raises:
        CheckpointError: another tokenizer kind or split regex, or malformed tokenizer metadata
            (the message names the key).
        ImportError: the ``tokenizers`` package is missing.
    """
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError as err:
        raise ImportError(
            "building a GGUF file's tokenizer needs the 'tokenizers' package; install it with "
            "`pip install 'headwise[models]'` (or `pip install tokenizers`)."
        ) from err
    path = Path(path)
    kind = metadata.get(_MODEL_KEY)
    if kind != "gpt2":
        raise CheckpointError(
            f"{path}: metadata key {_MODEL_KEY!r} is {kind!r}; only 'gpt2' (byte-level BPE) tokenizers are "
            "built from GGUF metadata here. Use the model's tokenizer.json from its Hugging Face repository."
        )
    pre = metadata.get(_PRE_KEY)
    if pre not in BYTE_LEVEL_PRE:
        raise CheckpointError(
            f"{path}: metadata key {_PRE_KEY!r} is {pre!r}; the text splitting is known only for "
            f"{list(BYTE_LEVEL_PRE)} (GPT-2's regex), and guessing another would give different ids. Use the "
            "model's tokenizer.json from its Hugging Face repository."
        )
    special = special_tokens_from_gguf(metadata, path)
    tokens = _string_list(metadata, _TOKENS_KEY, path)
    types = metadata.get(_TYPES_KEY, [])
    if not isinstance(types, list) or (types and len(types) != len(tokens)):
        count = len(types) if isinstance(types, list) else type(types).__name__
        raise CheckpointError(
            f"{path}: metadata key {_TYPES_KEY!r} has {count} entries for {len(tokens)} tokens; expected one "
            "type per token. The tokenizer metadata is malformed."
        )
    types = types or [1] * len(tokens)  # no types: every token is a normal one (llama.cpp's type 1)
    add_prefix_space = metadata.get("tokenizer.ggml.add_space_prefix", False)
    if not isinstance(add_prefix_space, bool):
        raise CheckpointError(
            f"{path}: metadata key 'tokenizer.ggml.add_space_prefix' is {add_prefix_space!r}; expected true or false."
        )

    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        spelled = token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))
        if spelled in vocab:
            raise CheckpointError(
                f"{path}: metadata key {_TOKENS_KEY!r} spells tokens {vocab[spelled]} and {index} the same "
                f"in the byte alphabet ({spelled!r}); a BPE vocabulary needs distinct tokens."
            )
        vocab[spelled] = index
    merges = []
    for index, merge in enumerate(_string_list(metadata, _MERGES_KEY, path)):
        pair = tuple(merge.split(" "))
        if len(pair) != 2 or not all(pair):
            raise CheckpointError(
                f"{path}: metadata key {_MERGES_KEY!r} entry {index} is {merge!r}; expected two tokens "
                "separated by one space."
            )
        merges.append(pair)
    try:
        model = models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    except Exception as err:  # the Rust library raises a bare Exception for an inconsistent vocabulary
        raise CheckpointError(
            f"{path}: metadata keys {_TOKENS_KEY!r} and {_MERGES_KEY!r} do not make a BPE model ({err})."
        ) from err
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()

    control = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL and set(t) <= alphabet]
    named = [special.bos_token, special.eos_token, special.unk_token, special.pad_token]
    specials = list(dict.fromkeys(control + [t for t in named if t is not None]))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    user_defined = [t for t, kind in zip(tokens, types, strict=True) if kind == _USER_DEFINED and t in vocab]
    if user_defined:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])

    # transformers' template: "[bos:0] $A:0 [eos:0]" and, for pairs, "... [bos:1] $B:1 [eos:1]"
    bos = [special.bos_token] if special.add_bos_token else []
    eos = [special.eos_token] if special.add_eos_token else []
    single = [*(f"{t}:0" for t in bos), "$A:0", *(f"{t}:0" for t in eos)]
    pair = [*single, *(f"{t}:1" for t in bos), "$B:1", *(f"{t}:1" for t in eos)]
    named_ids = {special.bos_token: special.bos_token_id, special.eos_token: special.eos_token_id}
    ids = {t: named_ids[t] for t in bos + eos}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=list(ids.items())
    )
    return tokenizer


def chat_template_from_gguf(metadata: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """The file's default chat template (``tokenizer.chat_template``), for :func:`headwise.models._chat.render_chat`."""
    template = metadata.get(_TEMPLATE_KEY)
    if not isinstance(template, str) or not template:
        raise CheckpointError(
            f"{path}: metadata key {_TEMPLATE_KEY!r} is {'missing' if template is None else repr(template)}; "
            "the file has no chat template. Pass one yourself (e.g. from the model's tokenizer_config.json)."
        )
    return template


def _string_list(metadata: Mapping[str, Any], key: str, path: Path) -> list[str]:
    value = metadata.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        shown = "missing" if value is None else f"a {type(value).__name__}"
        raise CheckpointError(
            f"{path}: metadata key {key!r} is {shown}; expected a non-empty array of strings. The file's "
            "tokenizer metadata is incomplete: convert it again."
        )
    return value


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other
    68 (space, control characters, ...) for the characters from U+0100 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return dict(sorted(table.items()))
