"""The Llama network built from headwise blocks, and its architecture spec.

Token embeddings feed a stack of pre-norm blocks (RMSNorm, grouped-query
:class:`headwise.Attention` with an injected :class:`~headwise.modules.RotaryEmbedding`,
a SwiGLU :class:`~headwise.modules.GatedFeedForward`), a final RMSNorm and the language
model head, tied to the embeddings when the config says so.  Each layer has its own
query and key/value head counts (pruned models are ordinary).  :data:`LLAMA` maps
config.json and transformers' ``LlamaForCausalLM`` key names onto it, for Hugging Face
folders and for GGUF files (:mod:`headwise.models._gguf` presents those under the same
names).  ``model_type`` ``"mistral"`` (without a sliding window) reads through the same
spec: only its config differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headwise.errors import CheckpointError, ShapeError, fmt_shape
from headwise.models._config import config_values, head_counts
from headwise.models._spec import ArchitectureSpec
from headwise.models.bert import check_token_ids
from headwise.modules import (
    Attention,
    CausalDecoder,
    GatedFeedForward,
    KVCache,
    Linear,
    PreNormBlock,
    RotaryEmbedding,
)

__all__ = ["LLAMA", "LlamaConfig", "LlamaModel"]


@dataclass(frozen=True)
class LlamaConfig:
    """The architecture of a Llama decoder, with Hugging Face's config.json names.

    ``num_attention_heads`` / ``num_key_value_heads`` are the unpruned head counts;
    ``num_heads`` / ``num_kv_heads`` give each layer's actual counts (default: the unpruned
    ones everywhere).  ``head_dim`` defaults to ``hidden_size / num_attention_heads``.
    ``extra`` keeps the other keys of the config.json this came from, written back on save.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    num_heads: tuple[int, ...] = ()
    num_kv_heads: tuple[int, ...] = ()
    kv_index: tuple[tuple[int, ...] | None, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        kv = self.num_key_value_heads if self.num_key_value_heads is not None else self.num_attention_heads
        object.__setattr__(self, "num_key_value_heads", kv)
        if kv <= 0 or self.num_attention_heads % kv:
            raise ValueError(
                f"num_key_value_heads={kv} must divide num_attention_heads={self.num_attention_heads}."
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; give head_dim explicitly."
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int (rotary pairs), got {self.head_dim}.")
        layers = self.num_hidden_layers
        heads = tuple(self.num_heads) or (self.num_attention_heads,) * layers
        kv_heads = tuple(self.num_kv_heads) or (kv,) * layers
        for name, counts in (("num_heads", heads), ("num_kv_heads", kv_heads)):
            if len(counts) != layers or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in counts):
                raise ValueError(
                    f"{name} must give a positive head count for each of the {layers} layers "
                    f"(num_hidden_layers), got {list(counts)}."
                )
        index = tuple(None if i is None else tuple(i) for i in self.kv_index) or (None,) * layers
        if len(index) != layers:
            raise ValueError(f"kv_index must give one entry (a list, or null) per layer, got {len(index)} for {layers}.")
        for i, (h, k, mapping) in enumerate(zip(heads, kv_heads, index, strict=True)):
            if mapping is None and h % k:
                raise ValueError(
                    f"layer {i} has {h} query heads and {k} kv heads; the kv heads must divide the query heads "
                    "unless kv_index maps each query head to its kv head."
                )
            if mapping is not None and (len(mapping) != h or any(not 0 <= j < k for j in mapping)):
                raise ValueError(f"layer {i}'s kv_index must give each of its {h} query heads a kv head in 0..{k - 1}.")
        object.__setattr__(self, "num_heads", heads)
        object.__setattr__(self, "num_kv_heads", kv_heads)
        object.__setattr__(self, "kv_index", index)
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"rms_norm_eps and rope_theta must be positive, got {self.rms_norm_eps!r} and {self.rope_theta!r}."
            )
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence id (config.json may list several)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)


