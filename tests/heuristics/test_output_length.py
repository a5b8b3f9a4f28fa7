from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from heuristics.output_length import PREDICTOR_KINDS, make_predictor
from runtime.core.errors import ConfigError
from runtime.core.request import Request


def _req(i: int = 0, *, prompt: int = 100, output: int = 50, app: str = "chat", slo: str = "tight") -> Request:
    return Request(f"r{i}", arrival_time=0.0, num_prompt_tokens=prompt, max_tokens=output, app=app, slo_class=slo)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["app", "slo_class", "num_prompt_tokens", "num_output_tokens"])


# A hand-built split: chat (tight) outputs 10..50, code (medium) 1..5, summ (tight) 1000 x 3.
HAND = _frame(
    [("chat", "tight", 100, o) for o in (10, 20, 30, 40, 50)]
    + [("code", "medium", 100, o) for o in (1, 2, 3, 4, 5)]
    + [("summ", "tight", 100, 1000)] * 3
)


def test_oracle_is_exact_and_needs_no_training():
    p = make_predictor("oracle").fit(None)
    assert not p.needs_training
    assert p.predict(_req(output=173)) == 173.0
    np.testing.assert_array_equal(p.predict_arrays([5, 6], [7, 9], ["a", "b"], ["t", "t"]), [7.0, 9.0])


def test_class_quantile_per_app_and_fallbacks():
    p = make_predictor("class_quantile").fit(HAND)
    assert p.needs_training
    assert p.predict(_req(app="chat")) == 30.0
    assert p.predict(_req(app="code", slo="medium")) == 3.0
    # Unseen app: its SLO class's median (tight: 10, 20, 30, 40, 50, 1000, 1000, 1000 -> 45) ...
    assert p.predict(_req(app="new", slo="tight")) == 45.0
    # ... and with an unseen class too, the median over all 13 rows (1..5, 10..50, 1000 x 3 -> 20).
    assert p.predict(_req(app="new", slo="gold")) == 20.0
    got = p.predict_arrays(np.full(4, 100), np.ones(4), ["chat", "code", "new", "new"], ["tight", "medium", "tight", "x"])
    np.testing.assert_array_equal(got, [30.0, 3.0, 45.0, 20.0])


def test_class_quantile_uses_the_quantile_param():
    p = make_predictor("class_quantile", quantile=0.75).fit(HAND)
    assert p.predict(_req(app="chat")) == pytest.approx(np.quantile([10, 20, 30, 40, 50], 0.75)) == 40.0
    assert p.predict(_req(app="code", slo="medium")) == 4.0


def test_regressor_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    n = 400
    apps = np.where(np.arange(n) % 2 == 0, "chat", "code")
    prompt = rng.integers(10, 4000, size=n)
    offset = np.where(apps == "chat", 100.0, 20.0)
    output = np.rint(offset + 15.0 * np.log(prompt)).astype(np.int64)
    frame = pd.DataFrame({"app": apps, "slo_class": "tight", "num_prompt_tokens": prompt, "num_output_tokens": output})
    p = make_predictor("regressor").fit(frame)
    assert p.slope == pytest.approx(15.0, abs=0.05)
    assert p.intercepts["chat"] == pytest.approx(100.0, abs=0.5)
    assert p.intercepts["code"] == pytest.approx(20.0, abs=0.5)
    assert p.predict(_req(prompt=1000, app="chat")) == pytest.approx(100.0 + 15.0 * math.log(1000), abs=0.5)
    # Unseen app: the global fit on log p (between the two app lines).
    unseen = p.predict(_req(prompt=1000, app="other"))
    assert 20.0 + 15.0 * math.log(1000) < unseen < 100.0 + 15.0 * math.log(1000)
    arrays = p.predict_arrays([1000, 1000, 1000], [1, 1, 1], ["chat", "code", "other"], ["tight"] * 3)
    np.testing.assert_allclose(arrays, [p.predict(_req(prompt=1000, app=a)) for a in ("chat", "code", "other")])


def test_regressor_clips_to_one():
    # Output falls with prompt length; a huge prompt extrapolates below 1.
    frame = _frame([("a", "t", p, max(1, 300 - p)) for p in range(10, 290, 10)])
    p = make_predictor("regressor").fit(frame)
    assert p.predict(_req(prompt=10**7, app="a")) == 1.0


def test_noisy_is_deterministic_per_request_and_order_free():
    a = make_predictor("noisy", noise_sigma=0.5, noise_seed=3)
    b = make_predictor("noisy", noise_sigma=0.5, noise_seed=3)
    reqs = [_req(i, output=200) for i in range(50)]
    forward = [a.predict(r) for r in reqs]
    backward = [b.predict(r) for r in reversed(reqs)][::-1]
    assert forward == backward
    assert a.predict(reqs[7]) == forward[7]
    assert len(set(forward)) == 50
    other_seed = make_predictor("noisy", noise_sigma=0.5, noise_seed=4)
    assert [other_seed.predict(r) for r in reqs] != forward


def test_noisy_log_spread():
    p = make_predictor("noisy", noise_sigma=0.5)
    est = np.array([p.predict(_req(i, output=1000)) for i in range(4000)])
    log_ratio = np.log(est / 1000.0)
    assert log_ratio.std() == pytest.approx(0.5, rel=0.06)
    assert abs(log_ratio.mean()) < 0.05
    # Calibration draws (no req_id): same distribution, reproducible.
    cal = p.predict_arrays(np.ones(4000), np.full(4000, 1000), ["a"] * 4000, ["t"] * 4000)
    assert np.log(cal / 1000.0).std() == pytest.approx(0.5, rel=0.06)
    np.testing.assert_array_equal(cal, p.predict_arrays(np.ones(4000), np.full(4000, 1000), ["a"] * 4000, ["t"] * 4000))


def test_noisy_predictions_are_at_least_one():
    p = make_predictor("noisy", noise_sigma=3.0)
    assert min(p.predict(_req(i, output=1)) for i in range(200)) == 1.0
    assert make_predictor("noisy", noise_sigma=0.0).predict(_req(output=17)) == 17.0


@pytest.mark.parametrize("kind", ["class_quantile", "regressor"])
@pytest.mark.parametrize("frame", [None, HAND.iloc[:0]])
def test_missing_training_split(kind, frame):
    with pytest.raises(ConfigError, match=f"scheduler.cacheopt.predictor={kind} needs a training split.*workload has none"):
        make_predictor(kind).fit(frame)


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="fit"):
        make_predictor("class_quantile").predict(_req())


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        ("lstm", {}, r"scheduler.cacheopt.predictor.*'lstm'.*oracle.*class_quantile.*regressor.*noisy"),
        ("class_quantile", {"quantile": 1.5}, "scheduler.cacheopt.quantile"),
        ("noisy", {"noise_sigma": -1.0}, "scheduler.cacheopt.noise_sigma"),
        ("noisy", {"noise_seed": -2}, "scheduler.cacheopt.noise_seed"),
        ("oracle", {"sigma": 1.0}, "unknown predictor parameter.*sigma"),
    ],
)
def test_make_predictor_validation(kind, params, match):
    with pytest.raises(ConfigError, match=match):
        make_predictor(kind, **params)


def test_every_kind_builds_with_all_params():
    for kind in PREDICTOR_KINDS:
        p = make_predictor(kind, quantile=0.5, noise_sigma=0.2, noise_seed=1).fit(HAND)
        assert p.kind == kind and p.predict(_req()) >= 1.0
