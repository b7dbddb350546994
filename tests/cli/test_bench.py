"""``headwise bench``: the benchmark suites, one summary table of ratios against the PyTorch baselines."""

from __future__ import annotations

import json

from click.testing import CliRunner

from headwise.bench import SUITES
from headwise.cli import main


def test_bench_decode_quick():
    result = CliRunner().invoke(main, ["bench", "decode", "--quick"])
    assert result.exit_code == 0, result.output
    assert "== decode 32 tokens, 1 attention layer(s)" in result.output  # the suite's own table comes first
    summary = result.output.split("== summary: baseline / headwise")[1].splitlines()
    assert sum(line.startswith("decode ") for line in summary) == 6
    as_json = CliRunner().invoke(main, ["bench", "decode", "--quick", "--json"])
    assert as_json.exit_code == 0
    rows = json.loads(as_json.stdout)["rows"]  # stdout holds only the JSON; the tables went to stderr
    assert [(r["suite"], r["case"], r["baseline"]) for r in rows] == [
        ("decode", f"32 tokens, {layers} layer(s)", baseline)
        for layers in (1, 2)
        for baseline in ("torch_recompute", "torch_recompute_nw", "manual_cache_sdpa")
    ]
    assert all(r["metric"] == "time" and 0 < r["ratio"]["min"] <= r["ratio"]["median"] for r in rows)


def test_bench_mha_quick_with_memory():
    result = CliRunner().invoke(main, ["bench", "mha", "--quick", "--memory", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    speed = [r for r in rows if r["metric"] == "time"]
    assert len(speed) == 2 * 3 * 2  # infer/train x 3 quick shapes x (need_weights=False, default call)
    memory = [r for r in rows if r["metric"] == "peak memory"]
    assert memory and all(r["ratio"]["median"] > 0 for r in memory)  # fresh processes ran and reported


def test_bench_unknown_suite():
    result = CliRunner().invoke(main, ["bench", "flash"])
    assert result.exit_code == 2 and "'flash' is not one of" in result.output
    assert set(SUITES) == {"mha", "decode", "encode", "prune"}
