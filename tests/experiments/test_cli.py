"""``headwise experiments``: the page, its JSON and PNGs from a tiny suite; user mistakes are one line."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch
from click.testing import CliRunner

from headwise.cli import main
from headwise.experiments import STATUSES

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def experiments_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("experiments")
    result = CliRunner().invoke(main, ["experiments", "--suite", "tiny", "--out", str(out), "--threads", "1"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    (out / "stdout.txt").write_text(result.stdout)
    (out / "stderr.txt").write_text(result.stderr)
    return out


def test_files_and_summary(experiments_dir):
    report = json.loads((experiments_dir / "experiments.json").read_text())
    assert [c["number"] for c in report["claims"]] == [1, 2, 3, 4, 5, 6]
    names = [name for c in report["claims"] for name in c["figures"].values()]
    assert len(names) == 10
    for name in names:
        assert (experiments_dir / name).read_bytes().startswith(PNG), name
    stdout = (experiments_dir / "stdout.txt").read_text().splitlines()
    assert [line.split(".")[0] for line in stdout[:6]] == ["1", "2", "3", "4", "5", "6"]
    assert all(any(f": {s} (" in line for s in STATUSES) for line in stdout[:6])
    assert "experiments.html" in stdout[6] and "30 runs trained, 0 from the cache" in stdout[6]
    stderr = (experiments_dir / "stderr.txt").read_text()  # not a terminal: plain progress lines
    assert "[1/30] 1x16, 2 heads of 8, sqrt, lr 0.01, seed 0" in stderr and "best validation loss" in stderr
    assert report["machine"]["threads"] == 1
    assert len(list((experiments_dir / "runs").glob("*.json"))) == 30


def test_page_is_self_contained(experiments_dir):
    page = (experiments_dir / "experiments.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page and "<link" not in page
    assert re.findall(r'data-claim="([^"]+)"', page) == [
        "scaling", "heads", "head_size", "dropout", "redundancy", "specialization"
    ]
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 10 and all(base64.b64decode(data).startswith(PNG) for data in images)
    report = json.loads((experiments_dir / "experiments.json").read_text())
    for claim in report["claims"]:  # every computed verdict sentence is on the page
        for v in claim["verdicts"]:
            assert v["sentence"].split(": ", 1)[1].replace("'", "&#x27;") in page


def test_rerun_uses_the_cache(experiments_dir):
    result = CliRunner().invoke(main, ["experiments", "--suite", "tiny", "--out", str(experiments_dir), "--claims", "heads,1"])
    assert result.exit_code == 0, result.output
    assert "0 runs trained, 18 from the cache" in result.stdout
    assert result.stdout.splitlines()[0].startswith("1. ") and result.stdout.splitlines()[1].startswith("2. ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--claims", "7"], "no claim '7'; choose from 1 scaling"),
        (["--claims", " , "], "names no claim"),
        (["--quick", "--suite", "tiny"], "--quick and --suite both choose the suite"),
        (["--suite", "huge"], "no suite named 'huge'"),
        (["--threads", "0"], "0 is not in the range x>=1"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["experiments", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output and len(result.output.strip().splitlines()[-1]) > 10
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["experiments", "--suite", "tiny", "--out", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
