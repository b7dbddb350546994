"""The BERT network built from headwise blocks, and its architecture spec.

Embeddings (word + position + token type, LayerNorm, dropout) feed a stack of
post-norm :class:`~headwise.modules.PostNormBlock` layers whose self-attention is a
:class:`headwise.Attention`.  Each layer has its own number of heads, read from its
weights, so a pruned model is an ordinary one.  :data:`BERT` maps config.json and
transformers' ``BertModel`` key names onto it; :func:`headwise.models.load` and
:func:`headwise.models.save` read and write Hugging Face folders through it, and
:class:`headwise.models.SentenceEncoder` adds the sentence pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headwise.errors import CheckpointError, ShapeError, fmt_shape, heads_do_not_divide
from headwise.models._config import config_values, head_counts
from headwise.models._spec import ArchitectureSpec
from headwise.modules import Attention, Encoder, FeedForward, PostNormBlock

__all__ = ["ACTIVATIONS", "BERT", "BertConfig", "BertEmbeddings", "BertModel", "BertPooler"]

#: ``hidden_act`` values of config.json and the activation each one builds.
ACTIVATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "gelu": ("GELU", {}),  # erf form, as transformers' "gelu"
    "gelu_new": ("GELU", {"approximate": "tanh"}),
    "gelu_pytorch_tanh": ("GELU", {"approximate": "tanh"}),
    "relu": ("ReLU", {}),
    "silu": ("SiLU", {}),
    "swish": ("SiLU", {}),
}


@dataclass(frozen=True)
class BertConfig:
    """The architecture of a BERT encoder, with Hugging Face's config.json names.

    ``num_attention_heads`` is the unpruned head count, which fixes the head dim
    ``hidden_size / num_attention_heads``; ``num_heads`` gives each layer's actual
    count (default: ``num_attention_heads`` everywhere).  ``with_pooler``: the network has
    BERT's pooler (set from the checkpoint; not a config.json key).  ``extra`` keeps the
    other keys of the config.json this came from, written back on save.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_heads: tuple[int, ...] = ()
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    with_pooler: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(heads_do_not_divide(self.hidden_size, self.num_attention_heads))
        num_heads = tuple(self.num_heads) or (self.num_attention_heads,) * self.num_hidden_layers
        if len(num_heads) != self.num_hidden_layers or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in num_heads
        ):
            raise ValueError(
                f"num_heads must give a positive head count for each of the {self.num_hidden_layers} "
                f"layers (num_hidden_layers), got {list(num_heads)}."
            )
        object.__setattr__(self, "num_heads", num_heads)
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id={self.pad_token_id} is outside the vocabulary (vocab_size={self.vocab_size})."
            )

    @property
    def head_dim(self) -> int:
        """D, the size of every head: hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings(nn.Module):
    """Word + token type + absolute position embeddings, then LayerNorm and dropout.

    Shape:
        input_ids (B, L), token_type_ids (B, L) or None -> (B, L, E).
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        size = config.hidden_size
        self.word_embeddings = nn.Embedding(
            config.vocab_size, size, padding_idx=config.pad_token_id, **factory
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, size, **factory)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, size, **factory)
        self.norm = nn.LayerNorm(size, eps=config.layer_norm_eps, **factory)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Embed token ids at positions 0 .. L-1.

        Shape:
            input_ids (B, L), token_type_ids (B, L) or None -> (B, L, E).
        """
        length = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, L, E)
        # tables are read through their modules (not .weight slices), so quantized tables work too
        if token_type_ids is None:
            x = x + self.token_type_embeddings(input_ids.new_zeros(1))  # type 0 everywhere, (1, E)
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(torch.arange(length, device=input_ids.device))  # positions 0 .. L-1, (L, E)
        return self.dropout(self.norm(x))


class BertPooler(nn.Module):
    """BERT's pooler: tanh(dense(first token)).  Kept so checkpoints round-trip; ``encode`` does not use it.

    Shape:
        hidden (B, L, E) -> (B, E).
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, device=device, dtype=dtype)

    def forward(self, hidden: Tensor) -> Tensor:
        """tanh(dense(hidden[:, 0])).

        Shape:
            hidden (B, L, E) -> (B, E).
        """
        first = hidden[:, 0]  # (B, E)
        return torch.tanh(self.dense(first))


def _activation(name: str) -> nn.Module:
    cls_name, kwargs = ACTIVATIONS[name]
    return getattr(nn, cls_name)(**kwargs)


