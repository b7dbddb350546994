"""headwise.viz figures: a font fallback list of installed fonts, and no warning per missing glyph."""

from __future__ import annotations

import matplotlib
import torch
from matplotlib import font_manager

from headwise.viz import FALLBACK_FONTS, attention_map_png, font_families, layer_grid_png

TOKENS = ["[CLS]", "我", "喜欢", "注意力", "头", "ですね", "한국어", "[SEP]"]


def test_font_list_is_dejavu_then_installed_fallbacks():
    families = font_families()
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    assert families[0] == "DejaVu Sans"
    assert all(name in installed for name in families)  # no family that matplotlib would look for in vain
    assert families[1:] == [name for name in FALLBACK_FONTS if name in installed]  # in the documented order


def test_cjk_attention_maps_warn_nothing_and_print_nothing(recwarn, capfd, tmp_path, caplog):
    """With or without a CJK font installed: no missing-glyph warning, no findfont log line, no output."""
    before = list(matplotlib.rcParams["font.family"])
    weights = torch.softmax(torch.randn(len(TOKENS), len(TOKENS)), dim=-1)
    png = attention_map_png(weights, TOKENS, title="层 0, 头 1: 注意力")
    grid = layer_grid_png(torch.softmax(torch.randn(2, 8, 8), -1), tmp_path / "grid.png", title="第一层")
    assert png.startswith(b"\x89PNG") and grid.read_bytes().startswith(b"\x89PNG")
    assert [str(w.message) for w in recwarn] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]
    assert list(matplotlib.rcParams["font.family"]) == before  # the fallback list is the figures' own
