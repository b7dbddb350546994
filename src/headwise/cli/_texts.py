"""Texts for the commands: a file of the user's, or real sentences that ship with Python."""

from __future__ import annotations

from pathlib import Path

#: pydoc topics whose prose ``sample_texts`` draws from (CPython's bundled documentation).
_TOPICS = ("assert", "assignment", "if", "while", "for", "try", "with", "function", "class", "import")


def read_texts(path: str | Path | None, *, limit: int) -> tuple[list[str], str]:
    """Texts, one per non-empty line of ``path``, or sentences of Python's docs; and where they came from."""
    if path is None:
        return sample_texts(limit), f"{limit} sentences of Python's bundled documentation (pydoc_data)"
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--texts {file}: no such file; give a text file with one text per line.")
    texts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--texts {file} has no text; give one text per line.")
    return texts[:limit], f"{min(len(texts), limit)} texts from {file}"


def sample_texts(limit: int) -> list[str]:
    """Up to ``limit`` sentences of 40+ characters from Python's documentation topics."""
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for topic in _TOPICS:
        prose = " ".join(topics[topic].split())
        sentences += [s.strip() + "." for s in prose.split(". ") if len(s) > 40]
    return sentences[:limit]
