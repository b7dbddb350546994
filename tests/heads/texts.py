"""Real text for the heads tests: sentences of CPython's bundled documentation (pydoc_data)."""

from __future__ import annotations

from functools import cache


@cache
def doc_sentences() -> list[str]:
    """Sentences of 40+ characters from several pydoc topics, in a fixed order."""
    from pydoc_data.topics import topics

    sentences = []
    for topic in ("assert", "assignment", "if", "while", "for", "try", "with", "function", "class"):
        text = " ".join(topics[topic].split())
        sentences += [s.strip() + "." for s in text.split(". ") if len(s) > 40]
    return sentences
