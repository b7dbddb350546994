"""Self-contained HTML pages: every image inline as a data URL, no script or style from the network."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555} figure{margin:.6em 0;display:inline-block;vertical-align:top}
figure img{border:1px solid #ddd;max-width:100%} figcaption{font-size:.85em;color:#555;max-width:560px}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.4em} .pair{display:flex;gap:1em;flex-wrap:wrap} .pair figure{flex:1 1 480px}
.pair figure img{width:100%} #map{width:560px} select{margin-right:1em} code{background:#f4f4f4;padding:0 .2em}
"""

_PICKER = """<div class="picker">
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
</div>
<figure data-figure="attention-map"><img id="map" alt="attention map of the selected head"></figure>
<script>
const maps = {maps};
const layer = document.getElementById("layer"), head = document.getElementById("head"), img = document.getElementById("map");
maps.forEach((heads, i) => layer.add(new Option("layer " + i, i)));
function fillHeads() {{
  head.innerHTML = "";
  maps[layer.value].forEach((_, j) => head.add(new Option("head " + j, j)));
}}
function show() {{
  img.src = "data:image/png;base64," + maps[layer.value][head.value];
  img.dataset.layer = layer.value; img.dataset.head = head.value;
}}
layer.addEventListener("change", () => {{ fillHeads(); show(); }});
head.addEventListener("change", show);
fillHeads(); show();
</script>"""


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML)."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def picker(maps: Sequence[Sequence[bytes]]) -> str:
    """A layer/head picker showing one PNG per head; ``maps[layer][head]`` are PNG bytes."""
    encoded = [[base64.b64encode(png).decode("ascii") for png in heads] for heads in maps]
    return _PICKER.format(maps=json.dumps(encoded))


def figure(path: Path, name: str, caption: str) -> str:
    """An inline image of the PNG at ``path``, marked ``data-figure=name``."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure data-figure="{html.escape(name)}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)} '
        f"(<code>{html.escape(path.name)}</code>)</figcaption></figure>"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
