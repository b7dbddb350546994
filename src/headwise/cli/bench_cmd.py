"""``headwise bench [SUITE...]``: the benchmarks, side by side against PyTorch, as one table."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict

import click

from headwise.bench import SUITES, Row, missing_reference, run_suite


def summary_table(rows: list[Row]) -> str:
    from headwise.bench.harness import format_table

    headers = ["suite", "case", "baseline", "headwise", "metric", "ratio med (min)"]
    body = [[r.suite, r.case, r.baseline, r.candidate, r.metric, r.ratio.fmt()] for r in rows]
    return format_table(headers, body)


@click.command("bench")
@click.argument("suites", nargs=-1, type=click.Choice(list(SUITES)))
@click.option(
    "--quick",
    is_flag=True,
    help="Tiny shapes and few rounds: checks that everything runs (a minute or two); not figures to quote.",
)
@click.option(
    "--memory",
    is_flag=True,
    help="Also the peak-memory sections of mha and long (one fresh process per measurement, minutes).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary rows as JSON on stdout (the suites' tables go to stderr).",
)
def bench_command(suites: tuple[str, ...], quick: bool, memory: bool, as_json: bool) -> None:
    """Run the benchmarks (all suites by default) and print one summary table.

    Each suite prints its detailed tables first; the summary gives, per case, the ratio
    baseline / headwise (time per call, or peak memory) as the median (min) over
    round-robin rounds: > 1 means headwise is faster or smaller. Run nothing else on the
    machine meanwhile. Suites: mha (drop-in vs torch.nn.MultiheadAttention), decode (KV
    cache), encode (MiniLM vs transformers; needs transformers), prune (pruned vs
    unpruned MiniLM), long (full SDPA vs window-512 and linear attention at L=2k..64k,
    about 8 minutes; --quick: L=1k..4k), quant (int8 and bfloat16 MiniLM vs float32, eager
    and compiled; needs torchao). One suite with all its options: python -m headwise.bench.mha --help

    \b
    Examples:
      headwise bench --quick
      headwise bench mha decode --json > bench.json
      headwise bench mha --memory
      headwise bench long --quick --memory
    """
    chosen = list(suites) or list(SUITES)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for suite in chosen:
        package = missing_reference(suite)
        if package is not None and not suites:
            skipped[suite] = f"needs {package}, which is not installed (pip install {package})"
            continue
        click.echo(f"== {suite} ==", err=True)
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            rows += run_suite(suite, quick=quick, memory=memory)
    if as_json:
        click.echo(
            json.dumps({"quick": quick, "rows": [asdict(r) for r in rows], "skipped": skipped}, indent=2)
        )
        return
    click.echo("\n== summary: baseline / headwise, median (min) over rounds; > 1 favours headwise ==")
    click.echo(summary_table(rows))
    for suite, why in skipped.items():
        click.echo(f"skipped {suite}: {why}")
