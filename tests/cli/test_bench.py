"""``headwise bench``: the benchmark suites, one summary table of ratios against the PyTorch baselines."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
from click.testing import CliRunner

from headwise.bench import SUITES, missing_reference
from headwise.bench import long as bench_long
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


def test_bench_mha_retakes_one_length_with_its_own_budget(tmp_path, capsys):
    from headwise.bench import mha

    out = tmp_path / "mha.json"
    assert mha.main(["--quick", "--length", "32", "--mode", "infer", "--no-memory", "--seconds", "0.05", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["shape"]["length"] for r in report["speed"]["infer"]] == [32]  # the L=96 shapes were left out
    faults = report["speed"]["infer"][0]["minor_faults_per_call"]
    assert set(faults) == set(mha.IMPLS) and all(count >= 0 for count in faults.values())
    assert "memory" not in report
    with pytest.raises(SystemExit):
        mha.main(["--quick", "--length", "33"])
    assert "the shapes have lengths [32, 96]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mha.main(["--seconds", "0"])


def test_bench_unknown_suite():
    result = CliRunner().invoke(main, ["bench", "flash"])
    assert result.exit_code == 2 and "'flash' is not one of" in result.output
    assert set(SUITES) == {"mha", "decode", "encode", "prune", "long", "quant", "generate"}


def _positive_finite(ratio: dict) -> bool:
    return all(math.isfinite(ratio[key]) and ratio[key] > 0 for key in ("median", "min"))


def test_bench_long_quick_with_memory():
    """Quick lengths (1k, 2k, 4k; memory at 2k and 4k, 12 small processes): about 30 s on 2 cores."""
    result = CliRunner().invoke(main, ["bench", "long", "--quick", "--memory", "--json"])
    assert result.exit_code == 0, result.output
    assert re.search(r"full/window\s+full/linear", result.stderr)  # the suite's own tables went to stderr
    assert "where they cross:" in result.stderr and "peak-RSS growth over one call" in result.stderr
    rows = json.loads(result.stdout)["rows"]
    speed = [r for r in rows if r["metric"] == "time" and not r["case"].startswith("decode")]
    assert [(r["case"], r["baseline"], r["candidate"]) for r in speed] == [
        (f"{mode} L={length}", "full SDPA", variant)
        for mode in ("causal", "bidirectional")
        for length in (1024, 2048, 4096)
        for variant in ("window 512", "linear elu+1")
    ]
    decode = [r for r in rows if r["case"].startswith("decode")]
    assert [(r["case"], r["baseline"], r["candidate"]) for r in decode] == [
        (f"decode 1 token after L={length}", "full KVCache", "window 512 cache") for length in (1024, 2048, 4096)
    ]
    assert all(_positive_finite(r["ratio"]) for r in decode)
    assert "window cache MiB" in result.stderr
    assert all(r["suite"] == "long" and _positive_finite(r["ratio"]) for r in speed)
    assert all(r["ratio"]["min"] <= r["ratio"]["median"] for r in speed)
    memory = [r for r in rows if r["metric"] == "peak memory"]
    assert [(r["case"], r["baseline"], r["candidate"]) for r in memory] == [
        (f"{mode} peak growth L=2048->4096", f"{variant} L=4096", f"{variant} L=2048")
        for mode in ("causal", "bidirectional")
        for variant in ("window 512", "linear elu+1")
    ]
    assert all(_positive_finite(r["ratio"]) for r in memory)


def test_bench_long_json_report(tmp_path):
    """The suite alone, time only, one mode and two lengths: its JSON report and summary rows."""
    path = tmp_path / "long.json"
    argv = [
        "--quick",
        "--no-memory",
        "--modes",
        "causal",
        "--lengths",
        "1024,2048",
        "--rounds",
        "2",
        "--no-decode",
        "--json",
        str(path),
    ]
    assert bench_long.main(argv) == 0
    report = json.loads(path.read_text())
    assert [(r["mode"], r["length"]) for r in report["time"]] == [("causal", 1024), ("causal", 2048)]
    assert all(
        set(r["ratios"]) == {"window", "linear"} and len(r["samples_s"]["full"]) == 2 for r in report["time"]
    )
    assert len(report["crossings"]) == 2 and report["targets"] == []  # the targets need L=32k and 64k
    assert "peak_mib" not in report and "decode" not in report
    rows = bench_long.summarize(report)
    assert len(rows) == 4 and all(r.metric == "time" and math.isfinite(r.ratio.median) for r in rows)


def test_bench_long_summary_targets():
    """At the issue's lengths the rows name their targets; a run that grew under 0.5 MiB gives no growth row."""
    ratio = {"median": 9.0, "min": 8.5}
    report = {
        "time": [{"mode": "causal", "length": 32768, "ratios": {"window": ratio, "linear": ratio}}],
        "peak_mib": [
            {"impl": impl, "length": length, "mode": "causal", "mib": mib}
            for impl, sizes in {"full": (10, 20), "window": (100, 190), "linear": (0.2, 300)}.items()
            for length, mib in zip((32768, 65536), sizes, strict=True)
        ],
    }
    rows = bench_long.summarize(report)
    assert [r.case for r in rows] == [
        "causal L=32768, target >= 8",
        "causal L=32768, target >= 8",
        "causal peak growth L=32768->65536, target <= 2.2",
    ]
    assert rows[-1].ratio.median == pytest.approx(1.9) and rows[-1].metric == "peak memory"
    targets = bench_long.memory_targets(report["peak_mib"])
    assert [(t["met"], t["value"]) for t in targets] == [(True, pytest.approx(1.9)), (False, None)]


