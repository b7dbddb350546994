"""``headwise report``: the whole head loop in one self-contained page, its PNGs and JSON."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch
from click.testing import CliRunner

from headwise.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["importance", "entropy", "distance", "redundancy", "map-similarity", "pruning-curve", "speed"]


def test_report_files_and_summary(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert report["model"] == "all-MiniLM-L6-v2" and report["heads_per_layer"] == [12] * 6
    assert report["calibration_texts"] == 8 and report["evaluation_texts"] == 8
    assert list(report["figures"]) == FIGURES
    for name in [*report["figures"].values(), *report["layer_maps"]]:
        assert (report_dir / name).read_bytes().startswith(PNG), name
    assert report["layer_maps"] == [f"layer{i}.png" for i in range(6)]
    output = (report_dir / "stdout.txt").read_text()
    assert "18 heads removed by importance" in output and "report.html" in output


def test_report_numbers_hold_together(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert [len(v) for v in report["importance"]] == [12] * 6
    assert all(s >= 0 for v in report["importance"] for s in v)
    assert all(0 < e < torch.log(torch.tensor(512.0)) for v in report["entropy"] for e in v)
    curve = report["pruning_curve"]
    assert curve["removed"] == [0, 7, 14, 18, 22, 29, 36, 43]  # 0..60% and the report's 25%
    assert curve["importance"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert all(seed[0]["cosine"] == pytest.approx(1.0, abs=1e-5) for seed in curve["random"])
    assert len(curve["random"]) == 2 and all(len(seed) == 8 for seed in curve["random"])
    cosines = [p["cosine"] for p in curve["importance"]]
    assert cosines[-1] < cosines[0]  # removing 60% of the heads changes the embeddings
    pruned = report["pruned"]
    assert pruned["removed"] == 18 and sum(pruned["heads_per_layer"]) == 72 - 18
    assert pruned["cosine"] == curve["importance"][3]["cosine"]
    speed = report["speed"]
    assert [(r["what"].split(" ")[0], r["batch_size"]) for r in speed] == [
        ("encode", 1), ("attention", 1), ("encode", 32), ("attention", 32)
    ]
    assert all(r["ratio"]["median"] > 0 for r in speed)
    assert set(report["most_similar"]) == {"output", "map"} and len(report["most_similar"]["map"]) == 8


def test_report_page_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script src" not in page and "<link" not in page
    names = re.findall(r'data-figure="([^"]+)"', page)
    assert names == [*FIGURES, "attention-map"]
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)  # the picker's map is set by the script
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    maps = json.loads(re.search(r"const maps = (\[.*?\]\]);", page, flags=re.S).group(1))
    assert [len(layer) for layer in maps] == [12] * 6
    attention = (report_dir / "attention.html").read_text()
    assert "const maps = " in attention and "https://" not in attention


def test_report_user_errors(tmp_path):
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    few = tmp_path / "few.txt"
    few.write_text("one text\n")
    short = CliRunner().invoke(main, ["report", "--texts", str(few), "--out", str(tmp_path / "r")])
    assert short.exit_code == 2 and "at least 8 texts" in short.output
    assert not (tmp_path / "r" / "report.html").exists()
    bad = CliRunner().invoke(main, ["report", "--fraction", "1.5"])
    assert bad.exit_code == 2 and "1.5" in bad.output
