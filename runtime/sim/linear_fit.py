"""Fitting the linear iteration-latency form to measured step times (``accelgen-profile``'s fit).

With ``N = Σ_P c + D``, ``W = Σ_P c·(q + c/2)``, ``S = Σ_D ctx`` and ``|B| = |P| + D``
(``runtime.sim.cost_model``)::

    T̂(B) = β0 + β1·max(N, n_knee) + β2·W + β3·S + β4·|B| [+ β5·min(|B|, s_knee)]

``β ≥ 0`` by non-negative least squares on rows divided by their measured time ``t``, so it minimises
``Σ w²·((T̂ − t)/t)²`` (relative error, since MAPE is the metric), for every ``n_knee`` in
``{0} ∪ {N of the rows, N ≤ knee_max}``; the knee with the lowest weighted MAPE wins. Dividing ``t`` by a known
per-row factor ``f`` and fitting ``T̂ ≈ t/f`` minimises the same relative error of ``f·T̂`` against ``t``
(``(T̂ − t/f)/(t/f) = (f·T̂ − t)/t``), which is how ``runtime.sim.settle`` fits its factor around this fit.
``s_knee`` is given, not searched here: with ``s_knee = 0`` the ``β5`` column is left out (``β`` has five entries),
and ``runtime.live.profile_fit`` searches it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

KNEE_MAX = 2048


@dataclass
class Fit:
    beta: np.ndarray  # β0 .. β4, and β5 when s_knee > 0
    n_knee: float
    train_mape: float
    settle_amplitude: float = 0.0  # runtime.sim.settle; 0: the history-free form
    settle_decay: float = 0.0
    s_knee: int = 0  # runtime.sim.cost_model's β5·min(|B|, s_knee); 0: no such term


def fit_linear(n: np.ndarray, work: np.ndarray, sum_ctx: np.ndarray, seqs: np.ndarray, t: np.ndarray,
               weights: np.ndarray | None = None, knee_max: int = KNEE_MAX, s_knee: int = 0) -> Fit:
    """NNLS on relative error of ``β0 + β1·max(N, knee) + β2·W + β3·S + β4·|B| [+ β5·min(|B|, s_knee)]``;
    knee by grid search.

    ``weights`` multiply each row's relative error (default 1); the knee minimises the weighted MAPE.
    """
    n, work, sum_ctx, seqs, t = (np.asarray(a, dtype=float) for a in (n, work, sum_ctx, seqs, t))
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)
    if len(t) < 5 or not (t > 0).all() or not (w >= 0).all():
        raise ValueError("fit_linear needs at least 5 positive times and non-negative weights")
    best: Fit | None = None
    for knee in [0.0, *sorted(set(n[n <= knee_max].tolist()))]:
        beta, err = weighted_nnls(design(n, work, sum_ctx, seqs, knee, s_knee), t, w)
        if best is None or err < best.train_mape - 1e-12:
            best = Fit(beta, float(knee), err, s_knee=int(s_knee))
    return best


def design(n: np.ndarray, work: np.ndarray, sum_ctx: np.ndarray, seqs: np.ndarray, n_knee: float,
           s_knee: int = 0) -> np.ndarray:
    """The form's columns, ``β0 .. β4`` in order, and ``β5``'s when ``s_knee > 0``, for compositions' features."""
    columns = [np.ones_like(n), np.maximum(n, n_knee), work, sum_ctx, seqs]
    return np.column_stack(columns + [np.minimum(seqs, s_knee)] if s_knee else columns)


def weighted_nnls(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """``β ≥ 0`` minimising ``Σ w²·((xβ − t)/t)²``, and the weighted MAPE (%) it leaves."""
    beta = nnls(x / t[:, None] * w[:, None], w)[0]
    return beta, float(np.sum(np.abs(x @ beta - t) / t * w) / np.sum(w) * 100)
