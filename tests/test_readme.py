"""Every ```python block of the README and of docs/*.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, index, block)
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S))
]


def test_readme_and_docs_have_examples():
    assert sum(1 for page, _, _ in BLOCKS if page.name == "README.md") >= 3
    assert {page.name for page, _, _ in BLOCKS} >= {"README.md", "concepts.md", "decoder.md"}


@pytest.mark.parametrize(("page", "index", "block"), BLOCKS, ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_code_block_runs(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {}
    exec(compile(block, f"{page.relative_to(ROOT)}[python block {index}]", "exec"), namespace)