def test_bench_long_rejects_short_lengths():
    with pytest.raises(SystemExit) as error:
        bench_long.parse_args(["--lengths", "512,2048"])
    assert error.value.code == 2


def test_bench_long_decode_keeps_the_window_cache_flat():
    """Decoding after 1k and 4k positions: the full cache grows 4x, the window's stays the same size."""
    small, large = (bench_long.bench_decode(length, rounds=2) for length in (1024, 4096))
    assert large["cache_mib"]["full"] == pytest.approx(4 * small["cache_mib"]["full"], rel=0.05)
    assert large["cache_mib"]["window"] == small["cache_mib"]["window"] < small["cache_mib"]["full"]
    assert all(_positive_finite(r["ratio"]) for r in (small, large))


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
    from headwise.texts import doc_sentences

    texts = doc_sentences(4)
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


def test_round_robin_counts_the_page_faults_of_each_step():
    from headwise.bench import harness as hx

    def fresh_memory() -> None:
        # 64 MiB mapped, touched and unmapped on each call (mmap itself: the allocator's state,
        # which other tests change, decides whether torch's tensors would map new pages)
        import mmap

        with mmap.mmap(-1, 64 << 20) as pages:
            pages.write(b"x" * (64 << 20))

    faults: dict[str, float] = {}
    samples = hx.round_robin({"fresh": fresh_memory, "nothing": lambda: None}, hx.Plan(rounds=3, inner=2), faults)
    assert [len(s) for s in samples.values()] == [3, 3]
    assert faults["fresh"] >= 16  # 64 MiB is at least 32 huge pages, or 16384 small ones, per call
    assert faults["nothing"] < 1


def test_bench_generate_quick():
    """Every implementation loads the same GGUF file, headwise's greedy tokens equal transformers', rows per batch."""
    result = CliRunner().invoke(main, ["bench", "generate", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    assert "loading the GGUF file into a ready model: transformers" in result.stderr
    assert "floor ms/step" in result.stderr and "KV cache per token: 46080 bytes (float32)" in result.stderr
    rows = json.loads(result.stdout)["rows"]
    cases = [(r["case"], r["baseline"], r["candidate"]) for r in rows]
    assert cases == [
        (case, "transformers", impl)
        for case in ("decode batch 1", "decode batch 2", "prefill 64")
        for impl in ("hw_f32", "hw_bf16", "hw_int8")
    ]
    # a prefill is one timed pass; a quick decode row is a difference of two single-round timings
    # of 9 and 1 tokens, which a loaded machine can make any sign: only prefill ratios are checked
    assert all(_positive_finite(r["ratio"]) for r in rows if r["case"].startswith("prefill"))


def test_moved_names_say_where_they_went():
    import importlib

    with pytest.raises(ImportError, match=r"headwise.viz.report moved to headwise.report"):
        importlib.import_module("headwise.viz.report")
    from headwise.bench import encode

    with pytest.raises(AttributeError, match=r"use headwise.texts.doc_sentences\(count\)"):
        encode.real_sentences  # noqa: B018
