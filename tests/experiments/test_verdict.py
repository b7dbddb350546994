"""The verdict rule on constructed per-seed effects: holds, does not hold, inconclusive."""

from __future__ import annotations

import math

import pytest

from headwise.experiments import STATUSES, Verdict, combine, verdict


def _v(effects, floor=0.01, primary=True) -> Verdict:
    return verdict("the claimed effect", effects, floor=floor, unit="nats/byte", primary=primary)


def test_clear_effect_in_the_claimed_direction_holds():
    v = _v([0.10, 0.11, 0.12])
    assert v.status == "holds"
    assert v.effect == pytest.approx(0.11) and v.spread == pytest.approx(0.01)
    assert v.ratio == pytest.approx(11.0)
    assert v.sentence.startswith("Holds: the claimed effect. Effect +0.11 ± 0.01 nats/byte (mean ± sd over 3 seeds, 11.0x")


def test_clear_effect_the_other_way_does_not_hold():
    v = _v([-0.10, -0.11, -0.12])
    assert v.status == "does not hold" and "other way" in v.reason


def test_effect_clearly_below_the_floor_does_not_hold():
    v = _v([0.001, 0.002, 0.0015])  # mean 0.0015, 2 sd 0.001: at most 0.0025 < 0.01
    assert v.status == "does not hold" and "below the floor" in v.reason


def test_seeds_that_disagree_are_inconclusive():
    v = _v([0.10, -0.05, 0.20])
    assert v.status == "inconclusive" and "within 2 sd" in v.reason


def test_clear_but_small_effect_is_inconclusive():
    v = _v([0.006, 0.012, 0.009])  # mean 0.009 > 2 sd 0.006, below the floor 0.01, but 0.009 + 0.006 > 0.01
    assert v.status == "inconclusive" and "below the floor" in v.reason


def test_the_boundary_of_two_spreads():
    assert _v([0.09, 0.2, 0.31]).status == "inconclusive"  # mean 0.2 < 2 sd = 0.22
    assert _v([0.11, 0.2, 0.29]).status == "holds"  # mean 0.2 > 2 sd = 0.18


def test_identical_seeds():
    same = _v([0.05, 0.05, 0.05])
    assert same.status == "holds" and same.spread == 0.0 and math.isinf(same.ratio)
    assert "the same in every seed" in same.sentence
    nothing = _v([0.0, 0.0, 0.0])
    assert nothing.status == "does not hold" and nothing.to_dict()["ratio"] is None
    assert _v([0.0, 0.0, 0.0], floor=0.0).status == "inconclusive"  # no effect, but no floor to fall below


def test_to_dict_round_trips_the_numbers():
    data = _v([0.10, 0.11, 0.12]).to_dict()
    assert data["status"] == "holds" and data["effects"] == [0.10, 0.11, 0.12]
    assert data["ratio"] == pytest.approx(11.0) and data["sentence"].startswith("Holds")


def test_combine_uses_primary_tests_only():
    holds, fails, unsure = _v([0.1, 0.11, 0.12]), _v([-0.1, -0.11, -0.12]), _v([0.1, -0.05, 0.2])
    assert combine([holds, holds]) == "holds"
    assert combine([holds, fails]) == "does not hold"
    assert combine([holds, unsure]) == "inconclusive"
    assert combine([unsure, fails]) == "does not hold"
    assert combine([holds, _v([-0.1, -0.11, -0.12], primary=False)]) == "holds"
    assert set(STATUSES) == {"holds", "does not hold", "inconclusive"}
    with pytest.raises(ValueError, match="at least one primary test"):
        combine([_v([0.1, 0.11, 0.12], primary=False)])


@pytest.mark.parametrize(
    ("effects", "floor", "match"),
    [
        ([0.1], 0.01, "at least 2 seeds to measure a spread, got 1"),
        ([0.1, float("nan"), 0.2], 0.01, r"effects must be finite numbers, got \[0.1, nan, 0.2\]"),
        ([0.1, 0.2], -1.0, "floor must be a finite number >= 0, got -1.0"),
    ],
)
def test_bad_input(effects, floor, match):
    with pytest.raises(ValueError, match=match):
        verdict("x", effects, floor=floor, unit="u")
