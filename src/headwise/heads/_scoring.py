"""What scoring and statistics share: text batches for an encoder, and a guard that restores the model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from headwise.heads._prune import attention_layers
from headwise.modules import Attention

__all__ = ["embed", "gated_layers", "scoring_mode", "text_batches"]

logger = logging.getLogger("headwise.heads")


def check_encoder(model: nn.Module) -> None:
    """``model`` must tokenize texts and pool token states (the encoders of :mod:`headwise.models`)."""
    missing = [name for name in ("tokenize", "pool") if not callable(getattr(model, name, None))]
    if not isinstance(model, nn.Module) or missing:
        raise TypeError(
            f"{type(model).__name__} cannot embed texts (no {' or '.join(missing) or 'nn.Module'}); "
            "scoring on texts needs an encoder with tokenize(texts) and pool(hidden, attention_mask), "
            "e.g. headwise.models.load()."
        )


def gated_layers(model: nn.Module) -> list[Attention]:
    """The model's attention layers; each must be a :class:`headwise.Attention` (it has ``head_gate``)."""
    layers = attention_layers(model)
    bad = [name for name, layer in layers if not isinstance(layer, Attention)]
    if bad or not layers:
        raise TypeError(
            f"scoring needs headwise.Attention layers (they have head_gate); {type(model).__name__} has "
            + (f"{bad[0]!r}, a {type(dict(layers)[bad[0]]).__name__}." if bad else "none.")
        )
    return [layer for _, layer in layers]


def check_texts(model: nn.Module, texts: Sequence[str]) -> list[str]:
    """A non-empty list of str; logs (warning) how many texts the tokenizer truncates."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}.")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; scoring heads needs at least one text (a few hundred is typical).")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str.")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        truncated = sum(1 for e in tokenizer.encode_batch(texts) if e.overflowing)
        if truncated:
            limit = model.sentence_config.max_seq_length
            logger.warning(
                "%d of %d texts are longer than max_seq_length=%d tokens and were truncated to it.",
                truncated, len(texts), limit,
            )
    return texts


def text_batches(model: nn.Module, texts: list[str], batch_size: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """``(start, features)`` for consecutive batches of ``texts``.

    Shape:
        features: input_ids, attention_mask, token_type_ids, each (b, L).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    for start in range(0, len(texts), batch_size):
        yield start, model.tokenize(texts[start : start + batch_size])


def embed(model: nn.Module, features: dict[str, Tensor]) -> Tensor:
    """Sentence embeddings of one tokenized batch, as ``model.encode`` gives them (with autograd).

    Shape:
        features (b, L) each -> (b, P).
    """
    hidden, _ = model(**features)  # (b, L, E)
    return model.pool(hidden, features["attention_mask"])  # (b, P)


@contextlib.contextmanager
def scoring_mode(model: nn.Module, *, gates_require_grad: bool = False) -> Iterator[list[Attention]]:
    """Eval mode, no parameter gradients (gates' on request); everything restored on exit.

    Yields the attention layers.  Gate values are restored too, so a scorer may set them.
    """
    layers = gated_layers(model)
    training = model.training
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    gates = [layer.head_gate.detach().clone() for layer in layers]
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for layer in layers:
            layer.head_gate.requires_grad_(gates_require_grad)
        yield layers
    finally:
        with torch.no_grad():
            for layer, gate in zip(layers, gates, strict=True):
                layer.head_gate.copy_(gate)
                layer.head_gate.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)
        for m, mode in modes.items():
            m.training = mode
