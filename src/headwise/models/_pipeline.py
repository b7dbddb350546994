"""What the pipelines of :mod:`headwise.models` share: the network they wrap, its heads, saving, text checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from headwise.modules import Attention

__all__ = ["Pipeline", "as_text_list"]


class Pipeline(nn.Module):
    """A network with what it takes to run on text (tokenizer, pooling or generation).

    Subclasses set ``self.network`` (a network of :mod:`headwise.models` with ``config``,
    ``attention_layers``, ``num_heads`` and ``num_kv_heads``) and add ``save_extras``.
    """

    network: nn.Module

    @property
    def config(self) -> Any:
        """The network's config (e.g. a :class:`~headwise.models.BertConfig`)."""
        return self.network.config

    @property
    def attention_layers(self) -> list[Attention]:
        """Each layer's :class:`headwise.Attention`, first layer first."""
        return self.network.attention_layers

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Each layer's query head count, read from its weights (it changes when heads are pruned)."""
        return self.network.num_heads

    @property
    def num_kv_heads(self) -> tuple[int, ...]:
        """Each layer's key/value head count."""
        return tuple(layer.num_kv_heads for layer in self.attention_layers)

    def save(self, path: str | os.PathLike[str], *, full_heads: bool = False) -> Path:
        """Write a Hugging Face folder that :func:`headwise.models.load` and transformers read; see
        :func:`headwise.models.save`."""
        from headwise.models._io import save

        return save(self, path, full_heads=full_heads)

    def _float_tensor(self) -> Tensor:
        """A floating parameter: the model's compute dtype and device (also when tables are int8)."""
        for p in self.network.parameters():
            if p.is_floating_point():
                return p
        raise ValueError("the network has no floating parameter to take its dtype and device from.")


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list of str: a TypeError naming the first non-str entry, a ValueError the first
    that is not valid Unicode (e.g. bytes of another encoding that reached Python as surrogates)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str; every text must be a str."
        )
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"text {i} is not valid Unicode at character {err.start} ({text[err.start]!r}): "
                "it was probably read as bytes of another encoding; decode it (or save the file) as UTF-8."
            ) from None
    return list(texts)
