"""Pictures of heads: per-layer heatmaps, head-by-head similarity (matplotlib, ``viz`` extra), and the
self-contained HTML pages they go into (every image inline, no network)."""

from __future__ import annotations

import functools
import html
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from headwise.viz import _html
from headwise.viz._html import figure as html_figure
from headwise.viz._html import page as html_page
from headwise.viz._html import picker as html_picker
from headwise.viz._html import table as html_table

__all__ = [
    "attention_map_png",
    "attention_page",
    "font_families",
    "head_map_pngs",
    "html_figure",
    "html_page",
    "html_picker",
    "html_table",
    "layer_grid_png",
    "layer_head_heatmap",
    "pruning_curve_png",
    "similarity_heatmap",
    "speedup_png",
]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - the extra is installed in tests
        raise ModuleNotFoundError(
            "headwise.viz needs matplotlib: pip install 'headwise[viz]'", name="matplotlib"
        ) from err
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


#: Installed fonts that cover scripts DejaVu Sans (matplotlib's own font) lacks, CJK first; each
#: one installed joins the figures' fallback list, in this order.
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
    "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "IPAexGothic",
    "IPAGothic", "TakaoPGothic", "UnDotum", "NanumGothic", "Microsoft YaHei", "SimHei", "Yu Gothic", "Meiryo",
    "Malgun Gothic", "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Arial Unicode MS", "Noto Sans",
    "Noto Sans Devanagari", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Thai", "Unifont",
)
#: matplotlib's warning for a character no font in the list can draw (it is drawn as a box)
_MISSING_GLYPH = r"Glyph \d+ .*missing from"

_Figure = TypeVar("_Figure", bound=Callable[..., Any])


def font_families() -> list[str]:
    """The font list headwise's figures draw text with: DejaVu Sans, then every installed :data:`FALLBACK_FONTS`.

    matplotlib takes each character from the first font in the list that has it, so tokens in
    Chinese, Japanese, Korean and other scripts are drawn whenever such a font is installed
    (e.g. Debian's ``fonts-noto-cjk``).
    """
    _pyplot()
    from matplotlib import font_manager

    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]


def _fonts(draw: _Figure) -> _Figure:
    """Draw with :func:`font_families`; a character no installed font has is a box, without a warning each.

    (A page of Chinese tokens on a machine without a CJK font would print hundreds; other
    warnings pass.)
    """

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        _pyplot()
        with matplotlib.rc_context({"font.family": font_families()}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MISSING_GLYPH, category=UserWarning)
            return draw(*args, **kwargs)

    return drawn  # type: ignore[return-value]


def _grid(values: Sequence[Tensor]) -> Tensor:
    """Per-layer values (layers may have different head counts) as a (layers, max heads) grid, NaN-padded."""
    width = max(int(v.numel()) for v in values)
    grid = torch.full((len(values), width), float("nan"))
    for i, v in enumerate(values):
        grid[i, : v.numel()] = v.detach().float().cpu()
    return grid


@_fonts
def layer_head_heatmap(values: Sequence[Tensor], path: str | Path, *, title: str, label: str) -> Path:
    """Save a layers x heads heatmap of one value per head (pruned heads left blank).

    Shape:
        values: one (H_l,) tensor per layer.
    """
    plt = _pyplot()
    grid = _grid(values)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 1.2 + 0.45 * grid.shape[0]), dpi=110)
    image = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@_fonts
