"""Output-length estimators ``ô_r`` (algorithms.md section 7.1) for policies that plan KV growth.

A policy asks ``estimate(request)`` when a request arrives and reports every request that finishes with
``observe(request)``; nothing else is known online. Kinds (``len_estimator``):

* ``oracle``: ``ô_r = o_r`` (the simulator's true length; on the live runtime the request's ``max_tokens``);
* ``class_median``: the median output length of the last ``window`` finished requests of r's SLO class, learned
  online; ``prior_tokens`` until ``min_samples`` of that class have finished [our design choice: online, so it
  runs unchanged on the live runtime and never peeks at the workload's tables];
* ``none``: ``ô_r = 1``: no growth is projected beyond what a request holds.
"""
from __future__ import annotations

import bisect
from collections import deque

from runtime.core.errors import ConfigError
from runtime.core.request import Request

KINDS = ("oracle", "class_median", "none")


class OracleLength:
    def estimate(self, request: Request) -> int:
        return request.max_tokens

    def observe(self, request: Request) -> None:
        pass


class NoLength:
    def estimate(self, request: Request) -> int:
        return 1

    def observe(self, request: Request) -> None:
        pass


class ClassMedianLength:
    """Online per-class median over a sliding window of finished requests."""

    def __init__(self, *, prior_tokens: int, min_samples: int, window: int) -> None:
        self.prior_tokens, self.min_samples, self.window = prior_tokens, min_samples, window
        self._recent: dict[str, deque[int]] = {}
        self._sorted: dict[str, list[int]] = {}

    def estimate(self, request: Request) -> int:
        values = self._sorted.get(request.slo_class)
        if values is None or len(values) < self.min_samples:
            return self.prior_tokens
        return values[len(values) // 2]

    def observe(self, request: Request) -> None:
        recent = self._recent.setdefault(request.slo_class, deque())
        values = self._sorted.setdefault(request.slo_class, [])
        length = request.num_output_tokens
        recent.append(length)
        bisect.insort(values, length)
        if len(recent) > self.window:
            del values[bisect.bisect_left(values, recent.popleft())]


def make_length_estimator(kind: str, *, prior_tokens: int = 256, min_samples: int = 8, window: int = 1000):
    if kind == "oracle":
        return OracleLength()
    if kind == "none":
        return NoLength()
    if kind == "class_median":
        if prior_tokens < 1 or min_samples < 1 or window < min_samples:
            raise ConfigError(
                f"class_median needs prior_tokens >= 1, min_samples >= 1 and window >= min_samples; got "
                f"{prior_tokens}, {min_samples}, {window}")
        return ClassMedianLength(prior_tokens=prior_tokens, min_samples=min_samples, window=window)
    raise ConfigError(f"len_estimator must be one of {', '.join(KINDS)}; got {kind!r}")
