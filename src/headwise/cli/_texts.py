"""Texts for the commands: a file of the user's, standard input, or real sentences that ship with Python."""

from __future__ import annotations

import sys
from pathlib import Path

from headwise.texts import doc_sentences


def read_texts(path: str | Path | None, *, limit: int) -> tuple[list[str], str]:
    """Up to ``limit`` texts and where they came from, in words with their real count.

    ``path`` None: sentences of Python's bundled documentation; ``"-"``: one text per line
    of standard input; else one text per non-empty line of that file (UTF-8).
    """
    if path is None:
        texts = doc_sentences(min(limit, len(doc_sentences())))
        return texts, f"{_count(texts, 'sentence')} of Python's bundled documentation (pydoc_data)"
    if str(path) == "-":
        data, where = sys.stdin.buffer.read(), "standard input"
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--texts {file}: no such file; give a text file with one text per line.")
        data, where = file.read_bytes(), str(file)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--texts {where}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x}); save it as UTF-8."
        ) from None
    texts = [line.strip() for line in lines if line.strip()][:limit]
    if not texts:
        raise ValueError(f"--texts {where} has no text; give one text per line.")
    return texts, f"{_count(texts, 'text')} from {where}"


def cut_note(model: object, texts: list[str]) -> str:
    """``"; N of them cut to T tokens (the model's limit)"`` when the model truncates some of ``texts``, else ""."""
    truncated = getattr(model, "truncated", None)
    count = truncated(texts) if truncated is not None else 0
    return f"; {count} of them cut to {model.max_length} tokens (the model's limit)" if count else ""


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
