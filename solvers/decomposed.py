"""The fast exact Oracle solver: the MILP of ``solvers.formulation`` decomposed by time threshold.

``T`` is one scalar. A member ``i`` needs ``T ≤ cap_i`` (else ``z_i = 1``), a skipped alive decode ``T ≤ lim_i``.
Let ``θ_1 < … < θ_K`` be the distinct finite ``cap_i``, ``lim_i`` and ``M_T``. Subproblem ``k`` fixes
``T ≤ θ_k`` and charges, for every alive item,

    decode with lim_i < θ_k ≤ cap_i :  −V_i unless it joins  (constant −V_i, setup +V_i on x_i)
    decode with cap_i < θ_k         :  −V_i whatever it does  (constant −V_i; it may join freely)
    prefill-phase with cap_i < θ_k  :  −V_i if it joins       (setup −V_i on x_i)

which is what (6)/(7) cost at any ``T ∈ (θ_{k−1}, θ_k]``; a subproblem value never exceeds the true ``J`` of its
solution, and the optimum ``T*`` lies in some ``(θ_{k−1}, θ_k]`` where the charges are exact, so
``J* = max_k J_k``: the decomposition is exact. Each ``J_k`` is a knapsack without big-M:

    max  const_k + Σ value_i·c_i + setup_ki·x_i + bonus_i·f_i
    s.t. b0 + β1·max(N, n_knee) + Σ ta_i·c_i + β4·Σ x_i + β5·min(Σ x_i, s_knee) ≤ θ_k,  (2)–(5), (8)

(the last term by ``formulation``'s (1s), one binary, where a CPU profile has ``β5 > 0``).

**Bounds.** Dropping KV, slots, the token cap, the knee, the ``β5`` term (it only adds time) and integrality,
and setting ``x_i = c_i/U_i``, ``f_i = c_i/U_i`` (valid: setups are only positive for decodes, where ``U_i = 1``),
leaves a fractional knapsack on units with value ``v_ki = value_i + (bonus_i + setup_ki)/U_i`` and time
``t_i = β1 + ta_i + β4/U_i`` per unit: its greedy (density order) is the LP bound ``B_k``, for all ``k`` at once as
one ``K × n`` matrix.

**Search.** Subproblems in decreasing ``B_k``: stop when ``B_k ≤ J_inc + tol``. Otherwise a greedy integer fill in
density order (all constraints) may raise ``J_inc`` (scored by ``formulation.evaluate``); if ``B_k`` still exceeds
it, subproblem ``k`` is solved exactly by a MILP (SCIP through ``pywraplp``) after **reduced-cost fixing**: with the
LP's time price ``λ_k`` and reduced costs ``r_i = v_ki − λ_k·t_i``, any solution better than ``J_inc`` has
``c_i ≥ U_i − ⌊(B_k − J_inc)/r_i⌋`` (``r_i > 0``) and ``c_i ≤ ⌊(B_k − J_inc)/(−r_i)⌋`` (``r_i < 0``), which fixes
most items and leaves a core of a few near the LP's critical density. ``tol = mip_gap·max(|J_inc|, 1e−9)``.
"""
from __future__ import annotations

import math
import time

import numpy as np

from solvers.formulation import InfeasibleBatch, check_feasible, evaluate_units, max_time, seq_knee_terms
from solvers.instance import DECODE, NEW, OracleInstance
from solvers.mip import PywraplpAdapter
from solvers.plan import Plan

_INF = math.inf
_EPS = 1e-9


