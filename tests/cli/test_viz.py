"""``headwise viz``: every head's map for one text, PNG grids and a self-contained page."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from headwise.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_viz_writes_grids_and_a_self_contained_page(tmp_path):
    out = tmp_path / "maps"
    result = CliRunner().invoke(main, ["viz", "The cat sat on the mat.", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "72 heads" in result.output
    for layer in range(6):
        assert (out / f"layer{layer}.png").read_bytes().startswith(PNG)
    page = (out / "attention.html").read_text()
    maps = json.loads(re.search(r"const maps = (\[.*?\]\]);", page, flags=re.S).group(1))
    assert [len(layer) for layer in maps] == [12] * 6
    assert len({m for layer in maps for m in layer}) == 72  # every head's picture differs
    assert "http://" not in page and "https://" not in page and "<script src" not in page


def test_viz_with_a_model_argument_and_errors(tmp_path):
    import headwise.models

    folder = headwise.models.load().source
    ok = CliRunner().invoke(main, ["viz", str(folder), "Hello there.", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    empty = CliRunner().invoke(main, ["viz", "   ", "--out", str(tmp_path / "b")])
    assert empty.exit_code == 2 and "TEXT is empty" in empty.output
    many = CliRunner().invoke(main, ["viz", "a", "b", "c"])
    assert many.exit_code == 2 and "expected [MODEL] TEXT, got 3 arguments" in many.output


def test_viz_model_option_and_a_forgotten_text(tmp_path):
    import headwise.models

    folder = headwise.models.load().source
    ok = CliRunner().invoke(main, ["viz", "--model", str(folder), "Hello there.", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "72 heads" in ok.output
    for forgotten in (str(folder), "all-MiniLM-L6-v2"):
        result = CliRunner().invoke(main, ["viz", forgotten, "--out", str(tmp_path / "b")])
        assert result.exit_code == 2 and "names a model, and TEXT is missing" in result.output
        assert not (tmp_path / "b").exists()
    clash = CliRunner().invoke(main, ["viz", "--model", "SmolLM2-135M-Instruct", str(folder), "Hi."])
    assert clash.exit_code == 2 and "disagree; name the model once" in clash.output


def test_viz_text_that_is_not_unicode(tmp_path):
    """Bytes of another encoding reach Python as surrogates (a shell argument in Latin-1)."""
    result = CliRunner().invoke(main, ["viz", "caf\udce9 au lait", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "text 0 is not valid Unicode at character 3" in result.output and "UTF-8" in result.output
    assert not (tmp_path / "a").exists()


def test_viz_says_when_the_text_is_cut(tmp_path):
    long_text = " ".join(["word"] * 600)  # 600 tokens; the model keeps 256
    result = CliRunner().invoke(main, ["viz", long_text, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "the text was longer than the model takes" in result.stderr
    page = (tmp_path / "a" / "attention.html").read_text()
    assert "cut to 256 tokens, the model&#x27;s limit" in page and "(256 tokens)" in page
    assert page.count("word") < 100  # the title shows the beginning, not all 600 words
