"""Pictures of heads: per-layer heatmaps and head-by-head similarity (matplotlib, ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["attention_map_png", "layer_grid_png", "layer_head_heatmap", "similarity_heatmap"]


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


def _grid(values: Sequence[Tensor]) -> Tensor:
    """Per-layer values (layers may have different head counts) as a (layers, max heads) grid, NaN-padded."""
    width = max(int(v.numel()) for v in values)
    grid = torch.full((len(values), width), float("nan"))
    for i, v in enumerate(values):
        grid[i, : v.numel()] = v.detach().float().cpu()
    return grid


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


def attention_map_png(weights: Tensor, tokens: Sequence[str], *, title: str, size: float = 4.0) -> bytes:
    """One head's attention map as PNG bytes: rows are queries, columns keys, labelled by token.

    Shape:
        weights (L, L).
    """
    import io

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(size, size), dpi=90)
    ax.imshow(weights.detach().float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(tokens))
    ax.set_xticks(ticks, tokens, rotation=90, fontsize=6)
    ax.set_yticks(ticks, tokens, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


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
