"""Pictures of heads: per-layer heatmaps and head-by-head similarity (matplotlib, ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["layer_head_heatmap", "similarity_heatmap"]


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
