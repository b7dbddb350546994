"""``headwise viz [MODEL] "TEXT"``: every head's attention map for one text, as PNGs and one HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from headwise.cli.inspect_cmd import DEFAULT_MODEL


def render(model_ref: str, text: str, out: Path) -> dict[str, object]:
    """Write layer grids (PNG) and attention.html (every head, with a layer/head picker)."""
    import headwise.models
    from headwise.viz import layer_grid_png
    from headwise.viz.report import attention_maps, attention_page, head_map_pngs

    if not text.strip():
        raise ValueError('TEXT is empty; give the text to look at, e.g. headwise viz "The cat sat on the mat."')
    model = headwise.models.load(model_ref)
    tokens, maps = attention_maps(model, text)
    out.mkdir(parents=True, exist_ok=True)
    grids = [layer_grid_png(m, out / f"layer{i}.png", title=f"layer {i}") for i, m in enumerate(maps)]
    page = attention_page(model_ref, text, tokens, head_map_pngs(tokens, maps))
    (out / "attention.html").write_text(page, encoding="utf-8")
    return {"tokens": tokens, "layers": [m.shape[0] for m in maps], "pngs": [g.name for g in grids], "html": "attention.html"}


@click.command("viz")
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] TEXT")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("headwise-viz"), show_default=True)
def viz_command(args: tuple[str, ...], out: Path) -> None:
    """Attention maps of every head for one text: a PNG grid per layer and attention.html.

    \b
    Examples:
      headwise viz "The cat sat on the mat."
      headwise viz ./my-bert "A sentence to look at." --out maps
    """
    if len(args) > 2:
        raise click.UsageError(f"expected [MODEL] TEXT, got {len(args)} arguments; quote the text.")
    model, text = (DEFAULT_MODEL, args[0]) if len(args) == 1 else args
    info = render(model, text, out)
    click.echo(f"{len(info['tokens'])} tokens, {sum(info['layers'])} heads: wrote {out / info['html']} and {len(info['pngs'])} layer PNGs")
