"""The experiments page: one self-contained HTML file (every image inline), in the style of ``headwise report``."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from headwise.experiments._claims import ClaimResult
from headwise.experiments._verdict import SPREADS
from headwise.viz import html_figure, html_page, html_table

__all__ = ["write_page"]

_COLORS = {"holds": "#1a7f37", "does not hold": "#b42318", "inconclusive": "#8a6d00"}


def _status(status: str) -> str:
    return f'<b data-status="{html.escape(status)}" style="color:{_COLORS[status]}">{html.escape(status)}</b>'


def _ratio(effect: float, spread: float) -> str:
    if spread == 0.0:
        return "exact" if effect != 0.0 else "0"
    return f"{abs(effect) / spread:.1f}x"


def write_page(out: Path, report: dict[str, object], claims: Sequence[ClaimResult]) -> Path:
    """Write ``experiments.html`` into ``out`` from the report's numbers and the claims' figures."""
    settings = report["settings"]
    text = report["text"]
    runs = report["runs"]
    versions = report["versions"]
    seconds = report["seconds"]
    summary_rows = []
    for claim in claims:
        primary = [v for v in claim.verdicts if v.primary]
        summary_rows.append([
            f"{claim.number}. {claim.title}", claim.status,
            "; ".join(f"{v.effect:+.3g} ± {v.spread:.2g} {v.unit} ({_ratio(v.effect, v.spread)})" for v in primary),
        ])
    summary = html_table(["claim", "verdict", "primary effects: mean ± sd over seeds (effect / sd)"], summary_rows)
    for status in _COLORS:  # the verdict column in colour
        summary = summary.replace(f"<td>{status}</td>", f"<td>{_status(status)}</td>")
    sections = []
    for claim in claims:
        items = "".join(
            f"<li data-primary=\"{str(v.primary).lower()}\">{'' if v.primary else '<i>(supporting)</i> '}"
            f"{_status(v.status)}: {html.escape(v.sentence.split(': ', 1)[1])}</li>"
            for v in claim.verdicts
        )
        figures = "".join(html_figure(path, name, caption) for name, path, caption in claim.figures)
        sections.append("\n".join([
            f'<section id="claim-{claim.number}" data-claim="{html.escape(claim.name)}">',
            f"<h2>{claim.number}. {html.escape(claim.title)}: {_status(claim.status)}</h2>",
            f"<p><b>Claim.</b> {html.escape(claim.claim)}</p>",
            f"<p class=\"meta\"><b>Measured.</b> {html.escape(claim.method)}</p>",
            f"<ul class=\"verdicts\">{items}</ul>",
            f'<div class="pair">{figures}</div>',
            html_table(claim.headers, claim.rows),
            "</section>",
        ]))
    threads = report["machine"]["threads"]
    minutes = seconds["total"] / 60 if isinstance(seconds.get("total"), (int, float)) else math.nan
    body = "\n".join([
        "<h1>The seed's claims, measured</h1>",
        f"<p class=\"meta\">Suite <code>{html.escape(str(report['suite']))}</code>: byte-level causal language models built "
        f"from headwise blocks, trained with AdamW and a warmup + cosine schedule on {html.escape(text['source'])}; "
        f"{text['train_bytes']:,} training and {text['validation_bytes']:,} validation bytes ({html.escape(text['split'])}). "
        f"Seeds {', '.join(map(str, settings['seeds']))}. {runs['total']} runs ({runs['trained']} trained now, "
        f"{runs['cached']} from the cache), {minutes:.1f} minutes with {threads} thread{'' if threads == 1 else 's'}. "
        f"headwise {versions['headwise']}, torch {versions['torch']}, Python {versions['python']}. "
        "Numbers: <code>experiments.json</code>.</p>",
        f"<p class=\"meta\">Verdict rule: a test's effect is signed so that positive is what the claim predicts, one value "
        f"per seed. <b>Holds</b> when the mean exceeds {SPREADS:g} standard deviations of the seeds and the test's floor; "
        f"<b>does not hold</b> when it is below &minus;{SPREADS:g} sd, or when |mean| + {SPREADS:g} sd stays under the floor; "
        "otherwise <b>inconclusive</b>. A claim holds when all its primary tests hold and does not hold when one of them "
        "does not; supporting tests are shown but do not decide. Verdicts are about this setup: small models, little "
        "training, one corpus.</p>",
        "<h2>Verdicts</h2>",
        summary,
        *sections,
    ])
    path = out / "experiments.html"
    path.write_text(html_page("headwise experiments: the seed's claims, measured", body), encoding="utf-8")
    return path