class _Rows:
    """The K subproblems' constants, per-unit LP values, bounds and critical densities."""

    def __init__(self, inst: OracleInstance) -> None:
        lat = inst.latency
        n = len(inst)
        upper = inst.upper.astype(np.float64)
        alive = inst.alive
        is_dec = inst.kind == DECODE
        self.t_unit = np.maximum(lat.b1 + inst.ta + lat.b4 / upper, 1e-15)
        base = inst.value + inst.bonus / upper
        m_t = max_time(inst)
        cap = np.where(alive, inst.cap, _INF)
        lim = np.where(alive & is_dec, inst.lim, _INF)
        # The fastest non-empty batch: one item at one unit.
        t_min = lat.b0 + lat.b1 * max(1.0, lat.n_knee) + float(np.min(inst.ta)) + lat.seq_time(1) if n else _INF
        cands = np.concatenate([cap[np.isfinite(cap)], lim[np.isfinite(lim)], [m_t]])
        cands = np.minimum(cands, m_t)
        theta = np.unique(cands[cands >= t_min - 1e-15])
        self.theta = theta
        k = len(theta)
        th = theta[:, None]
        pen = inst.penalty[None, :]
        dec_lost_if_out = is_dec[None, :] & (lim[None, :] < th)
        dec_saved = dec_lost_if_out & (cap[None, :] >= th)
        pf_violated = ~is_dec[None, :] & (cap[None, :] < th)
        self.setup = np.where(dec_saved, pen, 0.0) - np.where(pf_violated, pen, 0.0)   # K × n
        self.const = -(dec_lost_if_out * pen).sum(axis=1)                               # K
        v = base[None, :] + self.setup / upper[None, :]
        self.v = v
        cap_time = theta - lat.b0
        # Fractional greedy per row.
        vu = np.where(v > 0, v * upper[None, :], 0.0)
        tu = np.where(v > 0, self.t_unit[None, :] * upper[None, :], 0.0)
        dens = np.where(v > 0, v / self.t_unit[None, :], -1.0)
        order = np.argsort(-dens, axis=1, kind="stable")
        vu_s = np.take_along_axis(vu, order, axis=1)
        tu_s = np.take_along_axis(tu, order, axis=1)
        cum = np.cumsum(tu_s, axis=1)
        full = cum <= cap_time[:, None] + 1e-15
        value_full = (vu_s * full).sum(axis=1)
        first_out = np.where(full.all(axis=1), n, np.argmin(full, axis=1)) if n else np.zeros(k, dtype=int)
        rows = np.arange(k)
        j = np.minimum(first_out, max(n - 1, 0))
        before = np.where(first_out > 0, cum[rows, np.maximum(first_out - 1, 0)], 0.0) if n else np.zeros(k)
        left = np.maximum(cap_time - before, 0.0)
        partial = np.where((first_out < n) & (tu_s[rows, j] > 0), np.minimum(left / np.maximum(tu_s[rows, j], 1e-300), 1.0)
                           * vu_s[rows, j], 0.0) if n else np.zeros(k)
        self.bound = np.where(cap_time >= 0, self.const + value_full + partial, -_INF)
        dens_s = np.take_along_axis(dens, order, axis=1)
        self.lam = np.where(first_out < n, np.maximum(dens_s[rows, j], 0.0), 0.0) if n else np.zeros(k)
        self.order = order


def _greedy(inst: OracleInstance, rows: _Rows, k: int) -> np.ndarray:
    """An integer batch for subproblem ``k``: items in LP density order, each as many units as every limit allows."""
    lat = inst.latency
    theta = rows.theta[k]
    v, setup = rows.v[k], rows.setup[k]
    units = np.zeros(len(inst), dtype=np.int64)
    n_tok, s_time = 0, 0.0
    kv, kv_new, fp, slots = 0, 0, 0, 0
    free, free_new, fp_left = inst.free_blocks, inst.free_blocks_new, inst.footprint_left
    max_tokens = inst.max_tokens
    kind, need, upper, ta, remaining = inst.kind, inst.need, inst.upper, inst.ta, inst.remaining
    value, bonus = inst.value, inst.bonus
    room_t = theta - lat.b0 + 1e-15
    b1, knee = lat.b1, lat.n_knee
    seqs = 0
    for i in rows.order[k]:
        if v[i] <= 0:
            break
        kind_i = kind[i]
        if kind_i == NEW:
            if slots + 1 > inst.new_slots or kv + need[i] > free or kv_new + need[i] > free_new:
                continue
            if fp_left is not None and fp + inst.footprint[i] > fp_left:
                continue
        elif need[i] and kv + need[i] > free:
            continue
        hi = int(upper[i])
        if max_tokens is not None:
            hi = min(hi, max_tokens - n_tok)

        seq_cost = lat.seq_time(seqs + 1) - lat.seq_time(seqs)  # this item's β4 (+ β5 while under s_knee)

        def fits(c: int) -> bool:  # (1)/(1') at T ≤ θ_k; monotone in c
            return b1 * max(n_tok + c, knee) + s_time + ta[i] * c + seq_cost <= room_t

        if hi < 1 or not fits(1):
            continue
        lo_c = 1
        while lo_c < hi:
            mid = (lo_c + hi + 1) // 2
            if fits(mid):
                lo_c = mid
            else:
                hi = mid - 1
        c = lo_c
        gain = value[i] * c + setup[i] + (bonus[i] if c == remaining[i] else 0.0)
        if gain <= 0:
            continue
        units[i] = c
        n_tok += c
        s_time += ta[i] * c + seq_cost
        seqs += 1
        kv += need[i]
        if kind_i == NEW:
            kv_new += need[i]
            slots += 1
            if fp_left is not None:
                fp += inst.footprint[i]
    return units