def _layer(config: BertConfig, num_heads: int, factory: dict[str, Any]) -> PostNormBlock:
    size, eps = config.hidden_size, config.layer_norm_eps
    return PostNormBlock(
        Attention(
            size,
            num_heads,
            head_dim=config.head_dim,
            dropout=config.attention_probs_dropout_prob,
            **factory,
        ),
        # BERT has no dropout inside the feed-forward, only on its output (the block's dropout)
        FeedForward(size, config.intermediate_size, activation=_activation(config.hidden_act), **factory),
        attention_norm=nn.LayerNorm(size, eps=eps, **factory),
        feed_forward_norm=nn.LayerNorm(size, eps=eps, **factory),
        dropout=config.hidden_dropout_prob,
    )


class BertModel(nn.Module):
    """The BERT network: embeddings and post-norm blocks of :class:`headwise.Attention`.

    Build one from a folder with :func:`headwise.models.load` (which wraps it in a
    :class:`~headwise.models.SentenceEncoder`), or from a :class:`BertConfig`.

    Attributes: ``embeddings``, ``encoder`` (a :class:`headwise.modules.Encoder` whose
    ``blocks[i].attention`` is layer i's :class:`headwise.Attention`), ``pooler``
    (``None`` unless ``config.with_pooler``).
    """

    def __init__(
        self, config: BertConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.embeddings = BertEmbeddings(config, **factory)
        self.encoder = Encoder([_layer(config, heads, factory) for heads in config.num_heads])
        self.pooler = BertPooler(config, **factory) if config.with_pooler else None

    @property
    def attention_layers(self) -> list[Attention]:
        """Each layer's :class:`headwise.Attention`, first layer first."""
        return [block.attention for block in self.encoder.blocks]

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Each layer's head count, read from its weights (it changes when heads are pruned)."""
        return tuple(layer.num_heads for layer in self.attention_layers)

    def refresh_head_counts(self) -> None:
        """Make ``config.num_heads`` the layers' head counts again (called by ``prune_heads_``)."""
        self.config = dataclasses.replace(self.config, num_heads=self.num_heads)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        output_attentions: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Token states of the last layer, and each layer's attention weights on request.

        Args:
            input_ids: token ids.
            attention_mask: 1 (or True) for real tokens, 0 for padding; ``None`` = no padding.
            token_type_ids: segment ids; ``None`` = segment 0 everywhere.
            output_attentions: also return every layer's per-head attention weights.

        Returns:
            ``(hidden, attentions)``: ``attentions`` is ``None`` unless ``output_attentions``,
            else a tuple with one map per layer.  Rows of padding queries are computed
            (as in transformers) but carry no meaning.

        Shape:
            input_ids, attention_mask, token_type_ids (B, L) -> hidden (B, L, E),
            attentions[l] (B, H_l, L, L) with H_l the heads of layer l.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, L, E)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        hidden, maps = self.encoder(x, attn_mask=mask, need_weights=output_attentions)
        return hidden, None if maps is None else tuple(maps)

    def _check_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None
    ) -> None:
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dtype.is_floating_point
            or input_ids.dtype == torch.bool
        ):
            got = input_ids.dtype if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise TypeError(
                f"input_ids must be an integer tensor of token ids, got {got}; use model.tokenize(texts)."
            )
        if input_ids.dim() != 2:
            raise ShapeError(
                f"input_ids has shape {fmt_shape(input_ids.shape)} but the model expects (batch, seq); "
                "for one text use input_ids[None]."
            )
        length, limit = input_ids.shape[1], self.config.max_position_embeddings
        if length > limit:
            raise ShapeError(
                f"input_ids has {length} tokens per row but the model has max_position_embeddings={limit}; "
                f"truncate to {limit} (the model's tokenize truncates)."
            )
        check_token_ids(input_ids, self.config.vocab_size)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ShapeError(
                    f"{name} has shape {fmt_shape(t.shape)} but input_ids has {fmt_shape(input_ids.shape)}; "
                    "both are (batch, seq)."
                )
        if token_type_ids is not None:
            check_token_ids(token_type_ids, self.config.type_vocab_size, name="token_type_ids")


def check_token_ids(ids: Tensor, vocab_size: int, *, name: str = "input_ids") -> None:
    """Every id in ``[0, vocab_size)``; otherwise a ValueError with the offending value.

    Reads two values back (min and max); skipped under ``torch.compile``.
    """
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds the id {bad}, outside the vocabulary of {vocab_size} (ids 0..{vocab_size - 1}); "
            "tokenize with the model's own tokenizer."
        )


# -- the architecture spec: config.json and transformers' BertModel key names ------------------------

#: Keys of ``BertConfig`` read from config.json, with their types, and the optional ones with
#: the defaults of transformers' BertConfig.
_REQUIRED: dict[str, type] = {
    "vocab_size": int,
    "hidden_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "intermediate_size": int,
}
_OPTIONAL: dict[str, tuple[type, Any]] = {
    "hidden_act": (str, "gelu"),
    "max_position_embeddings": (int, 512),
    "type_vocab_size": (int, 2),
    "layer_norm_eps": (float, 1e-12),
    "hidden_dropout_prob": (float, 0.1),
    "attention_probs_dropout_prob": (float, 0.1),
    "pad_token_id": (int, 0),
}
#: config.json key with each layer's head count; absent = num_attention_heads everywhere.
HEADS_KEY = "headwise_num_heads"


