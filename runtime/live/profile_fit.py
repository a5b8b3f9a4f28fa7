"""Fitting ``accelgen-profile``'s measurements: row weights, the simulator's linear form with its settling factor,
and the YAML's ``fit_error`` and fields. The profiler fits with these functions, and ``bench/refit_profile.py`` and
``bench/cost_model_form.py`` refit stored ``measurements.csv`` files with them, so a refit is the profiler's fit.

Fit. With ``N = Σ_P c + D``, ``W = Σ_P c·(q + c/2)``, ``S = Σ_D ctx`` and ``|B| = |P| + D`` (the features of
``runtime.sim.cost_model``)::

    T̂(B) = β0 + β1·max(N, n_knee) + β2·W + β3·S + β4·|B| [+ β5·min(|B|, s_knee)]

``β ≥ 0`` by non-negative least squares on rows divided by their measured time ``t`` (minimises
``Σ w²·((T̂ − t)/t)²``, relative error, since MAPE is the metric; ``weighted_nnls``), for every ``n_knee`` in
``{0} ∪ {N of the grid, N ≤ 2048}``; the knee with the lowest (weighted) training MAPE wins (``fit.py``'s grid
search). Weights: ``w = profile.small_batch_weight`` (default 4) for decode-only batches of at most 3 decodes, 1
for the rest. Why: on this CPU the LM head's GEMM (vocab × d, one row per sampled token) costs a staircase in the
number of rows (llama_15m, 1 thread: 1.3 ms for 1-3 rows, 2.6 ms for 4-6, 3.9 ms for 8; on one thread the model
now computes 4-12 rows in vocabulary blocks, which smooths it, ``runtime.live.model``), which no linear form
follows; unweighted, the fit splits the difference and over-predicts the 1-3 decode steps by ~20%, while those
are most of a serving run's steps (75% of the live steps of ``bench/sim_vs_live.py``). ``small_batch_weight=1``
gives the plain fit. The held-out ``fit_error`` stays unweighted. ``engine_overhead_s`` is 0 by default:
``step_time`` already holds the executor's host work (input building, sampling, the per-sequence part of which is
``β4``), and the engine's own per-step work outside ``execute`` (``scheduler.schedule``, ``update_from_output``, the
iteration log) depends on the scheduler, so it is not fitted here; ``bench/sim_vs_live.py`` measures it per
scheduler, and ``profile.engine_overhead_s`` writes a value in. ``fit_error`` is MAPE (%) on **held-out**
compositions drawn independently of the grid (decode: ``D`` log-uniform in 1 .. 64, contexts uniform in ``[16, 2m]``
for a log-uniform ``m``; prefill: 1 .. 4 chunks of log-uniform size at random offsets; mixed: budgets 128 .. 2048
with up to 64 decodes), per kind, overall and its 95th percentile, plus the in-sample MAPE of the grid (``train``).

Settling (served steps only: each carries ``since_prefill``, the number ``k`` of decode-only steps since the last
step with prefill tokens; grid and held-out compositions, timed settled, have ``k = −1``). With
``profile.fit_settle`` the fit adds the simulator's factor ``1 + a·ρ^k`` on decode-only steps
(``runtime.sim.settle``): ``(a, ρ)`` at the current knee, then the knee again on times divided by the factor,
alternating until the knee stays. The result replaces the history-free fit only where it lowers the weighted MAPE.

Per-sequence knee (``profile.max_seq_knee``, default 32; 0: off). The cost model's ``β5·min(|B|, s_knee)``
(``runtime.sim.cost_model``): in each round, after the settling, ``s_knee`` in ``2 .. max_seq_knee`` by the lowest
weighted MAPE at the current ``n_knee``, then ``n_knee`` again with that column. The LM head's staircase on a CPU
(4–12 decodes run 10–15 % above a line through 1–3 and 13+) is what it follows; a new ``s_knee`` must lower the
weighted MAPE by more than ``SEQ_KNEE_MIN_GAIN`` (1 %) of it, since the term costs the Oracle one binary per step
(``solvers/formulation.py``, (1s)) and a machine whose step time is linear in ``|B|`` should not pay that. Rounds
stop when both knees stay (at most ``FIT_ROUNDS``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from runtime.sim.linear_fit import Fit, design, fit_linear, weighted_nnls
from runtime.sim.settle import factors as settle_factors
from runtime.sim.settle import fit_settle, steps_since_prefill

KINDS = ("decode", "prefill", "mixed")
SMALL_BATCH = 3  # decode-only compositions of at most this many decodes get profile.small_batch_weight
FIT_ROUNDS = 3  # rounds of fit_rows (settling, s_knee, n_knee); the knees are stable after one or two
SEQ_KNEE_MIN_GAIN = 0.01  # s_knee > 0 must lower the weighted MAPE by this share of it: a binary in the Oracle
FEATURES = ("num_tokens", "prefill_attn_work", "sum_decode_ctx", "num_seqs")  # N, W, S, |B|: design()'s order


def features_of(frame: pd.DataFrame) -> list[np.ndarray]:
    """``N, W, S, |B|`` of every row of a ``measurements.csv`` frame, as ``design`` takes them."""
    return [frame[c].to_numpy(float) for c in FEATURES]


def fit_weights(rows: pd.DataFrame, opts: dict) -> np.ndarray:
    """Each fitted row's weight: small decode-only grid batches ×``small_batch_weight``; with served steps, each
    grid composition counts as ``serve_grid_weight`` of them (module docstring). ``rows``: grid and served only."""
    grid = (rows.split == "train").to_numpy()
    small = grid & ((rows.kind == "decode") & (rows.num_decodes <= SMALL_BATCH)).to_numpy()
    weights = np.where(small, float(opts["small_batch_weight"]), 1.0)
    if (~grid).any():
        weights = np.where(grid, weights * float(opts["serve_grid_weight"]), 1.0)
    return weights


def fit_rows(rows: pd.DataFrame, opts: dict) -> Fit:
    """``fit_linear`` over grid and served rows, weighted by ``fit_weights``; with served rows and
    ``profile.fit_settle``, the settling factor (``runtime.sim.settle``), and the concave ``β5·min(|B|, s_knee)``
    for ``s_knee`` up to ``profile.max_seq_knee`` (0: none), by rounds (module docstring) until the knees stay (at
    most ``FIT_ROUNDS``)."""
    weights = fit_weights(rows, opts)
    feats = features_of(rows)
    t = rows.time_s.to_numpy(float)
    best = fit_linear(*feats, t, weights=weights)
    settle = bool(opts["fit_settle"]) and "since_prefill" in rows
    seq_knees = range(2, int(opts.get("max_seq_knee", 0)) + 1)
    if not settle and not seq_knees:
        return best
    k = rows.since_prefill.to_numpy() if settle else np.full(len(rows), -1)
    decode_only = (rows.num_prefill_tokens == 0).to_numpy()
    amplitude = decay = 0.0
    knee, s_knee = best.n_knee, 0
    for _ in range(FIT_ROUNDS):
        if settle:
            found = fit_settle(design(*feats, knee, s_knee), t, weights, k, decode_only)
            amplitude, decay = found.amplitude, found.decay
        target = t / settle_factors(k, decode_only, amplitude, decay)
        last = s_knee
        if seq_knees:
            errors = {s: weighted_nnls(design(*feats, knee, s), target, weights)[1] for s in (0, *seq_knees)}
            # The smallest s_knee within rounding of the best: knees with no |B| between them fit alike (another
            # split of β4 and β5), and float noise (a CSV round trip) must not pick another one.
            s_knee = next(s for s in errors if errors[s] <= min(errors.values()) + 1e-9)
            s_knee = s_knee if errors[s_knee] < errors[0] * (1 - SEQ_KNEE_MIN_GAIN) - 1e-9 else 0
        again = fit_linear(*feats, target, weights=weights, s_knee=s_knee)
        if again.train_mape < best.train_mape:
            best = Fit(again.beta, again.n_knee, again.train_mape, settle_amplitude=amplitude, settle_decay=decay,
                       s_knee=s_knee)
        if again.n_knee == knee and s_knee == last:
            break
        knee = again.n_knee
    return best


def since_prefill(measurements: pd.DataFrame) -> pd.Series:
    """Each row's ``k`` (``runtime.sim.settle``): the CSV's column, or for served rows of older files recovered from
    their ids (``<run>#<step>``, steps in order; a step left out of the CSV, a swap, still counts); -1 elsewhere."""
    if "since_prefill" in measurements:
        return measurements.since_prefill.fillna(-1).astype(int)
    out = pd.Series(-1, index=measurements.index)
    if "id" not in measurements:
        return out
    served = measurements[measurements.split == "serve"]
    parts = served.id.astype(str).str.split("#")
    for _, group in served.groupby(parts.str[0], sort=False):
        steps = group.id.astype(str).str.split("#").str[1].astype(int).to_numpy()
        has = np.zeros(steps.max() + 1, dtype=bool)
        has[steps] = group.num_prefill_tokens.to_numpy() > 0
        out[group.index] = steps_since_prefill(has.tolist())[steps]
    return out


def fit_report(frame: pd.DataFrame, fit: Fit) -> tuple[pd.DataFrame, dict]:
    """``frame`` (``measurements.csv``'s rows) with each row's prediction ``pred_s`` and ``ape_pct``, and the YAML's
    ``fit_error`` (MAPE %: held-out per kind and p95, grid in-sample, served in-sample). Predictions leave out any
    configured engine overhead (it is not part of what was measured); served steps carry the settling factor, as
    the simulator applies it, while grid and held-out compositions were timed settled."""
    frame = frame.copy()
    frame["pred_s"] = design(*features_of(frame), fit.n_knee, fit.s_knee) @ fit.beta
    if "since_prefill" in frame:
        frame["pred_s"] *= settle_factors(frame.since_prefill.to_numpy(), (frame.num_prefill_tokens == 0).to_numpy(),
                                          fit.settle_amplitude, fit.settle_decay)
    frame["ape_pct"] = (frame.pred_s - frame.time_s).abs() / frame.time_s * 100
    tr, ho, sv = (frame[frame.split == split] for split in ("train", "heldout", "serve"))
    fit_error = {"iteration": float(ho.ape_pct.mean()), "iteration_p95": float(np.percentile(ho.ape_pct, 95)),
                 **{f"iteration_{k}": float(ho.ape_pct[ho.kind == k].mean()) for k in KINDS},
                 "train": float(tr.ape_pct.mean()),
                 **{f"train_{k}": float(tr.ape_pct[tr.kind == k].mean()) for k in KINDS if (tr.kind == k).any()},
                 "num_train": int(len(tr)), "num_heldout": int(len(ho))}
    if len(sv):
        fit_error.update({"serve": float(sv.ape_pct.mean()), "num_serve": int(len(sv)),
                          **{f"serve_{k}": float(sv.ape_pct[sv.kind == k].mean()) for k in KINDS
                             if (sv.kind == k).any()}})
    return frame, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fit_error.items()}


def cost_model_payload(name: str, fit: Fit, opts: dict, source: str) -> dict:
    """The cost-model YAML's fields (``runtime.sim.cost_model.LinearCostModel``)."""
    b0, b1, b2, b3, b4, b5 = (float(x) for x in (*fit.beta, 0.0)[:6])
    return {"_target_": "runtime.sim.cost_model.LinearCostModel", "_convert_": "all", "name": name,
            "beta0": b0, "beta1": b1, "beta2": b2, "beta3": b3, "beta4": b4, "beta5": b5, "s_knee": int(fit.s_knee),
            "engine_overhead_s": float(opts["engine_overhead_s"]), "n_knee": float(fit.n_knee), "noise_cv": 0.0,
            "seed": 0, "settle_amplitude": float(fit.settle_amplitude), "settle_decay": float(fit.settle_decay),
            "source": source}
