"""Verdicts computed from per-seed effects: holds, does not hold on this setup, or inconclusive.

The rule (docs/claims.md): a test gives one effect per seed, signed so that a positive effect
is what the claim predicts (e.g. loss without scaling minus loss with it).  With ``effect``
their mean, ``spread`` their sample standard deviation and ``floor`` the smallest effect that
matters for the measure,

* **holds**: ``effect > 2 * spread`` and ``effect >= floor``: a clear effect, in the claimed
  direction, of a size that matters;
* **does not hold**: ``effect < -2 * spread`` (a clear effect the other way), or
  ``|effect| + 2 * spread < floor`` (whatever the effect is, it is clearly smaller than the floor);
* **inconclusive**: anything else (the seeds disagree, or the effect is too small to tell).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["SPREADS", "STATUSES", "Verdict", "combine", "verdict"]

#: The three outcomes, in the order the pages list them.
STATUSES = ("holds", "does not hold", "inconclusive")

#: An effect must exceed this many standard deviations of its seeds to count as clear.
SPREADS = 2.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one test of a claim.

    Attributes:
        statement: what was tested, phrased so that a positive effect supports it.
        status: one of :data:`STATUSES`.
        effect: mean of the per-seed effects.
        spread: their sample standard deviation (0 when they agree exactly).
        effects: the per-seed effects.
        floor: the smallest effect that counts.
        unit: the unit of the effect.
        primary: whether the claim's verdict is drawn from this test (else it is supporting evidence).
        reason: why the status, in words.
    """

    statement: str
    status: str
    effect: float
    spread: float
    effects: tuple[float, ...]
    floor: float
    unit: str
    primary: bool
    reason: str

    @property
    def ratio(self) -> float:
        """|effect| / spread: how many standard deviations of the seeds the effect is (inf when they agree)."""
        if self.spread == 0.0:
            return math.inf if self.effect != 0.0 else math.nan
        return abs(self.effect) / self.spread

    @property
    def sentence(self) -> str:
        """The verdict in one sentence, with its numbers."""
        ratio = self.ratio
        ratio = (
            "the same in every seed" if not math.isfinite(ratio) else f"{ratio:.1f}x its spread"
        )
        return (
            f"{self.status.capitalize()}: {self.statement}. Effect {self.effect:+.3g} ± {self.spread:.2g} "
            f"{self.unit} (mean ± sd over {len(self.effects)} seeds, {ratio}); {self.reason}."
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["effects"] = list(self.effects)
        data["ratio"] = self.ratio if math.isfinite(self.ratio) else None
        data["sentence"] = self.sentence
        return data


def verdict(
    statement: str, effects: Sequence[float], *, floor: float, unit: str, primary: bool = True
) -> Verdict:
    """Apply the rule of this module to per-seed ``effects`` (positive = as the claim says).

    Raises:
        ValueError: fewer than 2 effects (no spread), a non-finite effect, or a negative floor.
    """
    values = [float(e) for e in effects]
    if len(values) < 2:
        raise ValueError(f"a verdict needs the effects of at least 2 seeds to measure a spread, got {len(values)}.")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"effects must be finite numbers, got {values}; a diverged run needs a finite stand-in.")
    if not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be a finite number >= 0, got {floor!r}.")
    effect = statistics.fmean(values)
    spread = statistics.stdev(values)
    band = SPREADS * spread
    if effect > band and effect >= floor and effect > 0:
        status, reason = "holds", f"the effect exceeds {SPREADS:g} sd of the seeds and the floor of {floor:.3g}"
    elif effect < -band:
        status, reason = "does not hold", f"the effect goes the other way by more than {SPREADS:g} sd of the seeds"
    elif abs(effect) + band < floor:
        status, reason = "does not hold", f"the effect plus {SPREADS:g} sd stays below the floor of {floor:.3g}"
    elif effect > band:
        status, reason = "inconclusive", f"the effect is clear but below the floor of {floor:.3g}"
    else:
        status, reason = "inconclusive", f"the effect is within {SPREADS:g} sd of the seeds"
    return Verdict(
        statement=statement, status=status, effect=effect, spread=spread, effects=tuple(values),
        floor=float(floor), unit=unit, primary=primary, reason=reason,
    )


def combine(verdicts: Sequence[Verdict]) -> str:
    """A claim's status from its primary tests: all hold -> holds; any does not hold -> does not hold; else inconclusive."""
    primary = [v for v in verdicts if v.primary]
    if not primary:
        raise ValueError("a claim needs at least one primary test to draw its verdict from.")
    if all(v.status == "holds" for v in primary):
        return "holds"
    if any(v.status == "does not hold" for v in primary):
        return "does not hold"
    return "inconclusive"
