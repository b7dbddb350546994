"""``headwise experiments --out DIR``: the seed's claims about attention heads, measured on small models trained here."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from headwise.cli._output import OutFolder, check_writable


@click.command("experiments")
@click.option("--out", type=OutFolder(), default=Path("headwise-experiments"), show_default=True,
              help="Folder for experiments.html, experiments.json, the PNGs and the results cache (runs/).")
@click.option("--quick", is_flag=True, help="Smaller models and fewer steps: a first look in under 3 minutes (numbers too "
              "noisy to quote).")
@click.option("--claims", "claim_names", metavar="LIST",
              help="Comma-separated claims to measure, by number or name (1 scaling, 2 heads, 3 head_size, 4 dropout, "
              "5 redundancy, 6 specialization); default all.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch's intra-op threads (default: torch's own choice, one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print experiments.json's contents instead of a summary.")
@click.option("--suite", "suite_name", hidden=True, default=None, help="A preset suite by name (tests use 'tiny').")
def experiments_command(
    out: Path, quick: bool, claim_names: str | None, threads: int | None, as_json: bool, suite_name: str | None
) -> None:
    """Measure six claims about multi-head attention on byte-level language models trained on this machine.

    Scaling by 1/sqrt(d_k), head count, head size, attention dropout and DropHead, redundant
    heads, local and long-range heads: each claim trained and measured over 3 seeds and given a
    computed verdict (holds / does not hold / inconclusive) with its effect size and spread.
    The text is Python's own documentation (pydoc_data), split by topic. Finished runs are kept
    in --out/runs and skipped on a rerun, so an interrupted suite resumes. The full suite takes
    an estimated 30-45 minutes on 2 CPU cores (docs/claims.md); --quick under 3.

    \b
    Examples:
      headwise experiments --quick --out claims-quick
      headwise experiments --out claims --threads 2
      headwise experiments --claims heads,head_size --out claims
    """
    import torch

    from headwise.experiments import pick_claims, run_experiments, suite_config

    if quick and suite_name is not None:
        raise ValueError("--quick and --suite both choose the suite; give one of them.")
    suite = suite_config(suite_name or ("quick" if quick else "full"))
    names = None
    if claim_names is not None:
        names = [n.strip() for n in claim_names.split(",") if n.strip()]
        if not names:
            raise ValueError(f"--claims {claim_names!r} names no claim; e.g. --claims 1,2 or --claims scaling,heads.")
    chosen = pick_claims(names)
    check_writable(out, "--out")
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    with _progress() as (on_run, on_step, on_run_end):
        report = run_experiments(
            out, suite, claims=[c.name for c in chosen], on_run=on_run, on_step=on_step, on_run_end=on_run_end,
        )
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    for claim in report["claims"]:
        primary = [v for v in claim["verdicts"] if v["primary"]]
        effects = "; ".join(f"{v['effect']:+.3g} ± {v['spread']:.2g} {v['unit']}" for v in primary)
        click.echo(f"{claim['number']}. {claim['title']}: {claim['status']} ({effects})")
    runs = report["runs"]
    figures = sum(len(c["figures"]) for c in report["claims"])
    click.echo(
        f"wrote {out / 'experiments.html'} (and experiments.json, {figures} PNGs) in {time.perf_counter() - start:.0f} s: "
        f"{runs['trained']} runs trained, {runs['cached']} from the cache ({out / 'runs'})"
    )


@contextlib.contextmanager
def _progress() -> Iterator[tuple]:
    """Callbacks for run_experiments: rich bars on a terminal, plain lines on stderr otherwise."""
    from headwise.experiments import describe

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            overall = progress.add_task("runs", total=None)
            current: list[int] = []

            def on_run(index: int, total: int, config, cached: bool) -> None:  # type: ignore[no-untyped-def]
                progress.update(overall, total=total, completed=index - 1)
                if current:
                    progress.remove_task(current.pop())
                current.append(progress.add_task(f"{describe(config)}{' (cached)' if cached else ''}", total=config.steps))

            def on_step(step: int, steps: int, loss: float) -> None:
                progress.update(current[-1], completed=step)

            def on_run_end(record, cached: bool) -> None:  # type: ignore[no-untyped-def]
                progress.update(current[-1], completed=int(record.config["steps"]))
                progress.advance(overall)

            yield on_run, on_step, on_run_end
        return

    def on_run_plain(index: int, total: int, config, cached: bool) -> None:  # type: ignore[no-untyped-def]
        click.echo(f"[{index}/{total}] {describe(config)}{': cached' if cached else ''}", err=True)

    def on_step_plain(step: int, steps: int, loss: float) -> None:
        if step % max(1, steps // 4) == 0 and step < steps:
            click.echo(f"    step {step}/{steps}: training loss {loss:.3f}", err=True)

    def on_run_end_plain(record, cached: bool) -> None:  # type: ignore[no-untyped-def]
        if not cached:
            click.echo(f"    done in {record.seconds:.1f} s: best validation loss {record.best_val:.3f}"
                       f"{' (diverged)' if record.diverged else ''}", err=True)

    yield on_run_plain, on_step_plain, on_run_end_plain
