import math

import pytest

from runtime.capacity_search import CapacityResult, capacity_search, find_violations
from runtime.core.errors import ConfigError


class Counting:
    """An attainment function that records the rates it was asked about."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[float] = []

    def __call__(self, rate: float) -> float:
        self.calls.append(rate)
        return self.fn(rate)


def step(capacity: float):
    return lambda rate: 1.0 if rate <= capacity else 0.5


def sigmoid(mid: float, width: float):
    return lambda rate: 1.0 / (1.0 + math.exp((rate - mid) / width))


def sigmoid_capacity(mid: float, width: float, target: float) -> float:
    # Solves 1 / (1 + exp((λ - mid) / width)) = target for λ.
    return mid + width * math.log(1.0 / target - 1.0)


@pytest.mark.parametrize("capacity", [0.013, 0.7, 3.0, 3.3, 41.0])
@pytest.mark.parametrize("start_rate", [0.5, 3.0, 100.0])
def test_step_function_capacity_within_rtol(capacity, start_rate):
    result = capacity_search(step(capacity), start_rate=start_rate, rtol=0.02, max_evaluations=40)
    assert result.status == "ok"
    assert result.monotonic and result.violations == ()
    # The estimate is a passing rate, below the true capacity by less than rtol (relative).
    assert result.capacity <= capacity
    assert (capacity - result.capacity) / capacity < 0.02
    assert result.low == result.capacity
    assert result.high > capacity
    assert result.high - result.low <= 0.02 * result.low


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_sigmoid_capacity_within_rtol(target):
    mid, width = 4.0, 0.3
    truth = sigmoid_capacity(mid, width, target)
    result = capacity_search(sigmoid(mid, width), start_rate=1.0, target=target, rtol=0.01)
    assert result.status == "ok"
    assert result.monotonic
    assert truth * (1 - 0.01) < result.capacity <= truth
    assert result.target == target


def test_every_evaluation_recorded_once_and_in_order():
    fn = Counting(sigmoid(4.0, 0.3))
    result = capacity_search(fn, start_rate=1.0)
    assert [rate for rate, _ in result.points] == fn.calls
    assert len(set(fn.calls)) == len(fn.calls) == result.num_evaluations
    assert all(att == fn.fn(rate) for rate, att in result.points)
    # Doubling from the start rate until a(4) = 0.5 fails, then the bracket's midpoint.
    assert fn.calls[:4] == [1.0, 2.0, 4.0, 3.0]


def test_non_monotone_passing_side_reports_violation():
    # Attainment rises from 0.95 to 0.99 between rates 1 and 2, both passing: the search still brackets [2, 4).
    def bumpy(rate):
        return 0.95 if rate < 2.0 else 0.99 if rate < 4.0 else 0.5

    result = capacity_search(bumpy, start_rate=1.0)
    assert result.status == "ok" and 3.9 < result.capacity < 4.0
    assert not result.monotonic
    assert (1.0, 2.0, "rises") in {(v.low_rate, v.high_rate, v.kind) for v in result.violations}
    assert all(v.kind == "rises" for v in result.violations)


def test_non_monotone_failing_side_reports_violation():
    # Halving from 6 (a = 0.6) to 3 (a = 0.3): attainment fell as the load fell.
    def bumpy(rate):
        return 1.0 if rate < 2.0 else 0.3 if rate < 4.0 else 0.6

    result = capacity_search(bumpy, start_rate=6.0)
    assert result.status == "ok" and 1.96 < result.capacity < 2.0
    assert not result.monotonic
    # Every failing rate of the bisection (a = 0.3) is also below 6.
    assert {v.high_rate for v in result.violations} == {6.0}
    assert {v.low_rate for v in result.violations} == {r for r, a in result.points if a == 0.3}
    assert "rises: a(3)=0.3000 < a(6)=0.6000" in [str(v) for v in result.violations]


def test_pass_above_fail_on_other_points():
    # The search keeps every passing rate below every failing one; find_violations also checks other points,
    # such as a rate grid.
    points = [(1.0, 0.95), (2.0, 0.5), (3.0, 0.92)]
    violations = find_violations(points, target=0.9)
    assert [(v.low_rate, v.high_rate, v.kind) for v in violations] == [(2.0, 3.0, "pass_above_fail")]


def test_rising_attainment_below_target_is_a_violation():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.705)]
    violations = find_violations(points, target=0.9, monotone_atol=0.01)
    assert [(v.low_rate, v.high_rate, v.kind) for v in violations] == [(1.0, 2.0, "rises"), (1.0, 3.0, "rises")]
    assert find_violations(points, target=0.9, monotone_atol=0.3) == []


def test_all_fail_is_below_min():
    fn = Counting(lambda rate: 0.0)
    result = capacity_search(fn, start_rate=4.0, min_rate=0.5)
    assert result.status == "below_min"
    assert result.capacity is None and result.low is None
    assert result.high == 0.5
    assert fn.calls == [4.0, 2.0, 1.0, 0.5]
    assert result.monotonic


def test_all_pass_is_above_max():
    fn = Counting(lambda rate: 1.0)
    result = capacity_search(fn, start_rate=1.0, max_rate=5.0)
    assert result.status == "above_max"
    assert result.capacity == 5.0 and result.high is None
    # The last doubling is clamped to max_rate.
    assert fn.calls == [1.0, 2.0, 4.0, 5.0]


def test_unbounded_all_pass_stops_at_evaluation_cap():
    fn = Counting(lambda rate: 1.0)
    result = capacity_search(fn, start_rate=1.0, max_evaluations=5)
    assert result.status == "above_max"
    assert len(fn.calls) == 5 and result.capacity == 16.0


@pytest.mark.parametrize("max_evaluations", [1, 2, 3, 6])
def test_evaluation_cap_respected(max_evaluations):
    fn = Counting(step(3.3))
    result = capacity_search(fn, start_rate=1.0, max_evaluations=max_evaluations, rtol=1e-6)
    assert len(fn.calls) == result.num_evaluations <= max_evaluations
    # 1, 2 pass and 4 fails: bracketed at the third evaluation, never bisected to 1e-6 within 6.
    expected = "above_max" if max_evaluations < 3 else "unconverged"
    assert result.status == expected
    assert result.capacity <= 3.3


def test_result_is_frozen():
    result = capacity_search(step(2.0), start_rate=1.0)
    assert isinstance(result, CapacityResult)
    with pytest.raises(AttributeError):
        result.capacity = 0.0


@pytest.mark.parametrize("kwargs", [
    dict(target=0.0), dict(target=1.5), dict(target=-0.1), dict(target=float("nan")),
    dict(rtol=0.0), dict(rtol=-0.01),
    dict(start_rate=0.0), dict(start_rate=-1.0), dict(start_rate=float("inf")),
    dict(min_rate=0.0), dict(max_rate=-2.0),
    dict(min_rate=3.0, max_rate=2.0), dict(start_rate=10.0, max_rate=5.0), dict(start_rate=0.1, min_rate=0.5),
    dict(max_evaluations=0), dict(max_evaluations=2.5),
])
def test_bad_arguments_raise_config_error(kwargs):
    args = dict(start_rate=1.0) | kwargs
    with pytest.raises(ConfigError) as info:
        capacity_search(step(2.0), **args)
    assert isinstance(info.value, ValueError)


def test_target_one_is_allowed():
    result = capacity_search(step(2.0), start_rate=1.0, target=1.0)
    assert result.status == "ok" and result.capacity <= 2.0


@pytest.mark.parametrize("bad", [float("nan"), 1.2, -0.1])
def test_attainment_outside_unit_interval_raises(bad):
    with pytest.raises(ConfigError, match="attainment"):
        capacity_search(lambda rate: bad, start_rate=1.0)
