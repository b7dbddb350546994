"""The text the experiments train on: Python's documentation as bytes, split by topic."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from headwise.texts import doc_topics

__all__ = ["VALIDATION_EVERY", "Corpus", "corpus", "passages", "random_windows", "windows"]

#: Every fifth topic of the sorted topic list (indices 2, 7, 12, ...) is held out for validation.
VALIDATION_EVERY = 5


@dataclass(frozen=True)
class Corpus:
    """Byte streams of the training and validation topics (UTF-8, one byte = one token, 256 values).

    Attributes:
        train: the training topics' bytes, joined with blank lines, (N_train,) int64.
        validation: the held-out topics' bytes, (N_val,) int64.
        train_topics, validation_topics: the topic names of each side.
    """

    train: Tensor
    validation: Tensor
    train_topics: tuple[str, ...]
    validation_topics: tuple[str, ...]


@cache
def corpus() -> Corpus:
    """The fixed split of :func:`headwise.texts.doc_topics`: whole topics go to one side only.

    Topics are sorted by name; every :data:`VALIDATION_EVERY`-th one (starting at the third)
    is validation text, so both sides cover the whole alphabet of topics and no paragraph is
    on both sides.
    """
    topics = doc_topics()
    names = list(topics)
    held = {name for i, name in enumerate(names) if i % VALIDATION_EVERY == 2}

    def stream(chosen: list[str]) -> Tensor:
        data = "\n\n".join(topics[name] for name in chosen).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # (N,)

    train = [n for n in names if n not in held]
    validation = [n for n in names if n in held]
    return Corpus(stream(train), stream(validation), tuple(train), tuple(validation))


def windows(data: Tensor, count: int, length: int) -> Tensor:
    """``count`` windows of ``length + 1`` bytes spread evenly over ``data`` (a fixed evaluation set).

    Shape:
        data (N,) -> (count, length + 1).
    """
    if len(data) < length + 1:
        raise ValueError(f"the text has {len(data)} bytes, fewer than one window of {length + 1}.")
    starts = torch.linspace(0, len(data) - length - 1, count).long()  # (count,)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])  # (count, length + 1)


def random_windows(data: Tensor, count: int, length: int, generator: torch.Generator) -> Tensor:
    """``count`` windows of ``length + 1`` bytes at random starts drawn from ``generator``.

    Shape:
        data (N,) -> (count, length + 1).
    """
    starts = torch.randint(0, len(data) - length, (count,), generator=generator)  # (count,)
    offsets = torch.arange(length + 1)  # (length + 1,)
    return data[starts[:, None] + offsets[None, :]]  # (count, length + 1)


def passages(count: int, max_bytes: int, *, validation: bool) -> list[str]:
    """``count`` passages of one side of the split, each a paragraph cut to at most ``max_bytes`` UTF-8 bytes.

    Paragraphs (text between blank lines) of at least ``max_bytes // 2`` bytes, ``count`` of them
    spread evenly over the side's topics: the texts that importance scores and head statistics
    read (whole characters, never a cut byte sequence).
    """
    topics = doc_topics()
    names = corpus().validation_topics if validation else corpus().train_topics
    paragraphs = [
        p.strip() for name in names for p in topics[name].split("\n\n") if len(p.strip().encode("utf-8")) >= max_bytes // 2
    ]
    if len(paragraphs) < count:
        raise ValueError(
            f"asked for {count} passages of the {'validation' if validation else 'training'} topics, "
            f"but they hold {len(paragraphs)} paragraphs of at least {max_bytes // 2} bytes; ask for fewer."
        )
    chosen = paragraphs[:: len(paragraphs) // count][:count]
    return [_cut(p, max_bytes) for p in chosen]


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
