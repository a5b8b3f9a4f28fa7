"""Offline output-length predictors ``ô_r`` for CacheOPT (algorithms.md section 7.1).

Unlike ``heuristics.length_estimators`` (online, learnt from finished requests), these predictors are learnt once
from the workload's *training split* (``Workload.training_frame()``: columns ``app``, ``slo_class``,
``num_prompt_tokens``, ``num_output_tokens``; requests that are not replayed), as the paper's predictor is trained
before serving. Every prediction is a float ``>= 1``. Kinds (``make_predictor(kind, **params)``):

* ``oracle``: ``ô = o`` (the request's ``max_tokens``, the true length in the simulator). Needs no training.
* ``class_quantile``: the ``quantile`` (default 0.5, the median) of the training output lengths of r's
  application; an application absent from the training split falls back to its SLO class's quantile, then to the
  quantile over all rows.
* ``regressor``: least squares of the output length on ``(log p, one-hot application)``, i.e. a shared slope on
  ``log p`` and one intercept per application, clipped to ``>= 1``. An application absent from the training split
  gets a separate global fit ``a + b·log p`` over all rows [our design choice: a min-norm solution with a global
  intercept column would make that intercept meaningless].
* ``noisy``: ``ô = max(1, o·exp(ε))``, ``ε ~ N(0, noise_sigma²)`` (default 0.5): a predictor of known log-error,
  for sweeps. ε is seeded from ``(noise_seed, crc32(req_id))``, so a request gets the same ô in every run, whatever
  the order in which requests are asked about. Needs no training.

``predict_arrays(num_prompt_tokens, num_output_tokens, app, slo_class)`` predicts a whole calibration split at once
(``heuristics.padding`` turns ``o − ô`` into error ranges). Calibration rows have no ``req_id``, so ``noisy`` draws
their ε from one fixed stream ``default_rng([noise_seed, 0xCA1B])``: same distribution, reproducible.

``make_predictor`` accepts every predictor parameter for every kind (a flat scheduler config passes them all) and
ignores those the kind does not use; an unknown parameter name is a ``ConfigError``.
"""
from __future__ import annotations

import math
import numbers
import zlib
from typing import Any

import numpy as np
import pandas as pd

from runtime.core.errors import ConfigError
from runtime.core.request import Request

PREDICTOR_KINDS = ("oracle", "class_quantile", "regressor", "noisy")
TRAINING_COLUMNS = ("app", "slo_class", "num_prompt_tokens", "num_output_tokens")
PARAM_DEFAULTS: dict[str, Any] = {"quantile": 0.5, "noise_sigma": 0.5, "noise_seed": 0}
# Seeds the calibration stream of the noisy predictor ("CALIB"); requests use crc32(req_id) instead.
_CALIBRATION_STREAM = 0xCA1B


class OutputLengthPredictor:
    """Base: ``fit(frame)`` once, then ``predict(request)`` / ``predict_arrays(...)``."""

    kind: str = ""
    needs_training: bool = False

    def fit(self, frame: pd.DataFrame | None) -> OutputLengthPredictor:
        if self.needs_training:
            frame = check_training_frame(frame, self.kind)
            self._fit(frame)
        self._fitted = True
        return self

    def predict(self, request: Request) -> float:
        raise NotImplementedError

    def predict_arrays(self, num_prompt_tokens, num_output_tokens, app, slo_class) -> np.ndarray:
        raise NotImplementedError

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """``predict_arrays`` over a frame with ``TRAINING_COLUMNS``."""
        return self.predict_arrays(frame["num_prompt_tokens"].to_numpy(), frame["num_output_tokens"].to_numpy(),
                                   frame["app"].to_numpy(), frame["slo_class"].to_numpy())

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def _fit(self, frame: pd.DataFrame) -> None:
        pass

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise RuntimeError(f"predictor {self.kind!r}: call fit(training_frame) before predicting")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.describe().items() if k != 'kind')})"


