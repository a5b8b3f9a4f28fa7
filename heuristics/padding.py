"""Confidence padding of predicted output lengths for CacheOPT (algorithms.md section 7.1, section 9 item 11).

A predictor (``heuristics.output_length``) gives ``ô_r``; CacheOPT reserves KV for ``ô_r + t`` tokens, with the
padding ``t`` chosen so the true length stays below it with a given confidence.

**Error ranges.** On a calibration split the signed errors ``e = o − ô`` are grouped by application (falling back
to the SLO class, then to all rows, when a group has fewer than ``min_group_size`` errors or is absent). Per group:

    R    = q99(e) − q1(e)          (range trimmed to the [1 %, 99 %] quantiles; numpy's linear percentiles)
    R_up = max(0, q99(e))          (the largest under-prediction worth padding for)

Trimming keeps one outlier from setting the range; taking the range of ``o`` itself instead would give paddings
larger than any output.

**Hoeffding padding** (``mode="hoeffding"``). For a variable of range ``R`` averaged over ``n`` draws,
``P(X − E X ≥ t) ≤ exp(−2 n t² / R²)``; setting the bound to ``1 − conf`` gives

    t = min(R_up, R · sqrt(ln(1 / (1 − conf)) / (2 n)))      (t = 0 when R = 0)

With ``n = 1`` the unclipped ``t`` reaches ``R`` once ``conf ≥ 1 − e^{−2} ≈ 0.865``, i.e. at the published
``α = 0.95`` the bound is wider than the whole error range, so it is clipped to ``R_up`` and the rate term has no
effect there; ``n = hoeffding_n`` and ``mode="quantile"`` are the sweep knobs.

**Quantile padding** (``mode="quantile"``): ``t = max(0, quantile_conf(e))``, the empirical ``conf`` quantile of the
group's errors (linear interpolation, as ``np.quantile``).

**Arrival-rate adjusted confidence**: ``conf(λ) = α / (1 + β·λ)`` (α = 0.95, β = 0.001), ``λ`` the arrivals in
the last ``rate_window_s`` seconds, ``(now − window, now]``, divided by the full window [our design choice: also
during the first window of a run, so λ starts low and the first requests get the most padding]. Higher load gives
less padding: more requests fit, at the price of more under-allocation.

**Target length**: ``L_r = clip(ceil(ô_r + t), g_r + 1, max_model_len − p_r)``; when ``max_model_len − p_r <
g_r + 1`` the floor wins (``g_r + 1``: a request always gets room for its next token).

``LengthPlanner`` packages predictor, error ranges, rate and padding for a scheduler. Config keys in errors are
``scheduler.<key>``.
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from heuristics.output_length import OutputLengthPredictor, check_training_frame, make_predictor
from runtime.core.errors import ConfigError
from runtime.core.request import Request

PADDING_MODES = ("hoeffding", "quantile")
GLOBAL_GROUP = "global"


def confidence(alpha: float = 0.95, beta: float = 0.001, rate: float = 0.0) -> float:
    """``conf(λ) = alpha / (1 + beta·rate)``."""
    return alpha / (1.0 + beta * rate)


def hoeffding_padding(R: float, R_up: float, conf: float, n: float = 1) -> float:
    """``min(R_up, R·sqrt(ln(1/(1−conf)) / (2n)))``; 0 when ``R == 0``. ``conf`` in ``[0, 1)``, ``n > 0``."""
    if not 0.0 <= conf < 1.0:
        raise ValueError(f"conf must be in [0, 1), got {conf!r}")
    if not n > 0:
        raise ValueError(f"n must be > 0, got {n!r}")
    if R < 0 or R_up < 0:
        raise ValueError(f"R and R_up must be >= 0, got R={R!r}, R_up={R_up!r}")
    if R == 0:
        return 0.0
    return min(R_up, R * math.sqrt(math.log(1.0 / (1.0 - conf)) / (2.0 * n)))


def quantile_padding(errors_sorted: np.ndarray, conf: float) -> float:
    """``max(0, quantile_conf(e))`` of ascending ``errors_sorted`` (numpy's linear method); 0 for no errors."""
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf!r}")
    m = len(errors_sorted)
    if m == 0:
        return 0.0
    # np.quantile's linear interpolation, by hand: this runs per request and the errors are already sorted.
    pos = conf * (m - 1)
    lo = int(pos)
    value = float(errors_sorted[lo])
    if lo + 1 < m:
        value += (pos - lo) * (float(errors_sorted[lo + 1]) - value)
    return max(0.0, value)


