from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from heuristics.output_length import make_predictor
from heuristics.padding import (
    ArrivalRate,
    ErrorRange,
    ErrorRanges,
    LengthPlanner,
    confidence,
    hoeffding_padding,
    quantile_padding,
)
from runtime.core.errors import ConfigError
from runtime.core.request import Request

EDGE = 1.0 - math.exp(-2.0)  # ≈ 0.8647: with n = 1 the unclipped Hoeffding padding reaches R here


def _req(i: int = 0, *, prompt: int = 100, output: int = 50, app: str = "chat", slo: str = "tight") -> Request:
    return Request(f"r{i}", arrival_time=0.0, num_prompt_tokens=prompt, max_tokens=output, app=app, slo_class=slo)


def _split(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Two apps with lognormal outputs of different scale; rows i.i.d., so any positional split is fair."""
    rng = np.random.default_rng(seed)
    apps = np.where(rng.random(n) < 0.5, "chat", "code")
    scale = np.where(apps == "chat", 200.0, 30.0)
    output = np.maximum(1, np.rint(scale * np.exp(rng.normal(0, 0.6, n)))).astype(np.int64)
    slo = np.where(apps == "chat", "tight", "medium")
    return pd.DataFrame({"app": apps, "slo_class": slo, "num_prompt_tokens": rng.integers(10, 2000, n),
                         "num_output_tokens": output})


# Formulas --------------------------------------------------------------------------------------------------------
def test_confidence_falls_with_rate():
    assert confidence(0.95, 0.001, 0.0) == 0.95
    assert confidence(0.95, 0.001, 100.0) == pytest.approx(0.95 / 1.1)
    values = [confidence(0.95, 0.05, r) for r in (0.0, 1.0, 5.0, 20.0)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0]
    assert confidence(0.9, 0.0, 1e6) == 0.9


def test_hoeffding_unclipped_matches_formula():
    # R = 100, R_up = 80: n = 4 at conf 0.95 gives 100 * sqrt(ln 20 / 8) ≈ 61.2 < 80 (the clip does not bind).
    t = hoeffding_padding(100.0, 80.0, 0.95, 4)
    assert t == pytest.approx(100.0 * math.sqrt(math.log(20.0) / 8.0)) == pytest.approx(61.19, abs=0.01)
    # Low confidence, n = 1: 100 * sqrt(ln 2 / 2) ≈ 58.9 < 80.
    assert hoeffding_padding(100.0, 80.0, 0.5, 1) == pytest.approx(100.0 * math.sqrt(math.log(2.0) / 2.0))
    assert hoeffding_padding(100.0, 80.0, 0.0, 1) == 0.0


def test_hoeffding_clip_binds_from_one_minus_e_minus_two_with_n_one():
    # With R_up = R the clip binds exactly when the unclipped value R * sqrt(ln(1/(1-conf))/2) reaches R.
    assert hoeffding_padding(100.0, 100.0, EDGE - 0.01, 1) < 100.0
    assert hoeffding_padding(100.0, 100.0, EDGE + 1e-9, 1) == 100.0
    assert hoeffding_padding(100.0, 100.0, 0.95, 1) == 100.0
    # At the published defaults (conf 0.95, n = 1) any R_up < R binds: t = R_up.
    assert hoeffding_padding(100.0, 40.0, 0.95, 1) == 40.0
    # The rate term then has no effect: a lower conf still binds.
    assert hoeffding_padding(100.0, 40.0, 0.95 / 1.05, 1) == 40.0


def test_hoeffding_zero_range_and_validation():
    assert hoeffding_padding(0.0, 0.0, 0.95, 1) == 0.0
    assert hoeffding_padding(0.0, 5.0, 0.99, 1) == 0.0
    with pytest.raises(ValueError, match="conf"):
        hoeffding_padding(10.0, 5.0, 1.0, 1)
    with pytest.raises(ValueError, match="n must"):
        hoeffding_padding(10.0, 5.0, 0.5, 0)


def test_quantile_padding_hand_built():
    errors = np.array([-10.0, -5.0, 0.0, 5.0, 10.0, 20.0])
    assert quantile_padding(errors, 0.5) == 2.5          # halfway between 0 and 5
    assert quantile_padding(errors, 0.9) == 15.0         # position 4.5: between 10 and 20
    assert quantile_padding(errors, 1.0) == 20.0
    assert quantile_padding(errors, 0.1) == 0.0          # -7.5, padded upward only
    assert quantile_padding(np.zeros(0), 0.9) == 0.0
    rng = np.random.default_rng(1)
    e = np.sort(rng.normal(0, 50, 101))
    for conf in (0.0, 0.33, 0.8, 0.95, 0.999):
        assert quantile_padding(e, conf) == pytest.approx(max(0.0, np.quantile(e, conf)))


# ArrivalRate -----------------------------------------------------------------------------------------------------
def test_arrival_rate_window_edges():
    rate = ArrivalRate(window_s=10.0)
    assert rate.rate(0.0) == 0.0
    for t in (0.0, 5.0, 10.0):
        rate.observe(t)
    assert rate.rate(10.0) == pytest.approx(2 / 10)     # (0, 10]: 0 is out, 10 is in
    assert rate.rate(14.999) == pytest.approx(2 / 10)
    assert rate.rate(15.0) == pytest.approx(1 / 10)     # 5 leaves exactly at now - window
    assert rate.rate(19.999) == pytest.approx(1 / 10)
    assert rate.rate(20.0) == 0.0
    rate.observe(25.0)
    assert rate.rate(24.0) == 0.0                       # observed ahead of now: not counted yet
    assert rate.rate(25.0) == pytest.approx(1 / 10)


def test_arrival_rate_divides_by_the_full_window_and_rejects_disorder():
    rate = ArrivalRate(window_s=30.0)
    for t in np.arange(0.0, 3.0, 0.5):                  # 6 arrivals in the first 3 s
        rate.observe(float(t))
    assert rate.rate(3.0) == pytest.approx(6 / 30.0)
    with pytest.raises(ValueError, match="must not decrease"):
        rate.observe(1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        rate.rate(2.0)
    with pytest.raises(ConfigError, match="scheduler.cacheopt.rate_window_s"):
        ArrivalRate(window_s=0)


# ErrorRanges -----------------------------------------------------------------------------------------------------
def test_error_range_is_trimmed_p1_p99():
    e = np.concatenate([np.arange(-50.0, 50.0), [10_000.0]])   # one huge outlier
    group = ErrorRange.from_errors(e)
    q1, q99 = np.percentile(e, [1, 99])
    assert group.R == pytest.approx(q99 - q1) and group.R < 200.0
    assert group.R_up == pytest.approx(q99)
    assert np.all(np.diff(group.errors) >= 0) and group.n == 101
    assert ErrorRange.from_errors(-np.arange(1.0, 30.0)).R_up == 0.0   # all over-predicted: nothing to pad


def test_error_ranges_group_fallback():
    n_chat, n_rare = 50, 3
    errors = np.concatenate([np.linspace(-10, 10, n_chat), [100.0, 200.0, 300.0], np.linspace(0, 40, 20)])
    app = ["chat"] * n_chat + ["rare"] * n_rare + ["code"] * 20
    slo = ["tight"] * n_chat + ["tight"] * n_rare + ["medium"] * 20
    ranges = ErrorRanges.from_errors(errors, app, slo, min_group_size=10)
    assert set(ranges.by_app) == {"chat", "code"}                       # "rare" has only 3 errors
    assert ranges.lookup("chat", "tight").R == pytest.approx(np.ptp(np.percentile(np.linspace(-10, 10, 50), [1, 99])))
    tight = np.concatenate([np.linspace(-10, 10, n_chat), [100.0, 200.0, 300.0]])
    assert ranges.lookup("rare", "tight").R == pytest.approx(np.ptp(np.percentile(tight, [1, 99])))
    assert ranges.lookup("unseen", "gold").R == pytest.approx(np.ptp(np.percentile(errors, [1, 99])))
    described = ranges.describe()
    assert set(described) == {"app:chat", "app:code", "slo:tight", "slo:medium", "global"}
    assert described["global"]["n"] == 73


# LengthPlanner ---------------------------------------------------------------------------------------------------
def test_oracle_planner_has_no_padding():
    planner = LengthPlanner("oracle", max_model_len=4096).calibrate(_split())
    assert planner.num_calibration_rows == 2000 and planner.num_fit_rows == 0
    assert all(g["R"] == 0.0 and g["R_up"] == 0.0 for g in planner.describe()["groups"].values())
    r = _req(output=321)
    assert planner.padding(r, 0.0) == 0.0
    assert planner.target_length(r, 0.0) == 321
    # Without calibration a no-training predictor plans with zero ranges.
    assert LengthPlanner("oracle", max_model_len=4096).target_length(r, 0.0) == 321


def test_planner_hoeffding_padding_matches_an_independent_computation():
    frame = _split()
    planner = LengthPlanner(make_predictor("class_quantile"), max_model_len=8192, hoeffding_n=4, alpha=0.9,
                            beta=0.001, calibration_frac=0.25).calibrate(frame)
    assert (planner.num_fit_rows, planner.num_calibration_rows) == (1500, 500)
    fit, cal = frame.iloc[:1500], frame.iloc[1500:]
    chat = cal[cal["app"] == "chat"]
    median = np.median(fit.loc[fit["app"] == "chat", "num_output_tokens"])
    e = chat["num_output_tokens"].to_numpy() - median
    q1, q99 = np.percentile(e, [1, 99])
    expected = min(max(0.0, q99), (q99 - q1) * math.sqrt(math.log(1 / (1 - 0.9)) / 8))
    r = _req(output=1, app="chat")
    assert planner.estimate(r) == median
    assert planner.padding(r, 0.0) == pytest.approx(expected)
    assert planner.target_length(r, 0.0) == math.ceil(median + expected)
    groups = planner.describe()["groups"]
    assert groups["app:chat"]["R"] == pytest.approx(q99 - q1, abs=1e-3)
    assert planner.describe()["mode"] == "hoeffding"


def test_planner_default_clip_binds_and_rate_lowers_unclipped_padding():
    frame = _split()
    # Defaults (alpha 0.95, n 1): padding is R_up whatever the load.
    planner = LengthPlanner("class_quantile", max_model_len=8192).calibrate(frame)
    r = _req(app="chat")
    r_up = planner.ranges.lookup("chat", "tight").R_up
    assert planner.padding(r, 0.0) == pytest.approx(r_up)
    # n = 4, beta = 0.05: 100 arrivals in 10 s (rate 100/30) lower conf and so the padding.
    planner = LengthPlanner("class_quantile", max_model_len=8192, hoeffding_n=4, beta=0.05).calibrate(frame)
    idle = planner.padding(r, 0.0)
    assert idle < r_up
    for t in np.linspace(0.0, 10.0, 100):
        planner.observe_arrival(float(t))
    assert planner.conf(10.0) == pytest.approx(0.95 / (1 + 0.05 * 100 / 30))
    assert planner.padding(r, 10.0) < idle


def test_planner_quantile_mode():
    frame = _split()
    planner = LengthPlanner("class_quantile", max_model_len=8192, mode="quantile", alpha=0.8).calibrate(frame)
    fit, cal = frame.iloc[:1000], frame.iloc[1000:]
    median = np.median(fit.loc[fit["app"] == "code", "num_output_tokens"])
    e = cal.loc[cal["app"] == "code", "num_output_tokens"].to_numpy() - median
    r = _req(app="code", slo="medium")
    assert planner.padding(r, 0.0) == pytest.approx(max(0.0, np.quantile(e, 0.8)))


def test_planner_noisy_predictor_calibrates_on_every_row():
    planner = LengthPlanner(make_predictor("noisy", noise_sigma=0.5), max_model_len=8192).calibrate(_split())
    assert planner.num_calibration_rows == 2000
    assert planner.padding(_req(app="chat"), 0.0) > 0.0
    # No training split: zero ranges, no padding.
    assert LengthPlanner("noisy", max_model_len=8192).calibrate(None).padding(_req(app="chat"), 0.0) == 0.0


def test_padding_off_gives_zero():
    planner = LengthPlanner("class_quantile", max_model_len=8192, padding=False).calibrate(_split())
    r = _req(app="chat")
    assert planner.padding(r, 0.0) == 0.0
    assert planner.target_length(r, 0.0) == math.ceil(planner.estimate(r))
    assert planner.describe()["padding"] is False


def test_target_length_clipping():
    planner = LengthPlanner("oracle", max_model_len=1000).calibrate(None)
    # Floor: g + 1 once the request has generated more than its estimate.
    assert planner.target_length(_req(output=50), 0.0, num_output_tokens=80) == 81
    # Ceiling: max_model_len - p.
    assert planner.target_length(_req(prompt=900, output=500), 0.0) == 100
    # Ceiling below the floor: the floor wins.
    assert planner.target_length(_req(prompt=990, output=500), 0.0, num_output_tokens=20) == 21
    # Inside the bounds: ceil(ô + t).
    assert planner.target_length(_req(prompt=100, output=37), 0.0, num_output_tokens=5) == 37


def test_planner_needs_calibration_and_a_split():
    planner = LengthPlanner("regressor", max_model_len=4096)
    with pytest.raises(RuntimeError, match="calibrate"):
        planner.target_length(_req(), 0.0)
    with pytest.raises(ConfigError, match="scheduler.cacheopt.predictor=regressor needs a training split"):
        planner.calibrate(None)
    with pytest.raises(ConfigError, match="calibration_frac"):
        LengthPlanner("regressor", max_model_len=4096, calibration_frac=0.9).calibrate(_split(n=3))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(mode="gaussian"), "scheduler.cacheopt.padding_mode"),
        (dict(alpha=1.0), "scheduler.cacheopt.alpha"),
        (dict(alpha=0.0), "scheduler.cacheopt.alpha"),
        (dict(beta=-0.1), "scheduler.cacheopt.beta"),
        (dict(rate_window_s=0.0), "scheduler.cacheopt.rate_window_s"),
        (dict(hoeffding_n=0), "scheduler.cacheopt.hoeffding_n"),
        (dict(hoeffding_n=1.5), "scheduler.cacheopt.hoeffding_n"),
        (dict(calibration_frac=1.0), "scheduler.cacheopt.calibration_frac"),
        (dict(max_model_len=1), "max_model_len"),
    ],
)
def test_planner_validation(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LengthPlanner("oracle", **{"max_model_len": 4096, **kwargs})
