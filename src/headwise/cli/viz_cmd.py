"""``headwise viz [MODEL] "TEXT"``: every head's attention map for one text, as PNGs and one HTML page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import click

from headwise.cli.inspect_cmd import DEFAULT_MODEL

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>headwise attention maps</title>
<style>body{{font-family:sans-serif;margin:1.5em}} select{{margin-right:1em}} img{{border:1px solid #ccc}}</style>
</head><body>
<h1>Attention maps</h1>
<p>{model} &mdash; &ldquo;{text}&rdquo; ({count} tokens)</p>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<div><img id="map" alt="attention map"></div>
<script>
const maps = {maps};
const layer = document.getElementById("layer"), head = document.getElementById("head"), img = document.getElementById("map");
maps.forEach((heads, i) => layer.add(new Option("layer " + i, i)));
function fillHeads() {{
  head.innerHTML = "";
  maps[layer.value].forEach((_, j) => head.add(new Option("head " + j, j)));
}}
function show() {{ img.src = "data:image/png;base64," + maps[layer.value][head.value]; img.dataset.layer = layer.value; img.dataset.head = head.value; }}
layer.addEventListener("change", () => {{ fillHeads(); show(); }});
head.addEventListener("change", show);
fillHeads(); show();
</script>
</body></html>
"""


def render(model_ref: str, text: str, out: Path) -> dict[str, object]:
    """Write layer grids (PNG) and attention.html (every head, with a layer/head picker)."""
    import torch

    import headwise.models
    from headwise.viz import attention_map_png, layer_grid_png

    if not text.strip():
        raise ValueError('TEXT is empty; give the text to look at, e.g. headwise viz "The cat sat on the mat."')
    model = headwise.models.load(model_ref)
    batch = model.tokenize([text])
    with torch.no_grad():
        _, maps = model(**batch, output_attentions=True)
    tokens = [model.tokenizer.id_to_token(i) or "?" for i in batch["input_ids"][0].tolist()]  # [CLS], the, ##s, ...
    out.mkdir(parents=True, exist_ok=True)
    grids = [layer_grid_png(m[0], out / f"layer{i}.png", title=f"layer {i}") for i, m in enumerate(maps)]
    encoded = [
        [base64.b64encode(attention_map_png(m[0, h], tokens, title=f"layer {i}, head {h}")).decode() for h in range(m.shape[1])]
        for i, m in enumerate(maps)
    ]
    page = _PAGE.format(
        model=html.escape(model_ref), text=html.escape(text), count=len(tokens), maps=json.dumps(encoded)
    )
    (out / "attention.html").write_text(page, encoding="utf-8")
    return {"tokens": tokens, "layers": [m.shape[1] for m in maps], "pngs": [g.name for g in grids], "html": "attention.html"}


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