class ArrivalRate:
    """Arrival rate over a sliding window: arrivals in ``(now − window_s, now]`` divided by ``window_s``.

    ``observe(t)`` takes arrival times in non-decreasing order and ``rate(now)`` non-decreasing ``now``: old
    arrivals are dropped as the window passes them.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        _check_positive("scheduler.cacheopt.rate_window_s", window_s)
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._last_arrival = -math.inf
        self._last_now = -math.inf

    def observe(self, t: float) -> None:
        if t < self._last_arrival:
            raise ValueError(f"arrival times must not decrease: {t} after {self._last_arrival}")
        self._last_arrival = t
        self._times.append(float(t))

    def rate(self, now: float) -> float:
        if now < self._last_now:
            raise ValueError(f"rate(now) needs non-decreasing now: {now} after {self._last_now}")
        self._last_now = now
        times, start = self._times, now - self.window_s
        while times and times[0] <= start:
            times.popleft()
        count = len(times)
        # Arrivals observed ahead of `now` (rare: the engine releases requests once their time has come).
        i = count - 1
        while i >= 0 and times[i] > now:
            count -= 1
            i -= 1
        return count / self.window_s


@dataclass(frozen=True)
class ErrorRange:
    """One group's error statistics: ``R``, ``R_up`` and the ascending errors (for quantile mode)."""

    R: float
    R_up: float
    errors: np.ndarray = field(repr=False)

    @classmethod
    def from_errors(cls, errors: np.ndarray) -> ErrorRange:
        e = np.sort(np.asarray(errors, dtype=np.float64))
        if len(e) == 0:
            return ZERO_RANGE
        q1, q99 = np.percentile(e, [1.0, 99.0])
        return cls(R=float(q99 - q1), R_up=max(0.0, float(q99)), errors=e)

    @property
    def n(self) -> int:
        return len(self.errors)


ZERO_RANGE = ErrorRange(R=0.0, R_up=0.0, errors=np.zeros(0))


class ErrorRanges:
    """Error ranges per application, per SLO class and over all rows; ``lookup`` falls back in that order.

    A group with fewer than ``min_group_size`` errors is not kept (its app falls back to the SLO class, then to
    all rows) [our design choice: with a handful of errors q1 and q99 are the extremes of a tiny sample]. The
    global group is kept whatever its size; with no errors at all every lookup gives zero padding.
    """

    def __init__(self, by_app: dict[str, ErrorRange], by_slo: dict[str, ErrorRange], overall: ErrorRange) -> None:
        self.by_app, self.by_slo, self.overall = by_app, by_slo, overall

    @classmethod
    def zeros(cls) -> ErrorRanges:
        return cls({}, {}, ZERO_RANGE)

    @classmethod
    def from_errors(cls, errors, app, slo_class, *, min_group_size: int = 10) -> ErrorRanges:
        """Signed errors ``o − ô`` with each row's application and SLO class."""
        errors = np.asarray(errors, dtype=np.float64)
        if not np.isfinite(errors).all():
            raise ValueError("calibration errors must be finite")
        frame = pd.DataFrame({"e": errors, "app": np.asarray(app, dtype=object),
                              "slo": np.asarray(slo_class, dtype=object)})

        def groups(column: str) -> dict[str, ErrorRange]:
            return {str(key): ErrorRange.from_errors(part.to_numpy()) for key, part in frame.groupby(column)["e"]
                    if len(part) >= min_group_size}

        return cls(groups("app"), groups("slo"), ErrorRange.from_errors(errors))

    def lookup(self, app: str, slo_class: str) -> ErrorRange:
        found = self.by_app.get(app)
        if found is None:
            found = self.by_slo.get(slo_class, self.overall)
        return found

    def describe(self) -> dict[str, dict[str, float]]:
        """``{group: {R, R_up, n}}`` with groups ``app:<name>``, ``slo:<name>`` and ``global``."""
        out = {f"app:{k}": v for k, v in self.by_app.items()}
        out.update({f"slo:{k}": v for k, v in self.by_slo.items()})
        out[GLOBAL_GROUP] = self.overall
        return {k: {"R": round(v.R, 3), "R_up": round(v.R_up, 3), "n": v.n} for k, v in out.items()}


