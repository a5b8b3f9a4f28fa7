"""Seeded arrival processes (algorithms.md section 8): Poisson at rate lambda, Gamma with a coefficient of variation.

Every function returns the cumulative arrival times ``t_i = g_1 + ... + g_i`` (seconds, float64, non-decreasing)
of ``n`` requests from i.i.d. inter-arrival gaps ``g``. NOTE(workload): the first request arrives after one gap,
not at 0, so the first gap is a sample like all others and ``n / t_n`` estimates the rate without bias; the engine
fast-forwards its clock to the first arrival, so no simulated time is wasted.

Randomness comes only from the ``rng`` passed in. Each process draws exactly ``n`` values with one call, so a
caller that draws something else afterwards sees the same stream whatever the rate: changing ``rate`` only
rescales the same gaps (common random numbers across a rate sweep).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.core.errors import ConfigError

PROCESSES = ("poisson", "gamma")


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exponential gaps with mean ``1 / rate`` (req/s): a Poisson process, inter-arrival CV 1."""
    _check_count(n)
    check_positive("workload.arrival.rate", rate)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma gaps with shape ``1 / cv**2`` and scale ``cv**2 / rate``: mean ``1 / rate``, CV ``cv``.

    ``cv > 1`` gives bursts (many short gaps, a few long ones); ``cv = 1`` is Poisson in distribution.
    """
    _check_count(n)
    check_positive("workload.arrival.rate", rate)
    check_positive("workload.arrival.cv", cv)
    return np.cumsum(rng.gamma(1.0 / cv**2, cv**2 / rate, size=n))


def sample_arrivals(n: int, arrival: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Dispatch on a config dict ``{process: poisson|gamma, rate: float, cv: float (gamma only)}``."""
    process = arrival.get("process", "poisson")
    unknown = set(arrival) - {"process", "rate", "cv"}
    if unknown:
        raise ConfigError(f"workload.arrival: unknown key(s) {sorted(unknown)}; expected process, rate, cv")
    if "rate" not in arrival:
        raise ConfigError("workload.arrival.rate is required (requests per second)")
    if process == "poisson":
        return poisson_arrivals(n, arrival["rate"], rng)
    if process == "gamma":
        if "cv" not in arrival:
            raise ConfigError("workload.arrival.cv is required for process 'gamma'")
        return gamma_arrivals(n, arrival["rate"], arrival["cv"], rng)
    raise ConfigError(f"workload.arrival.process: unknown process {process!r}; available: {list(PROCESSES)}")


def _check_count(n: int) -> None:
    if int(n) != n or n < 0:
        raise ConfigError(f"workload.num_requests must be a non-negative integer, got {n!r}")


def check_positive(key: str, value: float) -> None:
    """ConfigError naming ``key`` unless ``value`` is a real number in (0, inf)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key} must be a positive finite number, got {value!r}")