class OraclePredictor(OutputLengthPredictor):
    kind = "oracle"

    def predict(self, request: Request) -> float:
        return float(request.max_tokens)

    def predict_arrays(self, num_prompt_tokens, num_output_tokens, app, slo_class) -> np.ndarray:
        return np.asarray(num_output_tokens, dtype=np.float64).copy()


class ClassQuantilePredictor(OutputLengthPredictor):
    kind = "class_quantile"
    needs_training = True

    def __init__(self, quantile: float = 0.5) -> None:
        self.quantile = _check_unit("scheduler.cacheopt.quantile", quantile, closed=True)
        self.by_app: dict[str, float] = {}
        self.by_slo: dict[str, float] = {}
        self.overall = math.nan

    def _fit(self, frame: pd.DataFrame) -> None:
        output = frame["num_output_tokens"].astype(np.float64)
        self.by_app = {str(k): float(v) for k, v in output.groupby(frame["app"]).quantile(self.quantile).items()}
        self.by_slo = {str(k): float(v) for k, v in output.groupby(frame["slo_class"]).quantile(self.quantile).items()}
        self.overall = float(np.quantile(output.to_numpy(), self.quantile))

    def predict(self, request: Request) -> float:
        self._check_fitted()
        value = self.by_app.get(request.app)
        if value is None:
            value = self.by_slo.get(request.slo_class, self.overall)
        return max(1.0, value)

    def predict_arrays(self, num_prompt_tokens, num_output_tokens, app, slo_class) -> np.ndarray:
        self._check_fitted()
        by_app = pd.Series(np.asarray(app, dtype=object)).map(self.by_app)
        by_slo = pd.Series(np.asarray(slo_class, dtype=object)).map(self.by_slo)
        values = by_app.fillna(by_slo).fillna(self.overall).to_numpy(dtype=np.float64)
        return np.maximum(values, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "quantile": self.quantile}


class RegressorPredictor(OutputLengthPredictor):
    kind = "regressor"
    needs_training = True

    def __init__(self) -> None:
        self.slope = math.nan
        self.intercepts: dict[str, float] = {}
        self.global_intercept = math.nan
        self.global_slope = math.nan

    def _fit(self, frame: pd.DataFrame) -> None:
        y = frame["num_output_tokens"].to_numpy(dtype=np.float64)
        log_p = np.log(frame["num_prompt_tokens"].to_numpy(dtype=np.float64))
        apps, codes = np.unique(frame["app"].to_numpy().astype(str), return_inverse=True)
        # Columns: log p, then one indicator per application (no separate intercept: the indicators span it).
        design = np.zeros((len(y), 1 + len(apps)))
        design[:, 0] = log_p
        design[np.arange(len(y)), 1 + codes] = 1.0
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        self.slope = float(coef[0])
        self.intercepts = {str(a): float(c) for a, c in zip(apps, coef[1:])}
        coef = np.linalg.lstsq(np.column_stack([np.ones_like(log_p), log_p]), y, rcond=None)[0]
        self.global_intercept, self.global_slope = float(coef[0]), float(coef[1])

    def predict(self, request: Request) -> float:
        self._check_fitted()
        log_p = math.log(max(request.num_prompt_tokens, 1))
        intercept = self.intercepts.get(request.app)
        if intercept is None:
            value = self.global_intercept + self.global_slope * log_p
        else:
            value = intercept + self.slope * log_p
        return max(1.0, value)

    def predict_arrays(self, num_prompt_tokens, num_output_tokens, app, slo_class) -> np.ndarray:
        self._check_fitted()
        log_p = np.log(np.maximum(np.asarray(num_prompt_tokens, dtype=np.float64), 1.0))
        intercept = pd.Series(np.asarray(app, dtype=object)).map(self.intercepts).to_numpy(dtype=np.float64)
        known = ~np.isnan(intercept)
        values = np.where(known, np.where(known, intercept, 0.0) + self.slope * log_p,
                          self.global_intercept + self.global_slope * log_p)
        return np.maximum(values, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "slope": self.slope, "intercepts": dict(self.intercepts)}