class LengthPlanner:
    """Predicted output length plus confidence padding: the target length ``L_r`` a CacheOPT scheduler reserves.

    ``calibrate(training_frame)`` once before use: a predictor that needs training is fitted on the first
    ``1 − calibration_frac`` of the rows and the error ranges come from the rest [our design choice: a positional
    split; a trace's training rows are in time order, so the predictor is calibrated on later data than it was
    fitted on]. A predictor that needs no training (oracle, noisy) is calibrated on every row, and with no frame
    at all its ranges are zero (no padding). Report every arrival with ``observe_arrival(t)``.
    """

    def __init__(
        self,
        predictor: OutputLengthPredictor | str,
        *,
        max_model_len: int,
        mode: str = "hoeffding",
        alpha: float = 0.95,
        beta: float = 0.001,
        rate_window_s: float = 30.0,
        hoeffding_n: int = 1,
        padding: bool = True,
        calibration_frac: float = 0.5,
        min_group_size: int = 10,
    ) -> None:
        self.predictor = make_predictor(predictor) if isinstance(predictor, str) else predictor
        if mode not in PADDING_MODES:
            raise ConfigError(f"scheduler.cacheopt.padding_mode: unknown mode {mode!r}; available: {list(PADDING_MODES)}")
        if not (_is_real(alpha) and 0.0 < alpha < 1.0):
            raise ConfigError(f"scheduler.cacheopt.alpha must be a number in (0, 1), got {alpha!r}")
        if not (_is_real(beta) and beta >= 0.0):
            raise ConfigError(f"scheduler.cacheopt.beta must be a finite number >= 0, got {beta!r}")
        if isinstance(hoeffding_n, bool) or not isinstance(hoeffding_n, (int, np.integer)) or hoeffding_n < 1:
            raise ConfigError(f"scheduler.cacheopt.hoeffding_n must be an integer >= 1, got {hoeffding_n!r}")
        if not (_is_real(calibration_frac) and 0.0 < calibration_frac < 1.0):
            raise ConfigError(f"scheduler.cacheopt.calibration_frac must be a number in (0, 1), got {calibration_frac!r}")
        if isinstance(max_model_len, bool) or not isinstance(max_model_len, (int, np.integer)) or max_model_len < 2:
            raise ConfigError(f"model.max_model_len must be an integer >= 2, got {max_model_len!r}")
        if isinstance(min_group_size, bool) or not isinstance(min_group_size, (int, np.integer)) or min_group_size < 1:
            raise ConfigError(f"scheduler.cacheopt.min_group_size must be an integer >= 1, got {min_group_size!r}")
        self.arrivals = ArrivalRate(rate_window_s)
        self.mode, self.alpha, self.beta = mode, float(alpha), float(beta)
        self.rate_window_s = float(rate_window_s)
        self.hoeffding_n = int(hoeffding_n)
        self.use_padding = bool(padding)
        self.calibration_frac = float(calibration_frac)
        self.max_model_len = int(max_model_len)
        self.min_group_size = int(min_group_size)
        self.ranges = ErrorRanges.zeros()
        self.num_fit_rows = self.num_calibration_rows = 0
        self._calibrated = False

    # Set-up --------------------------------------------------------------------------------------------------------
    def calibrate(self, frame: pd.DataFrame | None) -> LengthPlanner:
        """Fit the predictor and compute the error ranges (class docstring)."""
        predictor = self.predictor
        if predictor.needs_training:
            frame = check_training_frame(frame, predictor.kind)
            n = len(frame)
            num_cal = int(round(n * self.calibration_frac))
            if num_cal < 1 or num_cal >= n:
                raise ConfigError(
                    f"scheduler.cacheopt.calibration_frac={self.calibration_frac} leaves no rows to fit or to calibrate on "
                    f"in a training split of {n} rows (scheduler.cacheopt.predictor={predictor.kind})")
            fit_part, cal_part = frame.iloc[:n - num_cal], frame.iloc[n - num_cal:]
            predictor.fit(fit_part)
        else:
            predictor.fit(None)
            fit_part, cal_part = None, frame if frame is not None and len(frame) > 0 else None
        if cal_part is None:
            self.ranges = ErrorRanges.zeros()
        else:
            cal_part = check_training_frame(cal_part, predictor.kind)
            errors = cal_part["num_output_tokens"].to_numpy(dtype=np.float64) - predictor.predict_frame(cal_part)
            self.ranges = ErrorRanges.from_errors(errors, cal_part["app"].to_numpy(), cal_part["slo_class"].to_numpy(),
                                                  min_group_size=self.min_group_size)
        self.num_fit_rows = 0 if fit_part is None else len(fit_part)
        self.num_calibration_rows = 0 if cal_part is None else len(cal_part)
        self._calibrated = True
        return self

    # Online --------------------------------------------------------------------------------------------------------
    def observe_arrival(self, t: float) -> None:
        self.arrivals.observe(t)

    def conf(self, now: float) -> float:
        """``conf(λ(now)) = α / (1 + β·λ)``."""
        return confidence(self.alpha, self.beta, self.arrivals.rate(now))

    def estimate(self, request: Request) -> float:
        """``ô_r`` (>= 1)."""
        self._check_calibrated()
        return self.predictor.predict(request)

    def padding(self, request: Request, now: float) -> float:
        """``t`` for ``request`` at the current confidence (0 with padding off)."""
        self._check_calibrated()
        if not self.use_padding:
            return 0.0
        group = self.ranges.lookup(request.app, request.slo_class)
        if group.n == 0:
            return 0.0
        conf = self.conf(now)
        if self.mode == "hoeffding":
            return hoeffding_padding(group.R, group.R_up, conf, self.hoeffding_n)
        return quantile_padding(group.errors, conf)

    def target_length(self, request: Request, now: float, num_output_tokens: int = 0) -> int:
        """``L_r = clip(ceil(ô + t), g + 1, max_model_len − p)`` with ``g = num_output_tokens``; ``g + 1`` when the
        ceiling is below the floor."""
        floor = num_output_tokens + 1
        ceiling = self.max_model_len - request.num_prompt_tokens
        if ceiling < floor:
            return floor
        target = math.ceil(self.estimate(request) + self.padding(request, now))
        return min(max(target, floor), ceiling)

    # Reporting -----------------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "predictor": self.predictor.kind,
            "padding": self.use_padding,
            "mode": self.mode,
            "alpha": self.alpha,
            "beta": self.beta,
            "hoeffding_n": self.hoeffding_n,
            "rate_window_s": self.rate_window_s,
            "fit_rows": self.num_fit_rows,
            "calibration_rows": self.num_calibration_rows,
            "groups": self.ranges.describe(),
        }

    def _check_calibrated(self) -> None:
        if not self._calibrated:
            if self.predictor.needs_training:
                raise RuntimeError(f"LengthPlanner: call calibrate(training_frame) before use "
                                   f"(predictor {self.predictor.kind!r} needs training)")
            # A predictor without training needs no calibration: zero ranges, i.e. no padding.
            self.predictor.fit(None)
            self._calibrated = True


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(key: str, value: Any) -> None:
    if not (_is_real(value) and value > 0):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
