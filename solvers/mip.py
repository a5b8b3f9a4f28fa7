"""The whole MILP of ``solvers.formulation`` as one model: OR-Tools ``pywraplp`` (SCIP, CBC) and PuLP (its CBC).

These are the reference backends: the formulation exactly as written, big-M and all. They are slow at serving
sizes (about a second at 256 candidates; BENCHMARKS.md) and keep the fast ``decomposed`` backend honest in tests.
"""
from __future__ import annotations

import math
import time

from solvers.formulation import evaluate_units, write_model
from solvers.instance import OracleInstance
from solvers.plan import Plan


class PywraplpAdapter:
    def __init__(self, solver) -> None:
        self.s = solver

    def bool_var(self, name):
        return self.s.BoolVar(name)

    def int_var(self, name, lo, hi):
        return self.s.IntVar(lo, hi, name)

    def num_var(self, name, lo, hi):
        return self.s.NumVar(lo, hi, name)

    def sum(self, terms):
        return self.s.Sum(list(terms))

    def add(self, constraint, name):
        self.s.Add(constraint, name)

    def maximize(self, expr):
        self.s.Maximize(expr)


class _PulpAdapter:
    def __init__(self, problem) -> None:
        import pulp

        self.pulp, self.p = pulp, problem

    def bool_var(self, name):
        return self.pulp.LpVariable(name, cat="Binary")

    def int_var(self, name, lo, hi):
        return self.pulp.LpVariable(name, lowBound=lo, upBound=hi, cat="Integer")

    def num_var(self, name, lo, hi):
        return self.pulp.LpVariable(name, lowBound=lo, upBound=hi, cat="Continuous")

    def sum(self, terms):
        return self.pulp.lpSum(list(terms))

    def add(self, constraint, name):
        self.p += (constraint, name)

    def maximize(self, expr):
        self.p.setObjective(expr)


def _plan_from_units(inst: OracleInstance, backend: str, status: str, units, bound: float, t0: float,
                     message: str = "", **stats) -> Plan:
    import numpy as np

    units = np.asarray(units, dtype=np.int64)
    if not (units > 0).any():
        return Plan(backend=backend, status="infeasible" if status == "optimal" else "no_solution", bound=bound,
                    solve_time_s=time.perf_counter() - t0, message=message or "no non-empty batch", stats=stats)
    ev = evaluate_units(inst, units)
    batch = {inst.req_ids[i]: int(units[i]) for i in np.flatnonzero(units)}
    if status == "optimal":
        bound = max(bound, ev.objective) if math.isfinite(bound) else ev.objective
    return Plan(backend=backend, status=status, batch=batch, objective=ev.objective, bound=bound,
                solve_time_s=time.perf_counter() - t0, time_s=ev.time_s, message=message, stats=stats)


def solve_pywraplp(inst: OracleInstance, *, solver_id: str, time_limit_s: float | None, mip_gap: float) -> Plan:
    """``pywraplp`` with ``solver_id`` SCIP or CBC."""
    from ortools.linear_solver import pywraplp

    t0 = time.perf_counter()
    backend = solver_id.lower()
    solver = pywraplp.Solver.CreateSolver(solver_id)
    if solver is None:
        return Plan(backend=backend, status="solver_missing", message=f"OR-Tools was built without {solver_id}")
    if time_limit_s is not None:
        solver.SetTimeLimit(max(1, int(time_limit_s * 1000)))
    model = write_model(inst, PywraplpAdapter(solver))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, mip_gap)
    code = solver.Solve(params)
    if code in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        units = [round(v.solution_value()) for v in model.units]
        status = "optimal" if code == pywraplp.Solver.OPTIMAL else "time_limit"
        return _plan_from_units(inst, backend, status, units, solver.Objective().BestBound(), t0)
    elapsed = time.perf_counter() - t0
    if code == pywraplp.Solver.INFEASIBLE and time_limit_s is not None and solver.WallTime() >= 0.9e3 * time_limit_s:
        # CBC through pywraplp reports INFEASIBLE when its time limit stops it before any solution.
        return Plan(backend=backend, status="no_solution", solve_time_s=elapsed,
                    message=f"{solver_id} stopped at the time limit without a solution (reported INFEASIBLE)")
    if code == pywraplp.Solver.INFEASIBLE:
        return Plan(backend=backend, status="infeasible", solve_time_s=elapsed,
                    message="no non-empty batch satisfies (1)-(5)")
    status = "no_solution" if code == pywraplp.Solver.NOT_SOLVED else "error"
    return Plan(backend=backend, status=status, solve_time_s=time.perf_counter() - t0,
                message=f"pywraplp {solver_id} returned status {code}")


def solve_pulp(inst: OracleInstance, *, time_limit_s: float | None, mip_gap: float) -> Plan:
    """PuLP with its bundled CBC (a subprocess per solve: the slowest backend, kept as an independent check)."""
    import pulp

    t0 = time.perf_counter()
    command = pulp.PULP_CBC_CMD(msg=False, gapRel=mip_gap,
                                timeLimit=None if time_limit_s is None else max(1, math.ceil(time_limit_s)))
    if not command.available():
        return Plan(backend="pulp_cbc", status="solver_missing", message="PuLP's bundled CBC binary is not available")
    problem = pulp.LpProblem("oracle", pulp.LpMaximize)
    model = write_model(inst, _PulpAdapter(problem))
    try:
        problem.solve(command)
    except pulp.PulpSolverError as error:
        return Plan(backend="pulp_cbc", status="error", solve_time_s=time.perf_counter() - t0, message=str(error))
    sol = problem.sol_status
    if sol in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        units = [round(pulp.value(v) or 0) for v in model.units]
        status = "optimal" if sol == pulp.LpSolutionOptimal else "time_limit"
        return _plan_from_units(inst, "pulp_cbc", status, units, math.inf, t0)
    if sol == pulp.LpSolutionInfeasible:
        return Plan(backend="pulp_cbc", status="infeasible", solve_time_s=time.perf_counter() - t0,
                    message="no non-empty batch satisfies (1)-(5)")
    return Plan(backend="pulp_cbc", status="no_solution", solve_time_s=time.perf_counter() - t0,
                message=f"PuLP CBC: {pulp.LpStatus[problem.status]}")
