"""``headwise analyze`` end to end on the shipped model and real text."""

from __future__ import annotations

import json

from click.testing import CliRunner

from headwise.cli import main
from headwise.texts import doc_sentences

PNG = b"\x89PNG\r\n\x1a\n"


def test_analyze_writes_json_and_figures(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(doc_sentences(10)), encoding="utf-8")
    out = tmp_path / "analysis"
    result = CliRunner().invoke(main, ["analyze", "--texts", str(texts), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "analysis.json").read_text())
    assert json.loads(result.stdout) == report
    # not a terminal: one plain progress line per step on stderr
    assert result.stderr.splitlines()[0].startswith("headwise: [0/4] loading the model")
    assert "headwise: [3/4] figures" in result.stderr
    assert report["heads_per_layer"] == [12] * 6 and report["texts"].startswith("10 texts from")
    for key in ("importance", "entropy", "distance", "cls_share", "sep_share"):
        assert [len(v) for v in report[key]] == [12] * 6, key
    assert all(score >= 0 for layer in report["importance"] for score in layer)
    for name in report["figures"].values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


def test_analyze_bad_texts_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["analyze", "--texts", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "has no text; give one text per line" in result.output
    missing = CliRunner().invoke(main, ["analyze", "--texts", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert "Traceback" not in result.output + missing.output


def test_analyze_quiet_and_texts_from_standard_input(tmp_path):
    text = "\n".join(doc_sentences(6))
    result = CliRunner().invoke(main, ["analyze", "--texts", "-", "--out", str(tmp_path / "a"), "--quiet"], input=text)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    report = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert report["texts"] == "6 texts from standard input"
