"""``headwise viz [MODEL] "TEXT"``: every head's attention map for one text, as PNGs and one HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from headwise.cli._output import OutFolder, check_writable, staged_folder
from headwise.cli._progress import Steps, quiet_option
from headwise.cli._texts import cut_note
from headwise.cli.inspect_cmd import model_option, pick_model


def render(model_ref: str, text: str, out: Path, *, quiet: bool = True) -> dict[str, object]:
    """Write layer grids (PNG) and attention.html (every head, with a layer/head picker)."""
    import headwise.models
    from headwise.report import attention_maps

    if not text.strip():
        raise ValueError('TEXT is empty; give the text to look at, e.g. headwise viz "The cat sat on the mat."')
    check_writable(out, "--out")
    with Steps(3, description="loading the model", quiet=quiet) as progress:
        model = headwise.models.load(model_ref)
        progress.update("attention maps", advance=1)
        tokens, maps = attention_maps(model, text)
        cut = cut_note(model, [text])
        if cut:  # the page shows the beginning of the text, and says where the model cut it
            text = f"{text[:200]}… (cut to {model.max_length} tokens, the model's limit)"
        progress.update(f"drawing {sum(m.shape[0] for m in maps)} heads", advance=1)
        with staged_folder(out) as folder:
            return {**_write(model_ref, text, tokens, maps, folder), "cut": bool(cut)}


def _write(model_ref: str, text: str, tokens: list[str], maps: list, out: Path) -> dict[str, object]:
    from headwise.viz import attention_page, head_map_pngs, layer_grid_png

    grids = [layer_grid_png(m, out / f"layer{i}.png", title=f"layer {i}") for i, m in enumerate(maps)]
    page = attention_page(model_ref, text, tokens, head_map_pngs(tokens, maps))
    (out / "attention.html").write_text(page, encoding="utf-8")
    return {"tokens": tokens, "layers": [m.shape[0] for m in maps], "pngs": [g.name for g in grids], "html": "attention.html"}


def _names_a_model(value: str) -> bool:
    from headwise.models import SHIPPED

    try:
        return value in SHIPPED or Path(value).exists()
    except OSError:  # a long text is no file name
        return False


@click.command("viz")
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] TEXT")
@model_option
@quiet_option
@click.option("--out", type=OutFolder(), default=Path("headwise-viz"), show_default=True)
def viz_command(args: tuple[str, ...], model_option: str | None, quiet: bool, out: Path) -> None:
    """Attention maps of every head for one text: a PNG grid per layer and attention.html.

    \b
    Examples:
      headwise viz "The cat sat on the mat."
      headwise viz ./my-bert "A sentence to look at." --out maps
      headwise viz --model SmolLM2-135M-Instruct "The capital of France is Paris."
    """
    if len(args) > 2:
        raise click.UsageError(f"expected [MODEL] TEXT, got {len(args)} arguments; quote the text.")
    argument, text = (None, args[0]) if len(args) == 1 else args
    if argument is None and _names_a_model(text):
        raise click.UsageError(f'{text!r} names a model, and TEXT is missing: headwise viz {text} "The text to look at."')
    info = render(pick_model(argument, model_option), text, out, quiet=quiet)
    if info["cut"]:
        click.echo("the text was longer than the model takes; its first tokens are shown", err=True)
    click.echo(f"{len(info['tokens'])} tokens, {sum(info['layers'])} heads: wrote {out / info['html']} and {len(info['pngs'])} layer PNGs")
