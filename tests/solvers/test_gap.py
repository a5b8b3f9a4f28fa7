"""Gap accounting's relative gap (bounded whatever the signs of the objectives) and what it measures for the Oracle."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from runtime.cli import run
from solvers.gap import relative_gap
from solvers.solve import DEFAULT_MIP_GAP
from tests.conftest import compose_config


@pytest.mark.parametrize("optimal, heuristic, gap", [
    (1.0, 1.0, 0.0),
    (1.0, 0.25, 0.75),          # 0 <= J <= J*: (J* - J) / J*, as before
    (2.0, 0.0, 1.0),            # the batch gained nothing
    (1.0, -5.0, 1.0),           # it lost: still 1, not (1 + 5) / 1 = 6
    (0.0128, -5.67, 1.0),       # a real vLLM step: 443 when divided by |J*|
    (1e-4, -0.5, 1.0),          # J* at eps level (only lost requests left), J < 0: 5001 when divided by |J*|
    (0.0, -1.0, 1.0),           # J* = 0: 1e9 when divided by max(|J*|, 1e-9)
    (-1.0, -4.0, 0.75),         # every batch loses: the share of J's loss the optimum avoids, 1 - J*/J
    (-1.0, -1.0, 0.0),
    (0.0, 0.0, 0.0),
    (1.0, 1.001, -0.001 / 1.001),  # a solver within its mip_gap of J: slightly negative, as before
])
def test_relative_gap_is_bounded_and_keeps_the_old_value_for_nonnegative_batches(optimal, heuristic, gap):
    assert relative_gap(optimal, heuristic) == pytest.approx(gap, rel=1e-12, abs=1e-15)
    assert -1.0 <= relative_gap(optimal, heuristic) <= 1.0


def test_relative_gap_is_nonincreasing_in_the_heuristic_objective_and_continuous_away_from_zero():
    for optimal in (-2.0, -1e-6, 0.0, 1e-6, 0.5, 3.0):
        h = np.linspace(-10.0, optimal, 2001)
        g = np.array([relative_gap(optimal, x) for x in h])
        assert (np.diff(g) <= 1e-12).all() and (g >= -1e-12).all() and (g <= 1.0).all()
        if abs(optimal) >= 0.5:  # steps of J at most 0.005: no jump (a relative gap's slope is 1/|J*| near J*)
            assert np.abs(np.diff(g)).max() < 0.02
    # Across J* = 0 at a fixed losing batch: 1 on both sides.
    assert relative_gap(1e-12, -1.0) == 1.0 and relative_gap(-1e-12, -1.0) == pytest.approx(1.0, abs=1e-11)


def test_relative_gap_of_a_missing_objective_is_nan():
    assert math.isnan(relative_gap(math.nan, 1.0)) and math.isnan(relative_gap(1.0, math.nan))


def test_vllm_steps_that_score_below_zero_have_gap_one_not_hundreds(tmp_path):
    """vLLM's whole-prompt steps can lose more to SLO penalties than they gain (J(B) < 0 < J*)."""
    summary = run(compose_config(["scheduler=vllm", "workload.num_requests=120", "workload.arrival.rate=5",
                                  "oracle.gap_accounting=true", "oracle.time_limit_s=null"]), tmp_path)
    gaps = pd.read_parquet(tmp_path / "oracle_gap.parquet")
    assert (gaps["status"] == "optimal").all()
    opt, heur, gap = gaps["optimal_objective"], gaps["heuristic_objective"], gaps["gap"]
    negative = heur < 0
    assert negative.sum() >= 5, "the run no longer has steps whose batch scores below zero"
    assert (opt > 0).all()
    assert (gap[negative] == 1.0).all(), gaps[negative & (gap != 1.0)]
    rest = ~negative
    np.testing.assert_allclose(gap[rest], ((opt - heur) / opt)[rest], rtol=1e-12, atol=1e-15)
    assert gap.max() <= 1.0 and 0.0 <= summary["oracle_gap_mean"] <= 1.0 and summary["oracle_gap_p99"] <= 1.0


def _oracle_run(tmp_path, kv_mode):
    out = tmp_path / kv_mode
    run(compose_config(["scheduler=oracle", f"scheduler.kv_mode={kv_mode}", "workload.num_requests=100",
                        "workload.arrival.rate=8", "kv.num_blocks_scale=0.5", "oracle.gap_accounting=true",
                        "oracle.time_limit_s=null"]), out)
    gaps = pd.read_parquet(out / "oracle_gap.parquet")
    own = pd.read_parquet(out / "oracle.parquet")
    assert (gaps["status"] == "optimal").all() and not own["fallback"].any()
    joined = gaps.merge(own[["iteration", "objective", "num_candidates"]], on="iteration", suffixes=("", "_own"))
    assert len(joined) == len(gaps) == len(own)
    # The accountant scores the Oracle's batch exactly as the Oracle did, on the same candidates.
    np.testing.assert_allclose(joined["heuristic_objective"], joined["objective"], rtol=1e-12, atol=1e-15)
    assert (joined["num_candidates"] == joined["num_candidates_own"]).all()
    return joined


def test_the_oracle_has_no_gap_with_physical_kv_and_pays_for_its_footprint_rule_otherwise(tmp_path):
    """Gap accounting's reference is (1)-(5) for every scheduler. The Oracle with ``kv_mode: physical`` solves that
    very instance, so its gap is 0 (up to the mip_gap) on every step; with ``kv_mode: footprint`` (its default) it
    also imposes (4f), and the steps where that binds show a gap: expected, not an accounting error."""
    physical = _oracle_run(tmp_path, "physical")
    assert (physical["gap"].abs() <= 2 * DEFAULT_MIP_GAP).all(), physical[physical["gap"].abs() > 2 * DEFAULT_MIP_GAP]
    footprint = _oracle_run(tmp_path, "footprint")
    assert (footprint["gap"] >= -2 * DEFAULT_MIP_GAP).all()
    assert (footprint["gap"] > 0.1).any(), "(4f) never bound: this run no longer shows the footprint rule's price"
