"""Output-length estimators: the online class median learns from finished requests only."""
from __future__ import annotations

import pytest

from heuristics.length_estimators import make_length_estimator
from runtime.core.errors import ConfigError
from runtime.core.request import Request


def finished(cls: str, length: int) -> Request:
    r = Request(f"{cls}{length}", arrival_time=0.0, num_prompt_tokens=10, max_tokens=length, slo_class=cls)
    r.num_output_tokens = length
    return r


def test_class_median_uses_the_prior_until_enough_samples_then_the_windowed_median():
    est = make_length_estimator("class_median", prior_tokens=100, min_samples=3, window=5)
    probe = Request("p", arrival_time=0.0, num_prompt_tokens=10, max_tokens=999, slo_class="a")
    assert est.estimate(probe) == 100
    for length in (10, 30):
        est.observe(finished("a", length))
    est.observe(finished("b", 7))  # another class does not count
    assert est.estimate(probe) == 100
    est.observe(finished("a", 20))
    assert est.estimate(probe) == 20
    for length in (1000, 1000, 1000, 1000):  # the window (5) drops 10, 30 -> [20, 1000 x4]
        est.observe(finished("a", length))
    assert est.estimate(probe) == 1000


def test_oracle_and_none():
    probe = Request("p", arrival_time=0.0, num_prompt_tokens=10, max_tokens=42)
    assert make_length_estimator("oracle").estimate(probe) == 42
    assert make_length_estimator("none").estimate(probe) == 1


@pytest.mark.parametrize("kwargs", [{"kind": "median"}, {"kind": "class_median", "window": 2, "min_samples": 3}])
def test_bad_estimator_config(kwargs):
    with pytest.raises(ConfigError):
        make_length_estimator(**kwargs)
