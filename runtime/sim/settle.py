"""Settling: decode-only steps run slower for a while after a step that ran prefill tokens.

On a CPU a decode-only step right after a step with prefill tokens takes longer than the same step in a run of
decodes, and the excess fades over the next steps (llama_15m, one thread: a single decode takes 8.0 ms right after
a 512-token prefill, then 7.4, 7.3, 7.0, ... and 6.8 ms settled; ``bench/live_step_settle.py``). The grid of
``accelgen-profile`` times settled steps, so a history-free cost model under-prices every decode that follows a
prefill, and near saturation, where prefills and decodes alternate, nearly every step. The simulator therefore
multiplies the time of a decode-only step by

    s(k) = 1 + a · ρ^k

where ``k`` is the number of decode-only steps between the last step with prefill tokens and this one (``k = 0``
right after it), ``a ≥ 0`` is ``settle_amplitude`` and ``0 ≤ ρ < 1`` is ``settle_decay``. Steps with prefill
tokens, and decode-only steps before any prefill, have ``s = 1``; ``a = 0`` is the history-free model. ``s`` is
a property of the machine, not of the batch: planners (schedulers, the Oracle) price batches with the settled
``T̂(B)``, as they do in a live run, and only the simulated clock (``SimExecutor``) adds the settling.

Fit (``accelgen-profile``'s served calibration, whose live steps carry their ``k``). For fixed ``(a, ρ)`` the
relative error of ``s·T̂`` against ``t`` is the relative error of ``T̂`` against ``t/s``
(``runtime.sim.linear_fit``), so ``β`` is a weighted NNLS on the deflated times. ``ρ`` is searched over
``DECAYS`` and, for each, ``a`` in ``[0, MAX_AMPLITUDE]`` by bounded Brent minimisation of the weighted MAPE; the
pair with the lowest wins, and ``a = 0`` (the history-free fit) is kept unless a pair does better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from runtime.sim.linear_fit import weighted_nnls

DECAYS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
MAX_AMPLITUDE = 2.0


def steps_since_prefill(has_prefill: Sequence[bool]) -> np.ndarray:
    """``k`` of every step of one run, in order: decode-only steps since the last step with prefill tokens before
    it (0 right after it), ``-1`` where no earlier step had any."""
    out = np.full(len(has_prefill), -1, dtype=np.int64)
    last = None
    for i, prefill in enumerate(has_prefill):
        if last is not None:
            out[i] = i - last - 1
        if prefill:
            last = i
    return out


def factors(k: np.ndarray, decode_only: np.ndarray, amplitude: float, decay: float) -> np.ndarray:
    """``s`` of every step: ``1 + a·ρ^k`` for decode-only steps with ``k ≥ 0``, 1 for the rest."""
    k, decode_only = np.asarray(k), np.asarray(decode_only, dtype=bool)
    on = decode_only & (k >= 0)
    out = np.ones(len(k))
    out[on] += amplitude * float(decay) ** k[on]
    return out


@dataclass(frozen=True)
class SettleFit:
    amplitude: float
    decay: float
    beta: np.ndarray
    mape: float  # weighted MAPE (%) of s·T̂ against the measured times


def fit_settle(x: np.ndarray, t: np.ndarray, w: np.ndarray, k: np.ndarray, decode_only: np.ndarray,
               decays: Sequence[float] = DECAYS) -> SettleFit:
    """``(a, ρ)`` and ``β`` minimising the weighted MAPE of ``s·xβ`` against ``t`` (module docstring).

    ``x``: the linear form's design matrix (``runtime.sim.linear_fit.design``) for a fixed ``n_knee``."""
    t, w = np.asarray(t, dtype=float), np.asarray(w, dtype=float)

    def error(amplitude: float, decay: float) -> tuple[float, np.ndarray]:
        s = factors(k, decode_only, amplitude, decay)
        beta, _ = weighted_nnls(x, t / s, w)
        return float(np.sum(np.abs(x @ beta * s - t) / t * w) / np.sum(w) * 100), beta

    mape, beta = error(0.0, 0.0)
    best = SettleFit(0.0, 0.0, beta, mape)
    if not (np.asarray(decode_only, dtype=bool) & (np.asarray(k) >= 0)).any():
        return best
    for decay in decays:
        found = minimize_scalar(lambda a: error(a, decay)[0], bounds=(0.0, MAX_AMPLITUDE), method="bounded",
                                options={"xatol": 1e-4})
        amplitude = float(found.x)
        mape, beta = error(amplitude, decay)
        if mape < best.mape - 1e-9:
            best = SettleFit(amplitude, float(decay), beta, mape)
    return best
