"""Real text that ships everywhere: sentences of CPython's bundled documentation.

The commands, the benchmarks, the report and the tests all draw their default texts from
here, so every figure and example of headwise is measured on the same real prose
(``pydoc_data.topics``, part of the standard library) and nothing is downloaded.
"""

from __future__ import annotations

import re
from functools import cache

__all__ = ["doc_sentences", "doc_topics"]


def doc_topics() -> dict[str, str]:
    """Every topic of Python's documentation as it ships, ``{topic: text}`` in sorted topic order.

    The whole text (prose, grammar and code examples), about 465,000 characters in 79 topics
    on CPython 3.11; what a character-level language model reads (:mod:`headwise.experiments`).
    """
    from pydoc_data.topics import topics

    return {key: topics[key] for key in sorted(topics)}


@cache
def _all_sentences() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    return tuple(
        s
        for s in re.split(r"(?<=[.!?])\s+", text)
        # prose only: a sentence of 40 to 300 characters, not a line of code or a table row
        if 40 <= len(s) <= 300 and s[0].isupper() and not any(c in s for c in "*`>|=")
    )


def doc_sentences(count: int | None = None) -> list[str]:
    """English sentences of Python's documentation, in a fixed order.

    Args:
        count: ``None`` for every sentence (about 1600, in the documentation's topic
            order); else ``count`` of them spread evenly over all topics.

    Raises:
        ValueError: ``count`` is below 1 or above the number of sentences there are.
    """
    sentences = _all_sentences()
    if count is None:
        return list(sentences)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(sentences):
        raise ValueError(
            f"count={count!r}: Python's documentation has {len(sentences)} sentences; ask for 1 to {len(sentences)}."
        )
    return list(sentences[:: len(sentences) // count][:count])