def _exact(inst: OracleInstance, rows: _Rows, k: int, incumbent: float, time_limit_s: float | None,
           mip_gap: float, solver_id: str) -> tuple[np.ndarray | None, str, int]:
    """Subproblem ``k`` solved exactly after reduced-cost fixing; returns (units or None, status, core size)."""
    from ortools.linear_solver import pywraplp

    lat = inst.latency
    n = len(inst)
    upper = inst.upper
    v, setup = rows.v[k], rows.setup[k]
    lo = np.zeros(n, dtype=np.int64)
    hi = upper.copy()
    if math.isfinite(incumbent):
        slack = max(rows.bound[k] - incumbent, 0.0)
        r = v - rows.lam[k] * rows.t_unit
        pos, neg = r > 1e-15, r < -1e-15
        lo[pos] = np.maximum(0, upper[pos] - np.floor(slack / r[pos] + 1e-9).astype(np.int64))
        hi[neg] = np.minimum(upper[neg], np.floor(slack / -r[neg] + 1e-9).astype(np.int64))
    solver = pywraplp.Solver.CreateSolver(solver_id)
    if solver is None:
        return None, "solver_missing", 0
    if time_limit_s is not None:
        solver.SetTimeLimit(max(1, int(time_limit_s * 1000)))
    live = np.flatnonzero(hi >= np.maximum(lo, 1))
    xs, cs, objective = {}, {}, []
    n_terms, rest_terms = [], []
    kv, kv_new, fp, slots, xsum = [], [], [], [], []
    core = 0
    for i in live:
        i = int(i)
        fixed_in = lo[i] >= 1
        x = 1 if fixed_in else solver.BoolVar(f"x_{i}")
        if inst.kind[i] == DECODE:
            c = x
        else:
            c = solver.IntVar(int(max(lo[i], 0)), int(hi[i]), f"c_{i}")
            if not fixed_in:
                solver.Add(c >= x)                                                       # (2)
                solver.Add(c <= int(hi[i]) * x)                                          # (2)
            if inst.bonus[i] > 0 and hi[i] == inst.remaining[i]:
                f = solver.BoolVar(f"f_{i}")
                solver.Add(int(inst.remaining[i]) * f <= c)                              # (8)
                objective.append(float(inst.bonus[i]) * f)
        if inst.kind[i] == DECODE and inst.bonus[i] > 0:
            objective.append(float(inst.bonus[i]) * x)
        core += not (fixed_in and inst.kind[i] == DECODE)
        xs[i], cs[i] = x, c
        objective.append(float(inst.value[i]) * c)
        if setup[i]:
            objective.append(float(setup[i]) * x)
        n_terms.append(c)
        rest_terms.append(float(inst.ta[i]) * c)
        xsum.append(x)
        if inst.need[i]:
            kv.append(int(inst.need[i]) * x)
        if inst.kind[i] == NEW:
            slots.append(x)
            if inst.need[i]:
                kv_new.append(int(inst.need[i]) * x)
            if inst.footprint_left is not None:
                fp.append(int(inst.footprint[i]) * x)
    if not xs:
        return None, "infeasible", 0
    if not core and all(isinstance(c, int) for c in cs.values()):
        # Reduced-cost fixing decided every item: check the fixed batch against T ≤ θ_k directly.
        units = np.zeros(n, dtype=np.int64)
        units[list(cs)] = 1
        try:
            check_feasible(inst, units)
            fixed_ok = evaluate_units(inst, units, check=False).time_s <= rows.theta[k] + 1e-15
        except InfeasibleBatch:
            fixed_ok = False
        return (units, "optimal", 0) if fixed_ok else (None, "infeasible", 0)
    theta = float(rows.theta[k])
    rest = solver.Sum(rest_terms + [lat.b4 * x for x in xsum] + seq_knee_terms(PywraplpAdapter(solver), xsum, lat))
    solver.Add(lat.b0 + lat.b1 * solver.Sum(n_terms) + rest <= theta + 1e-15)          # (1) with T ≤ θ_k
    if lat.n_knee > 0:
        solver.Add(lat.b0 + lat.b1 * lat.n_knee + rest <= theta + 1e-15)               # (1')
    if kv:
        solver.Add(solver.Sum(kv) <= inst.free_blocks)                                   # (4)
    if kv_new:
        solver.Add(solver.Sum(kv_new) <= inst.free_blocks_new)                           # (4)
    if fp:
        solver.Add(solver.Sum(fp) <= inst.footprint_left)                                # (4f)
    if slots:
        solver.Add(solver.Sum(slots) <= inst.new_slots)                                  # (5)
    if inst.max_tokens is not None:
        solver.Add(solver.Sum(n_terms) <= inst.max_tokens)                               # (5)
    solver.Add(solver.Sum(xsum) >= 1)                                                    # (5)
    solver.Maximize(solver.Sum(objective) + float(rows.const[k]))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, mip_gap)
    code = solver.Solve(params)
    if code not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        status = "infeasible" if code == pywraplp.Solver.INFEASIBLE else (
            "no_solution" if code == pywraplp.Solver.NOT_SOLVED else "error")
        return None, status, core
    units = np.zeros(n, dtype=np.int64)
    for i, c in cs.items():
        units[i] = c if isinstance(c, int) else round(c.solution_value())
    return units, "optimal" if code == pywraplp.Solver.OPTIMAL else "time_limit", core


