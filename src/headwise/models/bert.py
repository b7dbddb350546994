"""A BERT-family encoder built from headwise blocks, with sentence-transformers' encode.

Embeddings (word + position + token type, LayerNorm, dropout) feed a stack of
post-norm :class:`~headwise.modules.PostNormBlock` layers whose self-attention is a
:class:`headwise.Attention`.  Each layer has its own number of heads, read from its
weights, so a pruned model is an ordinary one.  Load and save Hugging Face folders
with :func:`headwise.models.load` and :meth:`BertEncoder.save`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise.errors import ShapeError, fmt_shape, heads_do_not_divide
from headwise.models._sentence import SentenceConfig, configure_tokenizer, pool
from headwise.modules import Attention, Encoder, FeedForward, PostNormBlock

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["ACTIVATIONS", "ENCODE_WINDOW", "BertConfig", "BertEmbeddings", "BertEncoder", "BertPooler"]

#: :meth:`BertEncoder.encode` tokenizes this many batches at a time and sorts them by token count
#: (a bound on the token ids held at once, however many texts come in).
ENCODE_WINDOW = 64

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
    count (default: ``num_attention_heads`` everywhere).  ``extra`` keeps the other
    keys of the config.json this came from, written back on save.
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


class BertEncoder(nn.Module):
    """A BERT encoder: embeddings and post-norm blocks of :class:`headwise.Attention`.

    Build one from a folder with :func:`headwise.models.load`.  ``model(...)`` gives
    token states and, on request, every layer's attention weights; :meth:`encode`
    gives sentence embeddings exactly as sentence-transformers computes them.

    Args:
        config: the architecture; ``config.num_heads`` sets each layer's head count.
        sentence_config: truncation, pooling and normalization for :meth:`encode`;
            default: ``max_position_embeddings``, mean pooling, no normalization.
        tokenizer: a ``tokenizers.Tokenizer`` (needed by :meth:`tokenize` and :meth:`encode`);
            its truncation is set to ``sentence_config.max_seq_length`` and its padding to
            the longest text of each batch, as sentence-transformers calls it.
        pooler: a :class:`BertPooler`, when the checkpoint has one.
        source: the folder the model came from, for messages.

    Attributes: ``embeddings``, ``encoder`` (a :class:`headwise.modules.Encoder` whose
    ``blocks[i].attention`` is layer i's :class:`headwise.Attention`), ``pooler``.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        sentence_config: SentenceConfig | None = None,
        tokenizer: Tokenizer | None = None,
        pooler: BertPooler | None = None,
        source: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.sentence_config = sentence_config or SentenceConfig(
            max_seq_length=config.max_position_embeddings
        )
        if self.sentence_config.max_seq_length > config.max_position_embeddings:
            raise ValueError(
                f"sentence_config.max_seq_length={self.sentence_config.max_seq_length} exceeds "
                f"max_position_embeddings={config.max_position_embeddings}; lower it."
            )
        self.source = None if source is None else Path(source)
        if tokenizer is not None:
            configure_tokenizer(
                tokenizer,
                self.sentence_config,
                pad_token_id=config.pad_token_id,
                source=self.source / "tokenizer.json" if self.source is not None else "tokenizer",
            )
        self.tokenizer = tokenizer
        self.embeddings = BertEmbeddings(config, **factory)
        self.encoder = Encoder([_layer(config, heads, factory) for heads in config.num_heads])
        self.pooler = pooler

    @property
    def attention_layers(self) -> list[Attention]:
        """Each layer's :class:`headwise.Attention`, first layer first."""
        return [block.attention for block in self.encoder.blocks]

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Each layer's head count, read from its weights (it changes when heads are pruned)."""
        return tuple(layer.num_heads for layer in self.attention_layers)

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
            input_ids: token ids, e.g. from :meth:`tokenize`.
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
        hidden, maps = self.encoder(
            x, attn_mask=_padding_mask(attention_mask), need_weights=output_attentions
        )
        return hidden, None if maps is None else tuple(maps)

    def tokenize(self, texts: str | Sequence[str]) -> dict[str, Tensor]:
        """Token ids of ``texts``, truncated to ``max_seq_length`` and padded to the longest.

        Texts are stripped (and lower-cased if ``sentence_config.do_lower_case``) as
        sentence-transformers does.  The tensors are on the model's device.

        Shape:
            returns ``input_ids``, ``attention_mask``, ``token_type_ids``, each (B, L).
        """
        if self.tokenizer is None:
            where = f"the folder {self.source}" if self.source is not None else "this model"
            raise ValueError(
                f"{where} has no tokenizer (no tokenizer.json); pass token ids to the model directly, "
                "or build it with tokenizer=tokenizers.Tokenizer.from_file(...)."
            )
        batch = [t.strip() for t in _as_text_list(texts)]
        if self.sentence_config.do_lower_case:
            batch = [t.lower() for t in batch]
        if not batch:
            raise ValueError("texts is empty; tokenize needs at least one text.")
        encodings = self.tokenizer.encode_batch(batch)
        device = self.embeddings.norm.weight.device  # a float tensor, also when the tables are int8
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long, device=device),
            "attention_mask": torch.tensor(
                [e.attention_mask for e in encodings], dtype=torch.long, device=device
            ),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long, device=device),
        }

    def pool(self, hidden: Tensor, attention_mask: Tensor, *, normalize: bool | None = None) -> Tensor:
        """Sentence vectors from token states: the configured pooling, then L2 normalization.

        Shape:
            hidden (B, L, E), attention_mask (B, L) -> (B, P), P = E per pooling mode.
        """
        pooled = pool(hidden, attention_mask, self.sentence_config.pooling)  # (B, P)
        if normalize is None:
            normalize = self.sentence_config.normalize
        if normalize:
            pooled = F.normalize(pooled, p=2, dim=1)
        return pooled

    def encode(
        self, texts: str | Sequence[str], *, batch_size: int = 32, normalize: bool | None = None
    ) -> Tensor:
        """Sentence embeddings, the ones sentence-transformers' ``encode`` computes, in tighter batches.

        Each text gets the same embedding as in sentence-transformers (up to float
        rounding): tokens truncated to ``max_seq_length``, run in eval mode under
        ``torch.inference_mode``, pooled over its real tokens and (by default, when the
        folder's modules.json says so, as for all-MiniLM-L6-v2) L2-normalized.  Only the
        batching differs: texts are tokenized :data:`ENCODE_WINDOW` batches at a time and
        cut into batches of ``batch_size`` by token count, longest first, each padded to
        its longest text; sentence-transformers sorts by characters, a looser proxy that
        pads more (26% more positions at batch 32 on ``headwise bench encode``'s texts).
        The result is in the order of ``texts``; the training mode is restored.

        Args:
            texts: one text or a sequence of texts.
            batch_size: texts per forward pass.
            normalize: ``None`` follows the model's pipeline; ``True``/``False`` force it.

        Shape:
            a sequence of N texts -> (N, P); one ``str`` -> (P,).  P = E for one pooling mode.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        single = isinstance(texts, str)
        batch = _as_text_list(texts)
        width = len(self.sentence_config.pooling) * self.config.hidden_size
        weight = self.embeddings.norm.weight  # the model's float dtype and device
        vectors = torch.empty(len(batch), width, dtype=weight.dtype, device=weight.device)  # (N, P)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                window = ENCODE_WINDOW * batch_size
                for first in range(0, len(batch), window):
                    features = self.tokenize(batch[first : first + window])  # (n, L) each
                    real = features["attention_mask"]  # (n, L)
                    order = torch.argsort(real.sum(dim=1), descending=True, stable=True)  # most tokens first
                    for start in range(0, len(order), batch_size):
                        rows = order[start : start + batch_size]  # (b,)
                        mask = real[rows]  # (b, L)
                        columns = mask.any(dim=0)  # (L,): positions some text of this batch fills
                        mask = mask[:, columns]  # (b, L_b)
                        padded = not bool(mask.all())  # a batch of equal lengths needs no mask in attention
                        hidden, _ = self(
                            features["input_ids"][rows][:, columns],
                            mask if padded else None,
                            features["token_type_ids"][rows][:, columns],
                        )  # (b, L_b, E)
                        vectors[first + rows] = self.pool(hidden, mask, normalize=normalize)  # (b, P)
        finally:
            self.train(was_training)
        return vectors[0] if single else vectors

    def save(self, path: str | os.PathLike[str], *, full_heads: bool = False) -> Path:
        """Write a Hugging Face / sentence-transformers folder that :func:`~headwise.models.load` reads.

        config.json, model.safetensors (transformers' ``BertModel`` key names),
        tokenizer.json and the sentence-transformers files.  Head gates are folded into
        the output projections.  A pruned model is saved with its smaller layers, which
        transformers v5 (it dropped head pruning) cannot read; ``full_heads=True`` pads
        pruned layers back with all-zero heads, which gives the same outputs in the shapes
        ``transformers.BertModel.from_pretrained`` reads (but not the smaller size).
        Returns the folder.
        """
        from headwise.models._checkpoint import save

        return save(self, Path(path), full_heads=full_heads)

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
                f"truncate to {limit} (model.tokenize truncates to {self.sentence_config.max_seq_length})."
            )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ShapeError(
                    f"{name} has shape {fmt_shape(t.shape)} but input_ids has {fmt_shape(input_ids.shape)}; "
                    "both are (batch, seq)."
                )


def _padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """Hugging Face's (B, S) 1 = token / 0 = padding, as headwise's bool mask (True = may attend).

    A batch without padding gets ``None``: the same result, and the kernel needs no mask
    (the check reads one value; under ``torch.compile`` it is skipped and the mask kept).

    Shape:
        (B, S) -> (B, 1, 1, S) bool, or None.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()  # (B, S)
    if not torch.compiler.is_compiling() and bool(keep.all()):
        return None
    return keep[:, None, None, :]  # (B, 1, 1, S)


def _as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str; every text must be a str."
        )
    return list(texts)
