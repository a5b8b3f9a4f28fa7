"""DistServe-style capacity search: the largest arrival rate at which SLO attainment still meets a target.

Let ``a(λ)`` be the SLO attainment of a run at arrival rate ``λ`` (fixed seed, fixed requests; algorithms.md
section 2 item 12). The capacity is

    λ* = max { λ : a(λ) >= target }                                          (1)

which is well defined when ``a`` is non-increasing in ``λ`` (more load never helps). The search evaluates ``a``
at a handful of rates, in two phases:

1. **Bracket.** Evaluate ``a(start_rate)``. While the highest rate tried passes, double it (clamped to
   ``max_rate``); while the lowest rate tried fails, halve it (clamped to ``min_rate``). This ends with a passing
   rate ``lo`` and a failing rate ``hi > lo``, adjacent among the rates tried, so ``λ* ∈ [lo, hi)`` under (1).
2. **Bisect.** While ``hi - lo > rtol · lo``: evaluate ``mid = (lo + hi) / 2`` and replace ``lo`` (it passes) or
   ``hi`` (it fails). On exit ``capacity = lo`` and, since ``lo <= λ* < hi <= (1 + rtol) · lo``, the relative
   error ``(λ* - lo) / λ*`` is below ``rtol``.

Every evaluation is recorded; a rate is never evaluated twice. Monotonicity is *checked*, not assumed: over all
pairs of evaluated rates ``λ_i < λ_j`` a violation is either ``a(λ_j) > a(λ_i) + monotone_atol`` (attainment
rises with load beyond noise) or ``a(λ_j) >= target > a(λ_i)`` (a passing rate above a failing one). Both
phases keep every passing rate below every failing one, so within one search only the first kind can show up;
``find_violations`` checks both on any set of points (a rate grid, say). With a violation the search still
returns the bracket it found, which is then *a* crossing of the target, not necessarily the largest;
``monotonic`` is False and ``violations`` lists the pairs.

``status``:

* ``"ok"``: bracketed and bisected to ``rtol``.
* ``"below_min"``: even the lowest rate tried fails (``min_rate``, or the last halving before the evaluation cap);
  ``capacity`` is None.
* ``"above_max"``: the highest rate tried passes (``max_rate``, or the last doubling before the evaluation cap);
  ``capacity`` is that rate, a lower bound.
* ``"unconverged"``: bracketed, but ``max_evaluations`` ran out before ``hi - lo <= rtol · lo``; ``capacity = lo``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from runtime.core.errors import ConfigError

STATUSES = ("ok", "below_min", "above_max", "unconverged")


@dataclass(frozen=True, slots=True)
class Violation:
    """Two evaluated rates ``low_rate < high_rate`` whose attainments break monotonicity."""

    low_rate: float
    low_attainment: float
    high_rate: float
    high_attainment: float
    kind: str  # "rises": a(high) > a(low) + atol; "pass_above_fail": a(high) >= target > a(low)

    def __str__(self) -> str:
        return (f"{self.kind}: a({self.low_rate:.4g})={self.low_attainment:.4f} < "
                f"a({self.high_rate:.4g})={self.high_attainment:.4f}")


@dataclass(frozen=True, slots=True)
class CapacityResult:
    capacity: float | None                 # λ* estimate (None when even the lowest rate fails)
    low: float | None                      # highest passing rate of the final bracket
    high: float | None                     # lowest failing rate above ``low`` (None when none failed)
    points: tuple[tuple[float, float], ...]  # (rate, attainment) in evaluation order
    monotonic: bool
    violations: tuple[Violation, ...]
    num_evaluations: int
    status: str
    target: float


def find_violations(points, *, target: float, monotone_atol: float = 0.01) -> list[Violation]:
    """Every pair of ``(rate, attainment)`` points that breaks monotonicity (see the module docstring)."""
    ordered = sorted(points)
    found = []
    for i, (low_rate, low_att) in enumerate(ordered):
        for high_rate, high_att in ordered[i + 1:]:
            if high_rate == low_rate:
                continue
            if high_att >= target > low_att:
                found.append(Violation(low_rate, low_att, high_rate, high_att, "pass_above_fail"))
            elif high_att > low_att + monotone_atol:
                found.append(Violation(low_rate, low_att, high_rate, high_att, "rises"))
    return found


def _check_args(start_rate, target, rtol, min_rate, max_rate, max_evaluations, monotone_atol) -> None:
    # `not (x > 0)` also rejects NaN.
    if not (0.0 < target <= 1.0):
        raise ConfigError(f"capacity target must be in (0, 1], got {target!r}")
    if not (rtol > 0.0):
        raise ConfigError(f"capacity rtol must be > 0, got {rtol!r}")
    for key, value in (("start_rate", start_rate), ("min_rate", min_rate), ("max_rate", max_rate)):
        if value is not None and not (0.0 < value < math.inf):
            raise ConfigError(f"capacity {key} must be a finite rate > 0, got {value!r}")
    if min_rate is not None and max_rate is not None and min_rate > max_rate:
        raise ConfigError(f"capacity min_rate {min_rate!r} exceeds max_rate {max_rate!r}")
    if (min_rate is not None and start_rate < min_rate) or (max_rate is not None and start_rate > max_rate):
        raise ConfigError(f"capacity start_rate {start_rate!r} is outside [min_rate, max_rate] = "
                          f"[{min_rate}, {max_rate}]")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise ConfigError(f"capacity max_evaluations must be an integer >= 1, got {max_evaluations!r}")
    if not (monotone_atol >= 0.0):
        raise ConfigError(f"capacity monotone_atol must be >= 0, got {monotone_atol!r}")


def capacity_search(
    attainment: Callable[[float], float],
    *,
    start_rate: float,
    target: float = 0.90,
    rtol: float = 0.02,
    min_rate: float | None = None,
    max_rate: float | None = None,
    max_evaluations: int = 20,
    monotone_atol: float = 0.01,
) -> CapacityResult:
    """Largest rate with ``attainment(rate) >= target``: bracket by doubling/halving, then bisect to ``rtol``."""
    _check_args(start_rate, target, rtol, min_rate, max_rate, max_evaluations, monotone_atol)
    seen: dict[float, float] = {}

    def passes(rate: float) -> bool:
        if rate not in seen:
            value = float(attainment(rate))
            if not (0.0 <= value <= 1.0):
                raise ConfigError(f"attainment({rate!r}) returned {value!r}; expected a fraction in [0, 1]")
            seen[rate] = value
        return seen[rate] >= target

    def budget_left() -> bool:
        return len(seen) < max_evaluations

    def result(capacity, low, high, status) -> CapacityResult:
        violations = find_violations(seen.items(), target=target, monotone_atol=monotone_atol)
        return CapacityResult(capacity=capacity, low=low, high=high, points=tuple(seen.items()),
                              monotonic=not violations, violations=tuple(violations), num_evaluations=len(seen),
                              status=status, target=target)

    # Phase 1: bracket.
    if passes(start_rate):
        low = start_rate
        while True:
            if (max_rate is not None and low >= max_rate) or not budget_left():
                return result(low, low, None, "above_max")
            rate = 2.0 * low if max_rate is None else min(2.0 * low, max_rate)
            if not passes(rate):
                high = rate
                break
            low = rate
    else:
        high = start_rate
        while True:
            if (min_rate is not None and high <= min_rate) or not budget_left():
                return result(None, None, high, "below_min")
            rate = 0.5 * high if min_rate is None else max(0.5 * high, min_rate)
            if passes(rate):
                low = rate
                break
            high = rate

    # Phase 2: bisect the bracket [low, high).
    while high - low > rtol * low:
        if not budget_left():
            return result(low, low, high, "unconverged")
        mid = 0.5 * (low + high)
        if passes(mid):
            low = mid
        else:
            high = mid
    return result(low, low, high, "ok")
