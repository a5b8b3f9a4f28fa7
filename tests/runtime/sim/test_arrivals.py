from __future__ import annotations

import numpy as np
import pytest

from runtime.core.errors import ConfigError
from runtime.sim.arrivals import gamma_arrivals, poisson_arrivals, sample_arrivals


def _rate_and_cv(times: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(np.concatenate([[0.0], times]))
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


def test_poisson_rate_and_cv():
    times = poisson_arrivals(200_000, 4.0, np.random.default_rng(0))
    assert times[0] > 0.0 and np.all(np.diff(times) >= 0)
    rate, cv = _rate_and_cv(times)
    assert rate == pytest.approx(4.0, rel=0.01)
    assert cv == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    times = gamma_arrivals(400_000, 2.5, cv, np.random.default_rng(1))
    assert np.all(np.diff(times) >= 0)
    rate, empirical_cv = _rate_and_cv(times)
    # Heavy-tailed gaps at cv=4 converge slowly: a few percent at this n.
    assert rate == pytest.approx(2.5, rel=0.03)
    assert empirical_cv == pytest.approx(cv, rel=0.05)


def test_seeded():
    a = gamma_arrivals(100, 1.0, 2.0, np.random.default_rng(3))
    b = gamma_arrivals(100, 1.0, 2.0, np.random.default_rng(3))
    c = gamma_arrivals(100, 1.0, 2.0, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rate_only_rescales_the_same_gaps():
    slow = poisson_arrivals(50, 1.0, np.random.default_rng(5))
    fast = poisson_arrivals(50, 4.0, np.random.default_rng(5))
    np.testing.assert_allclose(fast * 4.0, slow)


def test_sample_arrivals_dispatch():
    rng = np.random.default_rng(0)
    times = sample_arrivals(10, {"process": "gamma", "rate": 2.0, "cv": 3.0}, rng)
    np.testing.assert_array_equal(times, gamma_arrivals(10, 2.0, 3.0, np.random.default_rng(0)))
    np.testing.assert_array_equal(
        sample_arrivals(10, {"process": "poisson", "rate": 2.0}, np.random.default_rng(0)),
        poisson_arrivals(10, 2.0, np.random.default_rng(0)),
    )
    assert len(sample_arrivals(0, {"rate": 1.0}, rng)) == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda rng: poisson_arrivals(5, 0.0, rng), "arrival.rate"),
        (lambda rng: poisson_arrivals(5, -1.0, rng), "arrival.rate"),
        (lambda rng: poisson_arrivals(5, float("inf"), rng), "arrival.rate"),
        (lambda rng: gamma_arrivals(5, 1.0, 0.0, rng), "arrival.cv"),
        (lambda rng: gamma_arrivals(5, 1.0, float("nan"), rng), "arrival.cv"),
        (lambda rng: poisson_arrivals(-1, 1.0, rng), "num_requests"),
        (lambda rng: sample_arrivals(5, {"process": "weibull", "rate": 1.0}, rng), "unknown process 'weibull'"),
        (lambda rng: sample_arrivals(5, {"process": "gamma", "rate": 1.0}, rng), "arrival.cv is required"),
        (lambda rng: sample_arrivals(5, {"process": "poisson"}, rng), "arrival.rate is required"),
        (lambda rng: sample_arrivals(5, {"rate": 1.0, "burst": 2}, rng), "unknown key.*burst"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call(np.random.default_rng(0))
