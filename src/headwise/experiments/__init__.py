"""Experiments: the folklore of multi-head attention, measured on small models trained here.

Six claims, each tested with small byte-level language models built from headwise blocks
(:class:`ByteLM`) and trained on Python's bundled documentation (a fixed split by topic),
with at least three seeds, and a computed verdict (holds / does not hold / inconclusive)::

    from headwise.experiments import run_experiments

    report = run_experiments("claims", "quick")       # under 3 minutes on 2 CPU cores; "full": 30-45
    for claim in report["claims"]:
        print(claim["number"], claim["title"], claim["status"])

* :func:`run_experiments` trains what the chosen claims need (finished runs are cached in
  ``out/runs`` and skipped on a rerun), analyses them and writes ``experiments.html``,
  ``experiments.json`` and PNGs; ``headwise experiments`` is its command.
* :class:`SuiteConfig` and :data:`SUITES` (presets ``"full"``, ``"quick"``): what is trained.
* :func:`train` with a :class:`RunConfig`: one run, its curves (:class:`RunRecord`) and model.
* :func:`verdict` and :func:`combine`: the rule that turns per-seed effects into a verdict.
* :class:`ByteLM` is a :class:`headwise.heads.HeadModel`: the heads toolkit scores, masks and
  prunes it.

See docs/claims.md for the claims, the rule and the published numbers they compare with.
"""

from headwise.experiments._claims import CLAIMS, Claim, ClaimResult
from headwise.experiments._data import Corpus, corpus
from headwise.experiments._model import SCALINGS, ByteLM, ModelConfig
from headwise.experiments._runner import describe, pick_claims, planned_runs, run_experiments
from headwise.experiments._suite import SUITES, ResultsCache, SuiteConfig, suite_config
from headwise.experiments._train import DIVERGENCE_RISE, RunConfig, RunRecord, train
from headwise.experiments._verdict import SPREADS, STATUSES, Verdict, combine, verdict

__all__ = [
    "CLAIMS",
    "DIVERGENCE_RISE",
    "SCALINGS",
    "SPREADS",
    "STATUSES",
    "SUITES",
    "ByteLM",
    "Claim",
    "ClaimResult",
    "Corpus",
    "ModelConfig",
    "ResultsCache",
    "RunConfig",
    "RunRecord",
    "SuiteConfig",
    "Verdict",
    "combine",
    "corpus",
    "describe",
    "pick_claims",
    "planned_runs",
    "run_experiments",
    "suite_config",
    "train",
    "verdict",
]
