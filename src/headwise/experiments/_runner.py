"""``run_experiments``: train what the chosen claims need (skipping cached runs), analyse, write the page."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from headwise.experiments._claims import CLAIMS, Claim, ClaimResult, Results
from headwise.experiments._data import VALIDATION_EVERY, corpus
from headwise.experiments._model import ModelConfig
from headwise.experiments._suite import ResultsCache, SuiteConfig, suite_config
from headwise.experiments._train import RunConfig, RunRecord, train

__all__ = ["describe", "pick_claims", "planned_runs", "run_experiments"]


def pick_claims(names: Sequence[str | int] | None) -> list[Claim]:
    """Claims by name (``"scaling"``) or number (1-6); ``None`` for all six, in order."""
    if names is None:
        return list(CLAIMS)
    chosen = []
    for name in names:
        found = [c for c in CLAIMS if str(name).strip() in (c.name, str(c.number))]
        if not found:
            raise ValueError(
                f"no claim {name!r}; choose from {', '.join(f'{c.number} {c.name}' for c in CLAIMS)} (by name or number)."
            )
        if found[0] not in chosen:
            chosen.append(found[0])
    return sorted(chosen, key=lambda c: c.number)


def planned_runs(suite: SuiteConfig, claims: Sequence[Claim]) -> list[tuple[RunConfig, bool]]:
    """Every distinct run the claims need, in order, with whether its weights are kept."""
    runs: dict[str, tuple[RunConfig, bool]] = {}
    for claim in claims:
        keep = {c.key() for c in claim.weights(suite)}
        for config in claim.runs(suite):
            previous = runs.get(config.key())
            runs[config.key()] = (config, config.key() in keep or (previous is not None and previous[1]))
    return list(runs.values())


def describe(config: RunConfig) -> str:
    """A short label of a run: its network, learning rate, regularization and seed."""
    m: ModelConfig = config.model
    head_dim = m.head_dim or m.embed_dim // m.num_heads
    parts = [f"{m.num_layers}x{m.embed_dim}", f"{m.num_heads} heads of {head_dim}", m.scaling, f"lr {config.lr:g}"]
    if m.dropout:
        parts.append(f"dropout {m.dropout:g}")
    if m.head_dropout:
        parts.append(f"DropHead {m.head_dropout:g}")
    if config.train_bytes:
        parts.append(f"{config.train_bytes:,} bytes")
    return ", ".join(parts) + f", seed {config.seed}"


def run_experiments(
    out: str | os.PathLike[str],
    suite: SuiteConfig | str = "full",
    *,
    claims: Sequence[str | int] | None = None,
    on_run: Callable[[int, int, RunConfig, bool], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_run_end: Callable[[RunRecord, bool], None] | None = None,
) -> dict[str, object]:
    """Measure the claims and write ``experiments.html``, ``experiments.json`` and the PNGs into ``out``.

    Finished runs are kept in ``out/runs`` (one JSON per run, keyed by its config and seed, and
    the weights of the models claims 5 and 6 analyse); a rerun skips them, so an interrupted
    suite resumes where it stopped.

    Args:
        out: the output folder (created).
        suite: a :class:`SuiteConfig` or the name of a preset (``"full"``, ``"quick"``).
        claims: names or numbers of the claims to measure (default: all six).
        on_run: ``on_run(index, total, config, cached)`` before each run (index from 1).
        on_step: ``on_step(step, steps, loss)`` after each training step.
        on_run_end: ``on_run_end(record, cached)`` after each run.

    Returns:
        the contents of experiments.json.
    """
    from headwise.experiments._page import write_page

    suite = suite_config(suite) if isinstance(suite, str) else suite
    if not isinstance(suite, SuiteConfig):
        raise TypeError(f"suite must be a SuiteConfig or a preset name, got {type(suite).__name__}.")
    chosen = pick_claims(claims)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultsCache(out / "runs")
    start = time.perf_counter()
    plan = planned_runs(suite, chosen)
    records: dict[str, RunRecord] = {}
    trained = 0
    for index, (config, keep) in enumerate(plan, start=1):
        record = cache.get(config, weights=keep)
        if on_run is not None:
            on_run(index, len(plan), config, record is not None)
        if record is None:
            record, model = train(config, on_step=on_step)
            cache.put(record, model if keep else None)
            trained += 1
            cached = False
        else:
            cached = True
        records[config.key()] = record
        if on_run_end is not None:
            on_run_end(record, cached)
    training_seconds = time.perf_counter() - start
    results = Results(records, cache.model)
    analysed: list[ClaimResult] = [claim.analyze(suite, results, out) for claim in chosen]
    text = corpus()
    report: dict[str, object] = {
        "suite": suite.name,
        "settings": suite.to_dict(),
        "claims": [c.to_dict() for c in analysed],
        "runs": {"total": len(plan), "trained": trained, "cached": len(plan) - trained,
                 "seconds": sum(r.seconds for r in records.values())},
        "seconds": {"training": training_seconds, "total": time.perf_counter() - start},
        "text": {
            "source": "pydoc_data.topics (Python's bundled documentation), UTF-8 bytes",
            "split": f"whole topics: every {VALIDATION_EVERY}th topic in sorted order is validation text",
            "train_bytes": len(text.train), "validation_bytes": len(text.validation),
            "validation_topics": list(text.validation_topics),
        },
        "machine": {"threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        "versions": _versions(),
        "records": [_json_safe(r.to_dict()) for r in records.values()],
        "html": "experiments.html",
    }
    report = _json_safe(report)
    write_page(out, report, analysed)
    report["seconds"]["total"] = time.perf_counter() - start  # type: ignore[index]
    (out / "experiments.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _versions() -> dict[str, str]:
    import headwise

    return {"headwise": headwise.__version__, "torch": torch.__version__, "python": platform.python_version()}


def _json_safe(value: object) -> object:
    """NaN and infinities as ``None`` (standard JSON), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
