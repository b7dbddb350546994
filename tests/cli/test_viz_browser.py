"""The attention page and the report in a real browser: Debian's chromium, driven headless by playwright."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from headwise.cli import main

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: install Debian's browser with `apt-get install -y chromium` (.ci/run does)")
    return path


def _open(p, url: str, errors: list[str]):
    browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return browser, page


def test_report_in_chromium(report_dir):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, (report_dir / "report.html").as_uri(), errors)
        figures = page.locator("figure[data-figure]")
        assert figures.count() == 8
        for i in range(figures.count()):
            name = figures.nth(i).get_attribute("data-figure")
            size = figures.nth(i).locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size[0] > 100 and size[1] > 100, (name, size)  # present, decoded, not empty
            box = figures.nth(i).bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100, (name, box)
        first = page.get_attribute("#map", "src")
        page.select_option("#layer", "4")
        page.select_option("#head", "7")
        assert page.get_attribute("#map", "data-layer") == "4" and page.get_attribute("#map", "data-head") == "7"
        assert page.get_attribute("#map", "src") != first
        assert page.evaluate("document.getElementById('map').naturalWidth") > 100
        assert page.locator("table").count() == 3  # similar pairs, pruning curve, speed
        page.screenshot(path=str(report_dir / "screenshot.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (report_dir / "screenshot.png").stat().st_size > 50_000


def test_attention_page_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "maps"
    result = CliRunner().invoke(main, ["viz", "The cat sat on the mat because it was warm.", "--out", str(out)])
    assert result.exit_code == 0, result.output
    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, (out / "attention.html").as_uri(), errors)
        first = page.get_attribute("#map", "src")
        assert page.evaluate("document.getElementById('map').naturalWidth") > 100  # the image decoded
        assert page.locator("#layer option").count() == 6 and page.locator("#head option").count() == 12
        page.select_option("#layer", "3")
        page.select_option("#head", "5")
        assert page.get_attribute("#map", "data-layer") == "3" and page.get_attribute("#map", "data-head") == "5"
        assert page.get_attribute("#map", "src") != first
        assert page.evaluate("document.getElementById('map').naturalWidth") > 100
        page.screenshot(path=str(out / "screenshot.png"))
        browser.close()
    assert errors == []
    assert (out / "screenshot.png").stat().st_size > 10_000


def test_decoder_report_in_chromium(tmp_path):
    """The causal LM's report (a small random Llama, float64): every figure, the tables, the map picker."""
    import json

    from playwright.sync_api import sync_playwright

    from headwise.report import DecoderReportSettings, write_report
    from tests.parallel._checks import _tiny_causal_lm

    model = _tiny_causal_lm(2)
    texts = [
        "The cat sat on the mat.", "Heads look at tokens.", "Sinks hold attention.", "Windows keep the last.",
        "Perplexity of held-apart text.", "A kv group is one head.", "Query heads read it too.", "Prune the least.",
    ]
    settings = DecoderReportSettings(
        fractions=(0.0, 0.25), seeds=1, step=1, probes=1, context_length=16, evaluation_tokens=48,
        windows=(8,), sinks=(0, 2),
    )
    steps: list[str] = []
    report = write_report("tiny-llama", tmp_path, texts=texts, source="8 test texts", settings=settings,
                          on_step=steps.append, model=model)
    from headwise.report import decoder_report_steps

    assert len(steps) == decoder_report_steps(settings)
    assert report["kind"] == "causal LM" and report["heads_per_layer"] == [4, 4] and report["kv_heads_per_layer"] == [2, 2]
    assert [r["attention"] for r in report["streaming"]] == ["dense", "window 8", "window 8 + 2 sinks"]
    assert report["perplexity_curve"]["removed"] == [0, 2]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, (tmp_path / "report.html").as_uri(), errors)
        figures = page.locator("figure[data-figure]")
        assert figures.count() == 8  # 7 figures and the map picker
        for i in range(figures.count() - 1):
            size = figures.nth(i).locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size[0] > 100 and size[1] > 100
        assert page.locator("table").count() == 2  # the perplexity curve, the streaming table
        page.select_option("#layer", "1")
        page.select_option("#head", "3")
        assert page.get_attribute("#map", "data-layer") == "1" and page.get_attribute("#map", "data-head") == "3"
        browser.close()
    assert errors == []


def test_experiments_page_in_chromium(tmp_path):
    """The experiments page of a tiny suite: every figure decodes, six claims, a computed verdict each."""
    import torch
    from playwright.sync_api import sync_playwright

    threads = torch.get_num_threads()
    result = CliRunner().invoke(main, ["experiments", "--suite", "tiny", "--out", str(tmp_path), "--threads", "1"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    errors: list[str] = []
    with sync_playwright() as p:
        browser, page = _open(p, (tmp_path / "experiments.html").as_uri(), errors)
        figures = page.locator("figure[data-figure]")
        assert figures.count() == 10
        for i in range(figures.count()):
            size = figures.nth(i).locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size[0] > 100 and size[1] > 100, (figures.nth(i).get_attribute("data-figure"), size)
            box = figures.nth(i).bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
        sections = page.locator("section[data-claim]")
        assert sections.count() == 6
        for i in range(6):
            status = sections.nth(i).locator("h2 [data-status]").get_attribute("data-status")
            assert status in ("holds", "does not hold", "inconclusive")
            assert sections.nth(i).locator("li[data-primary=true]").count() >= 1
            assert sections.nth(i).locator("table tr").count() >= 3
        assert page.locator("table").first.locator("tr").count() == 7  # the verdicts: a header and six claims
        page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "screenshot.png").stat().st_size > 50_000
