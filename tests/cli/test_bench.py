"""``headwise bench``: the benchmark suites, one summary table of ratios against the PyTorch baselines."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
from click.testing import CliRunner

from headwise.bench import SUITES, missing_reference
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
    assert set(SUITES) == {"mha", "decode", "encode", "prune", "quant"}


@pytest.mark.slow
def test_bench_quant_quick():
    result = CliRunner().invoke(main, ["bench", "quant", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    assert "torch.compile(model.encoder, dynamic=True)" in result.stderr  # the suite's tables went to stderr
    rows = json.loads(result.stdout)["rows"]
    assert all(r["suite"] == "quant" and r["baseline"].startswith("float32") for r in rows)
    cosine = {}  # the min cosine to float32 is in each model's label
    for r in rows:
        match = re.fullmatch(r"(\w+) \(cosine min ([0-9.]+)\)", r["candidate"])
        if match:
            cosine[match[1]] = float(match[2])
    assert (
        cosine["bfloat16"] >= 0.999 and cosine["int8_weight_only"] >= 0.999 and cosine["int8_dynamic"] >= 0.95
    )

    size = {r["candidate"].split()[0]: r["ratio"]["median"] for r in rows if r["metric"] == "saved size"}
    assert 1.9 <= size["bfloat16"] <= 2.1  # half the bytes of float32
    assert size["int8_weight_only"] >= 3.5 and size["int8_dynamic"] >= 3.5  # int8 weights and tables
    eager = [(r["case"], r["candidate"].split()[0]) for r in rows if r["case"].startswith("encode, ")]
    assert eager == [
        (f"encode, batch {b}", name)
        for b in (1, 8, 32)
        for name in ("bfloat16", "int8_weight_only", "int8_dynamic")
    ]
    compiled = [r for r in rows if r["case"].startswith("encode compiled")]
    assert [(r["case"], r["baseline"], r["candidate"]) for r in compiled] == [
        ("encode compiled, batch 8", "float32 compiled", "int8_weight_only compiled")
    ]
    timed = [r for r in rows if r["metric"] == "time"]
    assert len(timed) == 10 and all(0 < r["ratio"]["min"] <= r["ratio"]["median"] for r in timed)


def test_bench_quant_records_a_failed_compiled_case_and_goes_on():
    from headwise.bench import quant
    from headwise.bench.encode import real_sentences

    texts = real_sentences(4)
    results = quant.compare_compiled(texts, [0], quant.QUICK)  # encode refuses batch_size=0 before compiling
    assert results == [
        {
            "batch_size": 0,
            "first_call_s": {},
            "error": "ValueError: batch_size must be a positive int, got 0.",
        }
    ]
    (row,) = quant.summarize({"quality": [], "eager": [], "compiled": results})
    assert row.case == "encode compiled, batch 0"
    assert (
        row.candidate
        == "int8_weight_only compiled: failed, ValueError: batch_size must be a positive int, got 0."
    )
    assert math.isnan(row.ratio.median) and math.isnan(row.ratio.min)


def test_bench_quant_needs_torchao(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "torchao", None
    )  # what an environment without torchao looks like to imports
    assert missing_reference("quant") == "torchao" and missing_reference("mha") is None
    result = CliRunner().invoke(main, ["bench", "quant", "--quick"])
    assert result.exit_code == 2
    assert "the quant suite needs torchao, which is not installed: pip install torchao" in result.output
