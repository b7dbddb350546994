"""What the heads toolkit needs of a model: :class:`HeadModel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from headwise.modules import Attention

__all__ = ["OUTPUT_KINDS", "HeadModel", "check_model"]

#: How scores compare a model's outputs: ``"vectors"`` (one embedding per text, by squared
#: distance) or ``"log_probs"`` (a distribution per real token, by KL divergence).
OUTPUT_KINDS = ("vectors", "log_probs")


@runtime_checkable
class HeadModel(Protocol):
    """A model whose heads :mod:`headwise.heads` can score, describe and prune.

    The pipelines of :mod:`headwise.models` (a sentence encoder, a causal LM) are such models,
    and so is any model of the user's with :class:`headwise.Attention` layers that adds these
    members:

    * ``attention_layers``: its :class:`headwise.Attention` layers, in the order layer indices
      count them;
    * ``tokenize(texts)``: a batch of features, a dict of (B, L) tensors that ``model(**features)``
      takes and that holds ``"attention_mask"`` (1 = real token);
    * ``model(**features, output_attentions=True)``: ``(out, maps)`` with one (B, H_l, L, S)
      map per layer;
    * ``outputs(features)``: what scores compare, with autograd: (B, P) vectors, or (N, V)
      log-probabilities of the N real tokens (``output_kind``);
    * ``output_kind``: one of :data:`OUTPUT_KINDS`;
    * ``causal``: whether its attention is causal (statistics read it).

    Optional: ``loss(features)``, the model's own scalar loss (a language model's next-token
    loss), which :func:`~headwise.heads.gradient_importance` uses when no labels are given;
    ``truncated(texts)``, how many texts ``tokenize`` cuts, and ``max_length``, to say so.
    """

    output_kind: str
    causal: bool

    @property
    def attention_layers(self) -> Sequence[Attention]: ...

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]: ...

    def outputs(self, features: dict[str, Tensor]) -> Tensor: ...

    def __call__(self, **features: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]: ...


def check_model(model: object) -> None:
    """``model`` must be a :class:`HeadModel`; a TypeError naming what it lacks otherwise."""
    wanted = ("attention_layers", "tokenize", "outputs", "output_kind", "causal")
    missing = [name for name in wanted if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a model headwise.heads can score on texts: it has no "
            f"{', '.join(missing)} (see headwise.heads.HeadModel; e.g. headwise.models.load() gives one)."
        )
    if model.output_kind not in OUTPUT_KINDS:  # type: ignore[attr-defined]
        raise ValueError(
            f"{type(model).__name__}.output_kind is {model.output_kind!r}; expected one of {OUTPUT_KINDS}."  # type: ignore[attr-defined]
        )
