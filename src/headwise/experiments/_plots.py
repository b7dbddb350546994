"""Line plots of the experiments (matplotlib, the ``viz`` extra): curves over training, metrics against a setting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Series", "plot_panels"]


@dataclass(frozen=True)
class Series:
    """One line: ``y`` against ``x``, with a band of ±``sd`` when given (NaN points are left out)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    sd: Sequence[float] | None = None
    style: str = "-"
    marker: str | None = "o"
    color: str | None = None


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - the extra is installed in tests
        raise ModuleNotFoundError(
            "headwise.experiments draws its figures with matplotlib: pip install 'headwise[viz]'", name="matplotlib"
        ) from err
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_panels(
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[Series]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    columns: int | None = None,
    logx: bool = False,
    logy: bool = False,
    bars: bool = False,
) -> Path:
    """Save one or more panels of lines side by side (``columns`` per row; default all in one row).

    ``bars=True`` draws the spread as error bars (for a metric against a setting) instead of a band.
    """
    plt = _pyplot()
    columns = columns or len(panels)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(0.6 + 3.6 * columns, 0.5 + 2.9 * rows), dpi=100, squeeze=False, sharey=not bars and rows > 1
    )
    for ax, (name, series) in zip(axes.flat, panels, strict=False):
        for s in series:
            points = [(x, y, 0.0 if s.sd is None else sd) for x, y, sd in zip(s.x, s.y, s.sd or s.y, strict=True)]
            points = [(x, y, sd) for x, y, sd in points if math.isfinite(y)]
            if not points:
                ax.plot([], [], s.style, color=s.color, label=f"{s.label} (no finite value)")
                continue
            xs, ys, sds = (list(v) for v in zip(*points, strict=True))
            if bars:
                ax.errorbar(xs, ys, yerr=sds if s.sd is not None else None, fmt=(s.marker or "") + s.style,
                            color=s.color, label=s.label, capsize=3, markersize=4)
                continue
            line = ax.plot(xs, ys, s.style, marker=s.marker, markersize=3, color=s.color, label=s.label)[0]
            if s.sd is not None:
                low = [y - d for y, d in zip(ys, sds, strict=True)]
                high = [y + d for y, d in zip(ys, sds, strict=True)]
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