def similarity_heatmap(matrix: Tensor, heads: Sequence[tuple[int, int]], path: str | Path, *, title: str) -> Path:
    """Save an (N, N) head-by-head similarity matrix, with layer boundaries marked.

    Shape:
        matrix (N, N); heads: (layer, head) of each row.
    """
    plt = _pyplot()
    size = 2.5 + 0.08 * len(heads)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=110)
    image = ax.imshow(matrix.detach().float().cpu().numpy(), cmap="magma", vmin=-1, vmax=1)
    starts = [i for i, (layer, _) in enumerate(heads) if i == 0 or heads[i - 1][0] != layer]
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="white", linewidth=0.6)
        ax.axvline(s - 0.5, color="white", linewidth=0.6)
    ax.set_xticks(starts, [f"L{heads[s][0]}" for s in starts])
    ax.set_yticks(starts, [f"L{heads[s][0]}" for s in starts])
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@_fonts
def attention_map_png(weights: Tensor, tokens: Sequence[str], *, title: str, size: float = 4.0) -> bytes:
    """One head's attention map as PNG bytes: rows are queries, columns keys, labelled by token.

    The colour scale runs from 0 to the map's largest weight, so diffuse heads stay visible.

    Shape:
        weights (L, L).
    """
    import io

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(size, size), dpi=90)
    values = weights.detach().float().cpu()
    ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=max(float(values.max()), 1e-6))
    ticks = range(len(tokens))
    ax.set_xticks(ticks, tokens, rotation=90, fontsize=6)
    ax.set_yticks(ticks, tokens, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@_fonts
def layer_grid_png(weights: Tensor, path: str | Path, *, title: str) -> Path:
    """Every head of one layer side by side, as small unlabelled maps.

    Shape:
        weights (H, L, L).
    """
    plt = _pyplot()
    heads = weights.shape[0]
    columns = min(heads, 6)
    rows = (heads + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows), dpi=90, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < heads:
            ax.imshow(weights[index].detach().float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_title(f"head {index}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@_fonts
def pruning_curve_png(
    removed: Sequence[int],
    total_heads: int,
    importance: Sequence[float],
    random_mean: Sequence[float],
    random_std: Sequence[float],
    path: str | Path,
    *,
    seeds: int,
    label: str = "mean cosine to the unpruned model",
) -> Path:
    """Quality against the share of heads removed: importance order, and the random band (mean +- sd)."""
    plt = _pyplot()
    share = [100.0 * k / total_heads for k in removed]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=110)
    mean = torch.tensor(list(random_mean))
    std = torch.tensor(list(random_std))
    ax.fill_between(share, (mean - std).tolist(), (mean + std).tolist(), color="tab:gray", alpha=0.25, linewidth=0)
    ax.plot(share, mean.tolist(), "o--", color="tab:gray", label=f"random order (mean of {seeds} seeds, ±1 sd)")
    ax.plot(share, list(importance), "o-", color="tab:blue", label="by importance (iterative)")
    ax.set_xlabel("heads removed (%)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("pruning curve")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


@_fonts
def speedup_png(labels: Sequence[str], ratios: Sequence[float], path: str | Path, *, title: str) -> Path:
    """Horizontal bars of speed-ups (time before / time after), with the no-change line at 1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 0.6 + 0.42 * len(labels)), dpi=110)
    positions = range(len(labels))
    ax.barh(positions, list(ratios), color="tab:green")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(positions, list(labels), fontsize=8)
    ax.invert_yaxis()
    for y, value in zip(positions, ratios, strict=True):
        ax.text(value, y, f" {value:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("speed-up (time unpruned / time pruned)")
    ax.set_xlim(0, max(*ratios, 1.0) * 1.2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def head_map_pngs(tokens: Sequence[str], maps: Sequence[Tensor]) -> list[list[bytes]]:
    """Every head's map as PNG bytes, ``[layer][head]``.

    Shape:
        maps: one (H_l, L, L) tensor per layer; tokens (L,).
    """
    return [
        [attention_map_png(m[h], tokens, title=f"layer {i}, head {h}") for h in range(m.shape[0])]
        for i, m in enumerate(maps)
    ]


def attention_page(model_ref: str, text: str, tokens: list[str], head_pngs: list[list[bytes]]) -> str:
    """A self-contained page with every head's map (``head_pngs[layer][head]``, PNG bytes) and a picker."""
    body = (
        f"<h1>Attention maps</h1><p class=\"meta\">{html.escape(model_ref)} &mdash; &ldquo;{html.escape(text)}&rdquo; "
        f"({len(tokens)} tokens)</p>" + _html.picker(head_pngs)
    )
    return _html.page("headwise attention maps", body)
