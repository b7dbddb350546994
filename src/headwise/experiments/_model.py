"""A byte-level causal language model built from headwise blocks, usable by :mod:`headwise.heads`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise.modules import Attention, CausalDecoder, FeedForward, PreNormBlock, RotaryEmbedding

__all__ = ["SCALINGS", "ByteLM", "ModelConfig"]

#: How attention logits are scaled: ``"sqrt"`` 1/sqrt(D) (the default of every headwise layer),
#: ``"none"`` unscaled (``scale=1.0``), ``"qk_norm"`` RMSNorm on each head's queries and keys
#: (learned gain) and then 1/sqrt(D), as in ViT-22B and OLMo 2.
SCALINGS = ("sqrt", "none", "qk_norm")

#: Byte values: the vocabulary of every model here.
VOCAB = 256


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a :class:`ByteLM`.

    Args:
        embed_dim: E, the residual width.
        num_layers: pre-norm blocks.
        num_heads: H per layer.
        head_dim: D; ``None`` = E / H (then H must divide E).
        scaling: one of :data:`SCALINGS`.
        dropout: dropout on attention probabilities.
        head_dropout: DropHead probability (a whole head of a sample dropped).
        max_length: the longest input, in bytes (rotary positions need no table; this caps ``tokenize``).
    """

    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int | None = None
    scaling: str = "sqrt"
    dropout: float = 0.0
    head_dropout: float = 0.0
    max_length: int = 128

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_layers", "num_heads", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
        if self.scaling not in SCALINGS:
            raise ValueError(f"ModelConfig.scaling must be one of {SCALINGS}, got {self.scaling!r}.")
        head_dim = self.head_dim
        if head_dim is None and self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                "pass head_dim explicitly or choose a num_heads that divides embed_dim."
            )
        head_dim = self.embed_dim // self.num_heads if head_dim is None else head_dim
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim={head_dim} is odd; rotary positions need an even head_dim.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ByteLM(nn.Module):
    """A causal LM over UTF-8 bytes: embedding, pre-norm blocks of :class:`headwise.Attention`
    with rotary positions and a GELU feed-forward (4E), a final RMSNorm, and the output layer
    tied to the embedding.

    The layers keep PyTorch's default initialization (a Linear's weights uniform in
    ±1/sqrt(fan_in)): on unit-RMS inputs each query and key component has variance 1/3, so
    unscaled logits start with standard deviation sqrt(D)/3.  The embedding is normal(0, 0.02).

    It is a :class:`headwise.heads.HeadModel` (``output_kind = "log_probs"``): importance
    scores, statistics, masking and :func:`headwise.heads.prune_heads_` work on it.

    Shape:
        input_ids (B, L) -> logits (B, L, 256), and with ``output_attentions`` one (B, H, L, L)
        map per layer.
    """

    output_kind = "log_probs"
    causal = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.embed_dim
        self.embed = nn.Embedding(VOCAB, width)
        blocks = []
        for _ in range(config.num_layers):
            attention = Attention(
                width, config.num_heads, head_dim=config.head_dim, bias=False, dropout=config.dropout,
                head_dropout=config.head_dropout, scale=1.0 if config.scaling == "none" else None,
            )
            head_dim = attention.head_dim
            attention.rotary = RotaryEmbedding(head_dim)
            if config.scaling == "qk_norm":
                attention.q_norm, attention.k_norm = nn.RMSNorm(head_dim), nn.RMSNorm(head_dim)
            blocks.append(PreNormBlock(
                attention, FeedForward(width, 4 * width, bias=False),
                attention_norm=nn.RMSNorm(width), feed_forward_norm=nn.RMSNorm(width),
            ))
        self.decoder = CausalDecoder(blocks, norm=nn.RMSNorm(width))
        nn.init.normal_(self.embed.weight, std=0.02)  # tied to the output: small, so the first logits are near uniform

    @property
    def attention_layers(self) -> list[Attention]:
        return [block.attention for block in self.decoder.blocks]

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, output_attentions: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Logits of the next byte at every position; padding (``attention_mask`` 0) is never attended."""
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S): True = may attend
        x, maps = self.decoder(self.embed(input_ids), attn_mask=mask, need_weights=output_attentions)  # (B, L, E)
        return F.linear(x, self.embed.weight), maps  # (B, L, 256)

    def next_byte_loss(self, windows: Tensor) -> Tensor:
        """Mean cross-entropy of each next byte of ``windows`` (the training objective), in nats.

        Shape:
            windows (B, L + 1) -> a scalar.
        """
        logits, _ = self(windows[:, :-1])  # (B, L, 256)
        return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())

    # -- headwise.heads.HeadModel ---------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """UTF-8 bytes of each text, cut to ``max_length``, right-padded.

        Shape:
            -> input_ids, attention_mask, each (B, L).
        """
        rows = [list(text.encode("utf-8")[: self.max_length]) for text in texts]
        length = max(1, *(len(r) for r in rows))
        ids = torch.zeros(len(rows), length, dtype=torch.long)  # (B, L)
        mask = torch.zeros(len(rows), length, dtype=torch.long)  # (B, L)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        device = self.embed.weight.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` are longer than ``max_length`` bytes (``tokenize`` cuts them)."""
        return sum(1 for text in texts if len(text.encode("utf-8")) > self.max_length)

    def outputs(self, features: dict[str, Tensor]) -> Tensor:
        """Log-probabilities of the next byte at every real position followed by a real byte.

        Shape:
            features (B, L) each -> (N, 256).
        """
        logits, _ = self(features["input_ids"], features["attention_mask"])  # (B, L, 256)
        scored = _scored(features["attention_mask"])  # (B, L)
        return F.log_softmax(logits[scored], dim=-1)  # (N, 256)

    def loss(self, features: dict[str, Tensor]) -> Tensor:
        """Mean next-byte cross-entropy over the real bytes of a batch."""
        logits, _ = self(features["input_ids"], features["attention_mask"])  # (B, L, 256)
        scored = _scored(features["attention_mask"])  # (B, L)
        targets = features["input_ids"][:, 1:][scored[:, :-1]]  # (N,)
        return F.cross_entropy(logits[scored], targets)


def _scored(attention_mask: Tensor) -> Tensor:
    """Positions whose next position is a real byte.

    Shape:
        (B, L) -> (B, L) bool.
    """
    real = attention_mask.bool()  # (B, L)
    scored = torch.zeros_like(real)
    scored[:, :-1] = real[:, 1:] & real[:, :-1]
    return scored

