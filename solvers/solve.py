"""``solve(instance, backend, time_limit_s) -> Plan``: one entry point for every Oracle backend.

| backend | what | role |
|---|---|---|
| ``decomposed`` (default) | time-threshold decomposition, LP bounds, reduced-cost fixing, SCIP on the core | fast and exact |
| ``decomposed_cbc`` | the same with CBC on the core | |
| ``scip``, ``cbc`` | the whole big-M MILP in OR-Tools ``pywraplp`` | references |
| ``cpsat`` | the integer version (ps, scaled values) in CP-SAT | reference |
| ``pulp_cbc`` | the whole MILP in PuLP with its bundled CBC | independent reference |

A backend that raises, is not installed, or runs out of time returns a ``Plan`` whose ``status`` says so; ``solve``
itself never raises on a well-formed instance, so the Oracle can always fall back.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from runtime.core.errors import ConfigError
from solvers.instance import OracleInstance
from solvers.plan import Plan


def _decomposed(solver_id: str) -> Callable[..., Plan]:
    def run(inst, *, time_limit_s, mip_gap, hint=None):
        from solvers.decomposed import solve_decomposed

        return solve_decomposed(inst, time_limit_s=time_limit_s, mip_gap=mip_gap, solver_id=solver_id, hint=hint)
    return run


def _pywraplp(solver_id: str) -> Callable[..., Plan]:
    def run(inst, *, time_limit_s, mip_gap, hint=None):
        from solvers.mip import solve_pywraplp

        return solve_pywraplp(inst, solver_id=solver_id, time_limit_s=time_limit_s, mip_gap=mip_gap)
    return run


def _cpsat(inst, *, time_limit_s, mip_gap, hint=None):
    from solvers.cpsat import solve_cpsat

    return solve_cpsat(inst, time_limit_s=time_limit_s, mip_gap=mip_gap)


def _pulp(inst, *, time_limit_s, mip_gap, hint=None):
    from solvers.mip import solve_pulp

    return solve_pulp(inst, time_limit_s=time_limit_s, mip_gap=mip_gap)


BACKENDS: dict[str, Callable[..., Plan]] = {
    "decomposed": _decomposed("SCIP"),
    "decomposed_cbc": _decomposed("CBC"),
    "scip": _pywraplp("SCIP"),
    "cbc": _pywraplp("CBC"),
    "cpsat": _cpsat,
    "pulp_cbc": _pulp,
}
DEFAULT_BACKEND = "decomposed"
#: Relative optimality tolerance of every backend (``oracle.mip_gap``): 0.1%, about one prefill token of an alive
#: request at serving sizes; 1e-4 (SCIP's own default) costs the decomposed backend a p99 of ~100 ms (BENCHMARKS.md).
DEFAULT_MIP_GAP = 1e-3


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"oracle.backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return name


def solve(instance: OracleInstance, backend: str = DEFAULT_BACKEND, time_limit_s: float | None = 0.05, *,
          mip_gap: float = DEFAULT_MIP_GAP, hint: np.ndarray | None = None) -> Plan:
    """The goodput-optimal batch of ``instance`` (within ``mip_gap``), or a ``Plan`` saying why there is none.

    ``time_limit_s=None``: no limit (deterministic). ``hint``: units of a known feasible batch (``decomposed``
    starts from it; the heuristic's own batch in gap accounting).
    """
    check_backend(backend)
    if time_limit_s is not None and not time_limit_s > 0:
        raise ConfigError(f"oracle.time_limit_s must be > 0 or null, got {time_limit_s!r}")
    if not len(instance):
        return Plan(backend=backend, status="empty", message="no candidates")
    t0 = time.perf_counter()
    try:
        return BACKENDS[backend](instance, time_limit_s=time_limit_s, mip_gap=mip_gap, hint=hint)
    except ImportError as error:
        return Plan(backend=backend, status="solver_missing", solve_time_s=time.perf_counter() - t0, message=str(error))
    except Exception as error:  # noqa: BLE001 - a solver crash must end in the fallback, not kill the run
        return Plan(backend=backend, status="error", solve_time_s=time.perf_counter() - t0,
                    message=f"{type(error).__name__}: {error}")