def _block(
    config: LlamaConfig, heads: int, kv_heads: int, kv_index: tuple[int, ...] | None, factory: dict[str, Any]
) -> PreNormBlock:
    size, eps = config.hidden_size, config.rms_norm_eps
    attention = Attention(
        size,
        heads,
        num_kv_heads=kv_heads,
        kv_index=kv_index,
        head_dim=config.head_dim,
        bias=config.attention_bias,
        rotary=RotaryEmbedding(config.head_dim, base=config.rope_theta),
        **factory,
    )
    return PreNormBlock(
        attention,
        GatedFeedForward(size, config.intermediate_size, bias=config.mlp_bias, **factory),
        attention_norm=nn.RMSNorm(size, eps=eps, **factory),
        feed_forward_norm=nn.RMSNorm(size, eps=eps, **factory),
    )


class LlamaModel(nn.Module):
    """A Llama-family causal language model: embeddings, pre-norm blocks, final norm and head.

    Build one from a checkpoint with :func:`headwise.models.load` (which wraps it in a
    :class:`~headwise.models.CausalLM`), or from a :class:`LlamaConfig`.

    Attributes: ``embed_tokens``, ``decoder`` (a :class:`headwise.modules.CausalDecoder` whose
    ``blocks[i].attention`` is layer i's :class:`headwise.Attention` and whose ``norm`` is the
    final RMSNorm), ``lm_head`` (its weight is ``embed_tokens.weight`` when tied).
    """

    def __init__(
        self, config: LlamaConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **factory)
        layout = zip(config.num_heads, config.num_kv_heads, config.kv_index, strict=True)
        blocks = [_block(config, h, k, index, factory) for h, k, index in layout]
        self.decoder = CausalDecoder(blocks, norm=nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **factory))
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, **factory)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @property
    def attention_layers(self) -> list[Attention]:
        """Each layer's :class:`headwise.Attention`, first layer first."""
        return [block.attention for block in self.decoder.blocks]

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Each layer's query-head count, read from its weights."""
        return tuple(layer.num_heads for layer in self.attention_layers)

    @property
    def num_kv_heads(self) -> tuple[int, ...]:
        """Each layer's key/value-head count, read from its weights."""
        return tuple(layer.num_kv_heads for layer in self.attention_layers)

    def refresh_head_counts(self) -> None:
        """Make the config's per-layer head counts the layers' again (called by ``prune_heads_``)."""
        self.config = dataclasses.replace(
            self.config, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            kv_index=tuple(layer.kv_index for layer in self.attention_layers),
        )

    def new_caches(self, batch_size: int, max_len: int) -> list[KVCache]:
        """One preallocated :class:`~headwise.KVCache` per layer."""
        return self.decoder.new_caches(batch_size, max_len)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
        output_attentions: bool = False,
        logits_for: slice | Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Next-token logits, and each layer's per-head attention maps on request.

        Args:
            input_ids: token ids of the new positions.
            attention_mask: 1 for real tokens, 0 for padding, over every position the caches
                hold plus the new ones (``None``: no padding).  Left padding for batched
                generation: pass ``position_ids`` counting real tokens only.
            position_ids: rotary positions of the new tokens; default: each cache's length +
                0 .. L-1.
            caches: one :class:`~headwise.KVCache` per layer (:meth:`new_caches`); the new keys
                and values are appended.
            output_attentions: also return every layer's per-head maps.
            logits_for: the positions to compute logits for: a slice (``slice(-1, None)`` in
                generation: the head is the largest matrix product of a step) or a (P,) tensor
                of positions; default all.

        Returns:
            ``(logits, attentions)``; ``attentions`` is ``None`` unless ``output_attentions``.

        Shape:
            input_ids (B, L), attention_mask (B, S) with S = cached + L, position_ids (B, L) or
            (L,) -> logits (B, L', V), attentions[l] (B, H_l, L, S).
        """
        self._check_inputs(input_ids, attention_mask, caches)
        if position_ids is None:  # computed once for every layer
            held = 0 if not caches else caches[0].length
            position_ids = torch.arange(held, held + input_ids.shape[1], device=input_ids.device)  # (L,)
        x = self.embed_tokens(input_ids)  # (B, L, E)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        hidden, maps = self.decoder(
            x, attn_mask=mask, caches=caches, need_weights=output_attentions, position_ids=position_ids
        )  # (B, L, E)
        if logits_for is not None:
            hidden = hidden[:, logits_for]  # (B, L', E)
        return self.lm_head(hidden), None if maps is None else tuple(maps)

    def _check_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, caches: Sequence[KVCache] | None
    ) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            got = input_ids.dtype if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise TypeError(f"input_ids must be an integer tensor of token ids, got {got}; use model.tokenize(texts).")
        if input_ids.dim() != 2:
            raise ShapeError(
                f"input_ids has shape {fmt_shape(input_ids.shape)} but the model expects (batch, seq); "
                "for one text use input_ids[None]."
            )
        held = 0 if not caches else caches[0].length
        total, limit = held + input_ids.shape[1], self.config.max_position_embeddings
        if total > limit:
            raise ShapeError(
                f"{total} positions ({held} cached + {input_ids.shape[1]} new) exceed the model's "
                f"max_position_embeddings={limit}; shorten the input."
            )
        check_token_ids(input_ids, self.config.vocab_size)
        if attention_mask is not None and attention_mask.shape != (input_ids.shape[0], total):
            raise ShapeError(
                f"attention_mask has shape {fmt_shape(attention_mask.shape)} but the batch is "
                f"{fmt_shape(input_ids.shape)} with {held} cached positions; it is (batch, cached + new) = "
                f"{fmt_shape((input_ids.shape[0], total))}."
            )


# -- the architecture spec: config.json and transformers' LlamaForCausalLM key names --------------

_REQUIRED: dict[str, type] = {
    "vocab_size": int,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
}
_OPTIONAL: dict[str, tuple[type, Any]] = {
    "num_key_value_heads": (int, None),
    "head_dim": (int, None),
    "rms_norm_eps": (float, 1e-6),
    "rope_theta": (float, 10000.0),
    "max_position_embeddings": (int, 2048),
    "tie_word_embeddings": (bool, False),
    "attention_bias": (bool, False),
    "mlp_bias": (bool, False),
    "bos_token_id": (int, None),
    "pad_token_id": (int, None),
}
#: config.json keys with each layer's query and kv head counts, and (for kv groups of unequal size)
#: each query head's kv head, written by headwise for pruned models.
HEADS_KEY, KV_HEADS_KEY, KV_INDEX_KEY = "headwise_num_heads", "headwise_num_key_value_heads", "headwise_kv_index"
_WRITTEN = {"model_type", "architectures", HEADS_KEY, KV_HEADS_KEY, KV_INDEX_KEY, "eos_token_id", "rope_parameters"}


def read_config(raw: dict[str, Any], path: Path) -> LlamaConfig:
    """config.json as a :class:`LlamaConfig`; errors name the file and the key."""
    for key in ("rope_scaling", "sliding_window"):
        if raw.get(key) is not None:
            raise CheckpointError(
                f"{path}: {key!r} is {raw[key]!r}; headwise.models implements Llama with plain rotary "
                f"positions over full attention (no {key.replace('_', ' ')})."
            )
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: 'hidden_act' is {raw['hidden_act']!r}; Llama's feed-forward is SwiGLU (silu).")
    values = config_values(raw, path, required=_REQUIRED, optional=_OPTIONAL)
    rope = raw.get("rope_parameters")  # transformers 5 writes rope_theta here
    if isinstance(rope, dict) and raw.get("rope_theta") is None:
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(
                f"{path}: 'rope_parameters' has rope_type {rope.get('rope_type')!r}; only plain rotary "
                "positions ('default') are implemented."
            )
        values.update(config_values(rope, path, required={}, optional={"rope_theta": (float, 10000.0)}))
    eos = raw.get("eos_token_id")
    if eos is not None and not (
        (isinstance(eos, int) and not isinstance(eos, bool)) or (isinstance(eos, list) and all(isinstance(e, int) for e in eos))
    ):
        raise CheckpointError(f"{path}: 'eos_token_id' is {eos!r}; expected an id or a list of ids.")
    values["eos_token_id"] = tuple(eos) if isinstance(eos, list) else eos
    for key, name in ((HEADS_KEY, "num_heads"), (KV_HEADS_KEY, "num_kv_heads")):
        counts = head_counts(raw, key, path)
        if counts is not None:
            values[name] = counts
    index = raw.get(KV_INDEX_KEY)
    if index is not None:
        if not isinstance(index, list) or not all(
            entry is None or (isinstance(entry, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in entry))
            for entry in index
        ):
            raise CheckpointError(f"{path}: {KV_INDEX_KEY!r} must be a list with, per layer, null or a list of kv heads.")
        values["kv_index"] = tuple(None if entry is None else tuple(entry) for entry in index)
    extra = {key: value for key, value in raw.items() if key not in values and key not in _WRITTEN}
    try:
        return LlamaConfig(**values, extra=extra)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err


def write_config(config: LlamaConfig) -> dict[str, Any]:
    """The config.json of ``config``, as transformers' ``LlamaConfig`` reads it, with each layer's head counts."""
    raw = dict(config.extra)
    raw.update({key: getattr(config, key) for key in (*_REQUIRED, *_OPTIONAL)})
    raw.update(
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_act": "silu",
            "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
            HEADS_KEY: list(config.num_heads),
            KV_HEADS_KEY: list(config.num_kv_heads),
        }
    )
    if any(index is not None for index in config.kv_index):
        raw[KV_INDEX_KEY] = [None if index is None else list(index) for index in config.kv_index]
    return raw


def _build(config: LlamaConfig, *, dtype: torch.dtype | None = None) -> LlamaModel:
    return LlamaModel(config, dtype=dtype)


def _shape_hint(key: str, config: LlamaConfig) -> str:
    if ".self_attn." in key:
        layer = int(key.split(".")[2])
        return (
            f" (layer {layer} with {config.num_heads[layer]} query and {config.num_kv_heads[layer]} kv heads of dim "
            f"{config.head_dim}). If the layer was pruned, list every layer's head counts in config.json's "
            f"{HEADS_KEY!r} and {KV_HEADS_KEY!r}."
        )
    return " (from config.json's sizes)."


def _unpruned(config: LlamaConfig) -> LlamaConfig:
    return dataclasses.replace(config, num_heads=(), num_kv_heads=(), kv_index=())


#: Llama in transformers' ``LlamaForCausalLM`` key names.
LLAMA = ArchitectureSpec(
    name="LlamaForCausalLM",
    model_types=("llama", "mistral"),
    network=LlamaModel,
    read_config=read_config,
    write_config=write_config,
    build=_build,
    modules=(
        ("embed_tokens", "model.embed_tokens"),
        ("decoder.blocks.{}.attention.q_proj", "model.layers.{}.self_attn.q_proj"),
        ("decoder.blocks.{}.attention.k_proj", "model.layers.{}.self_attn.k_proj"),
        ("decoder.blocks.{}.attention.v_proj", "model.layers.{}.self_attn.v_proj"),
        ("decoder.blocks.{}.attention.out_proj", "model.layers.{}.self_attn.o_proj"),
        ("decoder.blocks.{}.attention_norm", "model.layers.{}.input_layernorm"),
        ("decoder.blocks.{}.feed_forward.gate", "model.layers.{}.mlp.gate_proj"),
        ("decoder.blocks.{}.feed_forward.up", "model.layers.{}.mlp.up_proj"),
        ("decoder.blocks.{}.feed_forward.down", "model.layers.{}.mlp.down_proj"),
        ("decoder.blocks.{}.feed_forward_norm", "model.layers.{}.post_attention_layernorm"),
        ("decoder.norm", "model.norm"),
        ("lm_head", "lm_head"),
    ),
    dtype_key="model.embed_tokens.weight",
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    tied={"lm_head.weight": "embed_tokens.weight"},
    is_tied=lambda config: config.tie_word_embeddings,
    shape_hint=_shape_hint,
    layers_described=lambda config: f"{config.num_hidden_layers} layers of hidden size {config.hidden_size}",
    unpruned=_unpruned,
    head_layout=lambda config: ((config.num_attention_heads, config.num_key_value_heads),) * config.num_hidden_layers,
)