class NoisyPredictor(OutputLengthPredictor):
    kind = "noisy"

    def __init__(self, noise_sigma: float = 0.5, noise_seed: int = 0) -> None:
        if isinstance(noise_sigma, bool) or not (isinstance(noise_sigma, numbers.Real) and math.isfinite(noise_sigma)
                                                 and noise_sigma >= 0):
            raise ConfigError(f"scheduler.cacheopt.noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, (int, np.integer)) or noise_seed < 0:
            raise ConfigError(f"scheduler.cacheopt.noise_seed must be an integer >= 0, got {noise_seed!r}")
        self.noise_sigma = float(noise_sigma)
        self.noise_seed = int(noise_seed)
        # ε per req_id: a Generator costs tens of µs to build and a request is asked about more than once.
        self._eps: dict[str, float] = {}

    def noise(self, req_id: str) -> float:
        """The ε of request ``req_id``: a function of ``(noise_seed, crc32(req_id))`` alone."""
        eps = self._eps.get(req_id)
        if eps is None:
            rng = np.random.default_rng([self.noise_seed, zlib.crc32(req_id.encode())])
            eps = self._eps[req_id] = float(rng.normal(0.0, self.noise_sigma)) if self.noise_sigma > 0 else 0.0
        return eps

    def predict(self, request: Request) -> float:
        return max(1.0, request.max_tokens * math.exp(self.noise(request.req_id)))

    def predict_arrays(self, num_prompt_tokens, num_output_tokens, app, slo_class) -> np.ndarray:
        output = np.asarray(num_output_tokens, dtype=np.float64)
        rng = np.random.default_rng([self.noise_seed, _CALIBRATION_STREAM])
        return np.maximum(output * np.exp(rng.normal(0.0, self.noise_sigma, size=len(output))), 1.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "noise_sigma": self.noise_sigma, "noise_seed": self.noise_seed}


def make_predictor(kind: str, **params: Any) -> OutputLengthPredictor:
    """A predictor of ``kind`` (``PREDICTOR_KINDS``); ``params`` from ``PARAM_DEFAULTS`` (module docstring)."""
    unknown = sorted(set(params) - set(PARAM_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"scheduler.cacheopt.predictor: unknown predictor parameter(s) {unknown}; known: {sorted(PARAM_DEFAULTS)}")
    p = {**PARAM_DEFAULTS, **params}
    if kind == "oracle":
        return OraclePredictor()
    if kind == "class_quantile":
        return ClassQuantilePredictor(quantile=p["quantile"])
    if kind == "regressor":
        return RegressorPredictor()
    if kind == "noisy":
        return NoisyPredictor(noise_sigma=p["noise_sigma"], noise_seed=p["noise_seed"])
    raise ConfigError(f"scheduler.cacheopt.predictor: unknown predictor {kind!r}; available: {list(PREDICTOR_KINDS)}")


def check_training_frame(frame: pd.DataFrame | None, kind: str) -> pd.DataFrame:
    """``frame`` if it can train a predictor, else a ``ConfigError`` that says what is missing."""
    if frame is None or len(frame) == 0:
        raise ConfigError(
            f"scheduler.cacheopt.predictor={kind} needs a training split (output lengths to learn from), but the workload has "
            "none: use a workload with num_train_requests > 0 (a trace replay that uses every row has none), or "
            "predictor=oracle/noisy")
    missing = [c for c in TRAINING_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"scheduler.cacheopt.predictor={kind}: training split lacks column(s) {missing}; "
                          f"expected {list(TRAINING_COLUMNS)}")
    return frame


def _check_unit(key: str, value: Any, *, closed: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    if not ok:
        bounds = "in [0, 1]" if closed else "in (0, 1)"
        raise ConfigError(f"{key} must be a number {bounds}, got {value!r}")
    return float(value)