def solve_decomposed(inst: OracleInstance, *, time_limit_s: float | None, mip_gap: float,
                     solver_id: str = "SCIP", hint: np.ndarray | None = None) -> Plan:
    """Exact (within ``mip_gap``) solve by time-threshold decomposition; ``hint``: a known feasible batch."""
    t0 = time.perf_counter()
    backend = "decomposed" if solver_id == "SCIP" else f"decomposed_{solver_id.lower()}"
    if not len(inst):
        return Plan(backend=backend, status="empty", message="no candidates")
    rows = _Rows(inst)
    best_units, best = None, -_INF
    best_t = 0.0

    def offer(units: np.ndarray | None) -> None:
        nonlocal best_units, best, best_t
        if units is None or not (units > 0).any():
            return
        ev = evaluate_units(inst, units, check=False)
        if ev.objective > best:
            best_units, best, best_t = units, ev.objective, ev.time_s

    if hint is not None:
        hint = np.asarray(hint, dtype=np.int64)
        try:
            check_feasible(inst, hint)
        except InfeasibleBatch:
            hint = None
        offer(hint)
    order = np.argsort(-rows.bound, kind="stable")
    open_bound = -_INF        # the largest bound of a subproblem left unresolved (time limit)
    exact_solves = greedy_solves = 0
    core_sizes = []
    status = "optimal"
    for k in order:
        bound_k = rows.bound[k]
        if bound_k == -_INF or bound_k <= best + mip_gap * max(abs(best), 1e-9):
            break
        offer(_greedy(inst, rows, int(k)))
        greedy_solves += 1
        if bound_k <= best + mip_gap * max(abs(best), 1e-9):
            continue
        left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            open_bound = max(open_bound, bound_k)
            status = "time_limit"
            continue
        units, sub_status, core = _exact(inst, rows, int(k), best, left, mip_gap, solver_id)
        exact_solves += 1
        core_sizes.append(core)
        if sub_status == "solver_missing":
            return Plan(backend=backend, status="solver_missing", message=f"OR-Tools was built without {solver_id}")
        if sub_status in ("time_limit", "no_solution", "error"):
            open_bound = max(open_bound, bound_k)
            status = "time_limit"
        offer(units)
    stats = dict(num_thresholds=len(rows.theta), exact_solves=exact_solves, greedy_solves=greedy_solves,
                 max_core=max(core_sizes, default=0))
    elapsed = time.perf_counter() - t0
    if best_units is None:
        st = "infeasible" if status == "optimal" else "no_solution"
        return Plan(backend=backend, status=st, solve_time_s=elapsed, stats=stats,
                    message="no non-empty batch satisfies (1)-(5)" if st == "infeasible" else "time limit")
    bound = max(best, open_bound)
    batch = {inst.req_ids[i]: int(best_units[i]) for i in np.flatnonzero(best_units)}
    return Plan(backend=backend, status=status, batch=batch, objective=best, bound=bound, solve_time_s=elapsed,
                time_s=best_t, stats=stats)
