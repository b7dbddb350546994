"""Side-by-side benchmarks against the PyTorch baselines, behind ``headwise bench``.

Every suite runs its implementations in one process, with the same weights and inputs,
round-robin after a warm-up, and reports ratios time(baseline) / time(headwise) per
round as median (min) (see :mod:`headwise.bench.harness`).  A suite is a module with
``main(argv) -> int`` (its detailed tables; ``--quick``, ``--json PATH`` and its own
options: ``python -m headwise.bench.mha --help``) and ``summarize(report) -> list[Row]``.

======== ===========================================================================
mha      headwise.MultiheadAttention against torch.nn.MultiheadAttention (and Linear + SDPA)
decode   headwise.Attention's KV cache against recomputing the prefix and a hand-written cache
encode   all-MiniLM-L6-v2 sentence encoding against transformers' BertModel (needs transformers)
prune    a head-pruned all-MiniLM-L6-v2 against the unpruned model
long     full SDPA against window-512 and linear attention at L = 2k to 64k (about 8 minutes)
quant    int8 (both QuantConfig modes) and bfloat16 MiniLM against float32, eager and compiled
         (needs torchao)
generate SmolLM2-135M-Instruct's prefill and decode against transformers' ``generate``, float32,
         bfloat16 and int8 weight-only, beside the bandwidth-bound floor (needs transformers)
======== ===========================================================================

``memory=True`` (``headwise bench --memory``) adds the peak-memory processes of the mha,
long and generate suites; without it they are skipped (``--no-memory``).

Besides the suites, the measuring pieces other workflows reuse are public here:
:class:`Budget` (how long to time a comparison) and :func:`compare_speed` (a pruned
sentence encoder against the unpruned one, which ``headwise report`` shows).  The suites
live in the package, not in ``benchmarks/``, because ``headwise bench`` is a user feature:
a user checks headwise's claims on their own machine with the installed command.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import tempfile
from pathlib import Path

from headwise.bench.harness import Budget, Ratio, Row
from headwise.bench.prune import compare_speed

__all__ = ["SUITES", "Budget", "Ratio", "Row", "compare_speed", "missing_reference", "run_suite"]

#: suite name -> module
SUITES = {
    "mha": "headwise.bench.mha",
    "decode": "headwise.bench.decode",
    "encode": "headwise.bench.encode",
    "prune": "headwise.bench.prune",
    "long": "headwise.bench.long",
    "quant": "headwise.bench.quant",
    "generate": "headwise.bench.generate",
}
#: packages a suite needs beyond headwise's own dependencies (a reference, or an extra's library)
_NEEDS = {"encode": "transformers", "quant": "torchao", "generate": "transformers"}
#: suites whose peak-memory section runs only when memory is asked for
_MEMORY_SECTIONS = ("mha", "long", "generate")


def missing_reference(suite: str) -> str | None:
    """The package ``suite`` needs (its reference, or an optional library) and that is not installed, else None."""
    package = _NEEDS.get(suite)
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return package


def run_suite(suite: str, *, quick: bool = False, memory: bool = False) -> list[Row]:
    """Run one suite (it prints its own tables) and return its summary rows."""
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; choose from {', '.join(SUITES)}.")
    package = missing_reference(suite)
    if package is not None:
        raise ModuleNotFoundError(
            f"the {suite} suite needs {package}, which is not installed: pip install {package}",
            name=package,
        )
    module = importlib.import_module(SUITES[suite])
    with tempfile.TemporaryDirectory(prefix="headwise-bench-") as folder:
        path = Path(folder) / f"{suite}.json"
        argv = ["--json", str(path), *(["--quick"] if quick else [])]
        if suite in _MEMORY_SECTIONS and not memory:
            argv.append("--no-memory")
        status = module.main(argv)
        if status != 0 or not path.is_file():
            raise RuntimeError(
                f"benchmark suite {suite} failed (exit status {status}); its output above says why."
            )
        report = json.loads(path.read_text(encoding="utf-8"))
    return module.summarize(report)