def read_config(raw: dict[str, Any], path: Path) -> BertConfig:
    """config.json as a :class:`BertConfig`; errors name the file and the key."""
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
    values = config_values(raw, path, required=_REQUIRED, optional=_OPTIONAL)
    heads = head_counts(raw, HEADS_KEY, path)
    if heads is not None:
        values["num_heads"] = heads
    elif raw.get("pruned_heads"):
        # transformers 4.x records pruning as {layer: [removed heads]}
        total, layers = values["num_attention_heads"], values["num_hidden_layers"]
        pruned = {int(k): v for k, v in raw["pruned_heads"].items()}
        values["num_heads"] = tuple(total - len(pruned.get(i, ())) for i in range(layers))
    extra = {key: value for key, value in raw.items() if key not in values and key not in (HEADS_KEY, "pruned_heads")}
    try:
        return BertConfig(**values, extra=extra)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err


def write_config(config: BertConfig) -> dict[str, Any]:
    """The config.json of ``config`` (the keys it came with, the sizes, and each layer's head count)."""
    raw = {key: value for key, value in config.extra.items() if key not in ("model_type", "architectures")}
    raw.update({key: getattr(config, key) for key in (*_REQUIRED, *_OPTIONAL)})
    raw.update(
        {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "position_embedding_type": "absolute",
            HEADS_KEY: list(config.num_heads),
        }
    )
    return raw


def _build(config: BertConfig, *, dtype: torch.dtype | None = None) -> BertModel:
    return BertModel(config, dtype=dtype)


def _shape_hint(key: str, config: BertConfig) -> str:
    if ".attention.self." in key or ".attention.output.dense.weight" in key:
        layer = int(key.split(".")[2])
        return (
            f" (layer {layer} with {config.num_heads[layer]} heads of dim {config.head_dim}, from config.json's "
            f"{HEADS_KEY!r} or num_attention_heads={config.num_attention_heads}). If the layer was pruned, "
            f"list every layer's head count in config.json's {HEADS_KEY!r}."
        )
    return " (from config.json's sizes)."


def _unexpected_hint(key: str, config: BertConfig) -> str:
    if key.startswith("bert."):
        return (
            "Its keys start with 'bert.': a model with a task head. headwise loads the bare "
            "BertModel; save that part (model.bert) on its own."
        )
    return f"config.json says num_hidden_layers={config.num_hidden_layers}."


#: BERT in transformers' ``BertModel`` key names.
BERT = ArchitectureSpec(
    name="BertModel",
    model_types=("bert",),
    network=BertModel,
    read_config=read_config,
    write_config=write_config,
    build=_build,
    modules=(
        ("embeddings.word_embeddings", "embeddings.word_embeddings"),
        ("embeddings.position_embeddings", "embeddings.position_embeddings"),
        ("embeddings.token_type_embeddings", "embeddings.token_type_embeddings"),
        ("embeddings.norm", "embeddings.LayerNorm"),
        ("pooler.dense", "pooler.dense"),
        ("encoder.blocks.{}.attention.q_proj", "encoder.layer.{}.attention.self.query"),
        ("encoder.blocks.{}.attention.k_proj", "encoder.layer.{}.attention.self.key"),
        ("encoder.blocks.{}.attention.v_proj", "encoder.layer.{}.attention.self.value"),
        ("encoder.blocks.{}.attention.out_proj", "encoder.layer.{}.attention.output.dense"),
        ("encoder.blocks.{}.attention_norm", "encoder.layer.{}.attention.output.LayerNorm"),
        ("encoder.blocks.{}.feed_forward.up", "encoder.layer.{}.intermediate.dense"),
        ("encoder.blocks.{}.feed_forward.down", "encoder.layer.{}.output.dense"),
        ("encoder.blocks.{}.feed_forward_norm", "encoder.layer.{}.output.LayerNorm"),
    ),
    dtype_key="embeddings.word_embeddings.weight",
    # buffers some checkpoints store, which transformers recomputes
    ignored=(r"embeddings\.position_ids", r"embeddings\.token_type_ids"),
    shape_hint=_shape_hint,
    unexpected_hint=_unexpected_hint,
    layers_described=lambda config: f"{config.num_hidden_layers} layers of hidden size {config.hidden_size}",
    from_checkpoint=lambda config, keys: dataclasses.replace(
        config, with_pooler=any(key.startswith("pooler.") for key in keys)
    ),
    unpruned=lambda config: dataclasses.replace(config, num_heads=()),
    head_layout=lambda config: ((config.num_attention_heads,) * 2,) * config.num_hidden_layers,
)
