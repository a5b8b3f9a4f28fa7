"""The MILP of ``solvers.formulation`` as an integer model for OR-Tools CP-SAT.

CP-SAT needs integer coefficients. Times are in picoseconds (``TIME_SCALE = 1e12``): every time coefficient is
rounded *up* and every limit (``cap_i``, ``lim_i``) *down*, so a batch CP-SAT accepts without a violation is
also accepted by the real-valued model; values are scaled by ``VALUE_SCALE = 1e9`` and rounded. (6) and (7) use
enforcement literals instead of big-M, with ``T`` replaced by the right-hand sides of (1) and (1')::

    (6)  rhs(1) ≤ cap_i  and  rhs(1') ≤ cap_i   if x_i ∧ ¬z_i
    (7)  rhs(1) ≤ lim_i  and  rhs(1') ≤ lim_i   if ¬x_i ∧ ¬z_i

The returned objective is re-scored in floating point by ``formulation.evaluate``, so it is comparable with every
other backend; only the rounding of limits can make CP-SAT's optimum a hair lower (tests allow for it).
"""
from __future__ import annotations

import math
import time

from solvers.instance import DECODE, NEW, OracleInstance
from solvers.mip import _plan_from_units
from solvers.plan import Plan

TIME_SCALE = 1e12
VALUE_SCALE = 1e9


def _up(seconds: float) -> int:
    return math.ceil(seconds * TIME_SCALE - 1e-6)


def _down(seconds: float) -> int:
    return math.floor(seconds * TIME_SCALE + 1e-6)


def solve_cpsat(inst: OracleInstance, *, time_limit_s: float | None, mip_gap: float, num_workers: int = 1) -> Plan:
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    lat = inst.latency
    n = len(inst)
    model = cp_model.CpModel()
    x = [model.NewBoolVar(f"x_{i}") for i in range(n)]
    units = []
    objective = []
    for i in range(n):
        if inst.kind[i] == DECODE:
            units.append(x[i])                                                          # (3)
            if inst.bonus[i] > 0:
                objective.append(int(round(float(inst.bonus[i]) * VALUE_SCALE)) * x[i])
        else:
            u = int(inst.upper[i])
            c = model.NewIntVar(0, u, f"c_{i}")
            model.Add(c >= x[i])                                                        # (2)
            model.Add(c <= u * x[i])                                                    # (2)
            units.append(c)
            if inst.bonus[i] > 0:
                f = model.NewBoolVar(f"f_{i}")
                model.Add(int(inst.remaining[i]) * f <= c)                              # (8)
                objective.append(int(round(float(inst.bonus[i]) * VALUE_SCALE)) * f)
        objective.append(int(round(float(inst.value[i]) * VALUE_SCALE)) * units[i])
    # T is substituted by the right-hand sides of (1)/(1') in (6)/(7): OR-Tools 9.15's CP-SAT returned a false
    # INFEASIBLE on a 7-variable model with an explicit T variable (BENCHMARKS.md, "CP-SAT").
    rest = sum(_up(inst.ta[i]) * units[i] for i in range(n)) + _up(lat.b4) * sum(x)
    if lat.b5 and n > lat.s_knee:                                                       # (1s): w = min(Σx, s_knee)
        w, y = model.NewIntVar(0, lat.s_knee, "w_seq"), model.NewBoolVar("y_seq")
        model.Add(w >= sum(x) - (n - lat.s_knee) * y)
        model.Add(w >= lat.s_knee * y)
        rest += _up(lat.b5) * w
    elif lat.b5:
        rest += _up(lat.b5) * sum(x)
    lhs = [_up(lat.b0) + _up(lat.b1) * sum(units) + rest]                              # (1)
    if lat.n_knee > 0:
        lhs.append(_up(lat.b0) + _up(lat.b1 * lat.n_knee) + rest)                       # (1')
    if inst.need.any():
        model.Add(sum(int(inst.need[i]) * x[i] for i in range(n) if inst.need[i]) <= inst.free_blocks)   # (4)
    new = [i for i in range(n) if inst.kind[i] == NEW]
    if new:
        model.Add(sum(int(inst.need[i]) * x[i] for i in new) <= inst.free_blocks_new)   # (4)
        model.Add(sum(x[i] for i in new) <= inst.new_slots)                             # (5)
        if inst.footprint_left is not None:
            model.Add(sum(int(inst.footprint[i]) * x[i] for i in new) <= inst.footprint_left)   # (4f)
    if inst.max_tokens is not None:
        model.Add(sum(units) <= inst.max_tokens)                                        # (5)
    model.AddBoolOr(x)                                                                  # (5) non-empty
    for i in range(n):
        if not inst.alive[i]:
            continue
        cap, lim = float(inst.cap[i]), float(inst.lim[i])
        has_lim = inst.kind[i] == DECODE and lim < math.inf
        if cap == math.inf and not has_lim:
            continue
        z = model.NewBoolVar(f"z_{i}")
        objective.append(-int(round(float(inst.penalty[i]) * VALUE_SCALE)) * z)
        for t in lhs:
            if cap < math.inf:
                model.Add(t <= _down(cap)).OnlyEnforceIf([x[i], z.Not()])               # (6)
            if has_lim:
                model.Add(t <= _down(lim)).OnlyEnforceIf([x[i].Not(), z.Not()])         # (7)
    model.Maximize(sum(objective))
    solver = cp_model.CpSolver()
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = num_workers
    solver.parameters.relative_gap_limit = mip_gap
    code = solver.Solve(model)
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        values = [solver.Value(u) for u in units]
        status = "optimal" if code == cp_model.OPTIMAL else "time_limit"
        return _plan_from_units(inst, "cpsat", status, values, solver.BestObjectiveBound() / VALUE_SCALE, t0)
    if code == cp_model.INFEASIBLE:
        return Plan(backend="cpsat", status="infeasible", solve_time_s=time.perf_counter() - t0,
                    message="no non-empty batch satisfies (1)-(5)")
    return Plan(backend="cpsat", status="no_solution" if code == cp_model.UNKNOWN else "error",
                solve_time_s=time.perf_counter() - t0, message=f"CP-SAT status {solver.StatusName(code)}")
