"""What a suite of experiments runs (:class:`SuiteConfig`, its presets) and the results cache."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from headwise.experiments._model import ByteLM, ModelConfig
from headwise.experiments._train import RunConfig, RunRecord

__all__ = ["SUITES", "ResultsCache", "SuiteConfig", "suite_config"]


@dataclass(frozen=True)
class SuiteConfig:
    """The settings of the six experiments (docs/claims.md).

    Args:
        name: a label for the pages (``"full"``, ``"quick"``, ...).
        seeds: the seeds every setting runs with (at least 3).
        base: the recipe of claims 2, 3, 5 and 6 (its ``seed`` is replaced by each of ``seeds``).
        scaling_heads: heads per layer in the scaling experiment.
        scaling_head_dims: head dims of the scaling experiment (the largest draws the verdict).
        scaling_lrs: learning rates of the scaling experiment (trained without gradient clipping).
        head_counts: heads per layer at the base width (head dim = width / heads); 1 must be one.
        head_size_dims: head dims given to the largest head count (width / heads must be one of them).
        overfit: the recipe of the dropout experiment: a bigger model on little text.
        dropout: attention dropout of the dropout experiment.
        head_dropout: DropHead probability of the dropout experiment.
        analysed_heads: the head count of the base models whose heads claims 5 and 6 analyse.
        fractions: shares of the heads removed along the pruning curve, ascending from 0.
        little_loss_fraction: the share at which "little loss" is judged (one of ``fractions``).
        little_loss: the loss increase, nats per byte, below which removing heads counts as little loss.
        random_orders: random removal orders per trained model in the pruning baseline.
        calibration_passages: passages of training text that importance scores read.
        statistics_passages: passages of validation text that head statistics read.
    """

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    base: RunConfig = field(default_factory=RunConfig)
    scaling_heads: int = 2
    scaling_head_dims: tuple[int, ...] = (16, 64)
    scaling_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    head_counts: tuple[int, ...] = (1, 2, 4, 8, 16)
    head_size_dims: tuple[int, ...] = (4, 8, 16)
    overfit: RunConfig = field(default_factory=RunConfig)
    dropout: float = 0.1
    head_dropout: float = 0.2
    analysed_heads: int = 8
    fractions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5)
    little_loss_fraction: float = 0.25
    little_loss: float = 0.05
    random_orders: int = 3
    calibration_passages: int = 64
    statistics_passages: int = 64

    def __post_init__(self) -> None:
        seeds = list(self.seeds)
        if len(seeds) < 3 or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds
        ):
            raise ValueError(f"seeds must be at least 3 distinct non-negative ints (mean and spread), got {self.seeds!r}.")
        width = self.base.model.embed_dim
        counts = list(self.head_counts)
        if 1 not in counts or len(counts) < 3 or counts != sorted(set(counts)) or any(width % h for h in counts):
            raise ValueError(
                f"head_counts must be at least 3 ascending head counts that divide the width {width}, one of them 1; "
                f"got {self.head_counts!r}."
            )
        most = counts[-1]
        if width // most not in self.head_size_dims or len(self.head_size_dims) < 2:
            raise ValueError(
                f"head_size_dims must hold the width-tied head dim {width // most} of {most} heads and at least one "
                f"other, got {self.head_size_dims!r}."
            )
        if self.analysed_heads not in counts or self.analysed_heads < 2:
            raise ValueError(f"analysed_heads must be one of head_counts above 1 {counts}, got {self.analysed_heads!r}.")
        fractions = list(self.fractions)
        if fractions[:1] != [0.0] or fractions != sorted(set(fractions)) or fractions[-1] >= 1.0 or len(fractions) < 2:
            raise ValueError(f"fractions must ascend from 0.0 and stay below 1, got {self.fractions!r}.")
        if self.little_loss_fraction not in fractions[1:]:
            raise ValueError(
                f"little_loss_fraction must be one of the nonzero fractions {fractions[1:]}, got {self.little_loss_fraction!r}."
            )
        if not self.scaling_head_dims or not self.scaling_lrs:
            raise ValueError("scaling_head_dims and scaling_lrs need at least one value each.")
        for name in ("dropout", "head_dropout"):
            p = getattr(self, name)
            if not 0.0 < p < 1.0:
                raise ValueError(f"{name} must be in (0, 1) (compared with none), got {p!r}.")
        if self.overfit.train_bytes is None:
            raise ValueError("overfit.train_bytes must limit the training text: the dropout experiment needs a model that overfits.")
        for name in ("random_orders", "calibration_passages", "statistics_passages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not (isinstance(self.little_loss, (int, float)) and math.isfinite(self.little_loss) and self.little_loss > 0):
            raise ValueError(f"little_loss must be a positive number of nats per byte, got {self.little_loss!r}.")

    def run(self, recipe: RunConfig, seed: int, **model: object) -> RunConfig:
        """``recipe`` with ``seed`` and the model fields changed; a head dim equal to width / heads is
        written as ``None``, so that the same network has one key in the cache."""
        shape = replace(recipe.model, **model)
        if shape.head_dim is not None and shape.head_dim * shape.num_heads == shape.embed_dim:
            shape = replace(shape, head_dim=None)
        return replace(recipe, model=shape, seed=seed)

    def to_dict(self) -> dict[str, object]:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as experiments.json holds them


def _full() -> SuiteConfig:
    base = RunConfig(
        model=ModelConfig(embed_dim=64, num_layers=2, num_heads=4, max_length=128),
        steps=600, batch_size=8, lr=3e-3, warmup=60, eval_every=50, eval_windows=32,
    )
    overfit = RunConfig(
        model=ModelConfig(embed_dim=128, num_layers=2, num_heads=8, max_length=128),
        steps=600, batch_size=8, lr=3e-3, warmup=60, eval_every=50, eval_windows=32, train_bytes=20_000,
    )
    return SuiteConfig(name="full", base=base, overfit=overfit)


def _quick() -> SuiteConfig:
    """A first look: contexts of 32 bytes, 240 steps, one learning rate, three head counts (numbers too noisy to quote)."""
    base = RunConfig(
        model=ModelConfig(embed_dim=32, num_layers=2, num_heads=4, max_length=32),
        steps=240, batch_size=8, lr=1e-2, warmup=24, eval_every=40, eval_windows=16,
    )
    overfit = RunConfig(
        model=ModelConfig(embed_dim=64, num_layers=2, num_heads=4, max_length=32),
        steps=240, batch_size=8, lr=5e-3, warmup=24, eval_every=40, eval_windows=16, train_bytes=3_000,
    )
    return SuiteConfig(
        name="quick", base=base, scaling_head_dims=(8, 32), scaling_lrs=(1e-2,), head_counts=(1, 4, 16),
        head_size_dims=(2, 8), overfit=overfit, analysed_heads=4, fractions=(0.0, 0.25, 0.5), random_orders=2,
        calibration_passages=16, statistics_passages=16,
    )


def _tiny() -> SuiteConfig:
    """For tests: every code path, in seconds (the numbers mean nothing)."""
    base = RunConfig(
        model=ModelConfig(embed_dim=16, num_layers=1, num_heads=2, max_length=16),
        steps=4, batch_size=2, lr=1e-2, warmup=1, eval_every=2, eval_windows=2,
    )
    overfit = replace(base, train_bytes=200)
    return SuiteConfig(
        name="tiny", base=base, scaling_heads=2, scaling_head_dims=(8,), scaling_lrs=(1e-2,), head_counts=(1, 2, 4),
        head_size_dims=(4, 8), overfit=overfit, analysed_heads=4, fractions=(0.0, 0.25, 0.5), random_orders=2,
        calibration_passages=4, statistics_passages=4,
    )


#: The preset suites: ``"full"`` (docs/claims.md; 84 runs, an estimated 30-45 minutes on 2 CPU cores), ``"quick"``
#: (a first look, under 3 minutes), ``"tiny"`` (the tests' smoke run).
SUITES = {"full": _full, "quick": _quick, "tiny": _tiny}


def suite_config(name: str) -> SuiteConfig:
    """The preset named ``name`` (one of :data:`SUITES`)."""
    if name not in SUITES:
        raise ValueError(f"no suite named {name!r}; the presets are {', '.join(SUITES)}.")
    return SUITES[name]()


class ResultsCache:
    """Finished runs in a folder: ``<key>.json`` (the :class:`RunRecord`) and, where asked for, ``<key>.pt`` (weights).

    The key is :meth:`RunConfig.key` (config, seed and code version), so a rerun with the same
    settings finds its runs and changed settings never reuse stale ones.  Files are written
    whole (a temporary file renamed into place): an interrupted suite leaves only finished runs.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def get(self, config: RunConfig, *, weights: bool = False) -> RunRecord | None:
        """The record of a finished run (``None`` if missing, or if ``weights`` are wanted and were not kept)."""
        path = self.folder / f"{config.key()}.json"
        if not path.is_file() or (weights and not (self.folder / f"{config.key()}.pt").is_file()):
            return None
        record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        return record if record.config == config.to_dict() else None

    def model(self, config: RunConfig) -> ByteLM:
        """The trained network of a finished run whose weights were kept (eval mode)."""
        path = self.folder / f"{config.key()}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the run was cached without its weights; delete its .json to rerun it.")
        model = ByteLM(config.model)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()

    def put(self, record: RunRecord, model: ByteLM | None = None) -> None:
        """Store a finished run (and ``model``'s weights when given)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if model is not None:
            self._write(f"{record.key}.pt", lambda f: torch.save(model.state_dict(), f))
        text = json.dumps(record.to_dict(), indent=1, allow_nan=True)
        self._write(f"{record.key}.json", lambda f: f.write(text.encode("utf-8")))

    def _write(self, name: str, write) -> None:  # type: ignore[no-untyped-def]
        handle, temp = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as f:
                write(f)
            os.replace(temp, self.folder / name)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
