"""Gap accounting: how far each step of a heuristic is from the per-iteration optimum (``oracle.gap_accounting``).

``GapAccountant`` wraps any scheduler. Before the heuristic's ``schedule(now)`` it freezes the state the
heuristic faces into an ``OracleInstance`` (every waiting request, ``kv_mode: physical``: only constraints
(1)–(5) are hard, all physical); after it, the instance is pruned to the ``oracle.max_candidates`` least-slack
waiting requests plus the heuristic's own picks, credited with the blocks and slots the heuristic's own
preemptions freed this step, and solved with the heuristic's batch as the starting incumbent. The heuristic's
batch is a feasible point of that instance, so with ``J(B) = formulation.evaluate``, ``J_k = J(B^H_k) ≤ J*_k`` (up
to the solver's ``mip_gap``) and the relative gap (``relative_gap``)

    gap_k = (J*_k − J_k) / (max(J*_k, J_k, 0) − min(J*_k, J_k, 0))     (0 where J*_k = J_k = 0)

The denominator is the length of the smallest interval holding ``0``, ``J*_k`` and ``J_k``, so ``gap_k ∈ [−1, 1]``
(``≥ 0`` up to the ``mip_gap``), non-increasing in ``J_k`` and continuous except at ``J*_k = J_k = 0``:

* ``0 ≤ J_k ≤ J*_k``: ``(J*_k − J_k) / J*_k``, the share of the step's attainable objective the batch missed;
* ``J_k ≤ 0 < J*_k``: ``1``: the batch gained nothing, or lost more to SLO penalties than it gained in progress
  (vLLM's whole-prompt steps); the raw objectives in the table keep by how much;
* ``J_k ≤ J*_k ≤ 0`` (every batch loses): ``1 − J*_k / J_k``, the share of the batch's loss the optimum avoids.

(Dividing by ``max(|J*_k|, 1e−9)`` instead is unbounded once ``J_k < 0``: ``J* = 0.0128``, ``J = −5.67`` give 443,
and a few such steps dominated ``oracle_gap_mean``.)

The reference problem is the same for every scheduler: (1)–(5), the physical constraints. ``scheduler=oracle`` with
its default ``kv_mode: footprint`` solves (1)–(5) plus (4f) (it admits a request only while every running request's
final footprint fits), so its own steps show a gap wherever (4f) binds and a physically admissible request would
have scored more: the one-step price of never preempting, not an accounting error. With ``scheduler.kv_mode=physical``
it solves this very instance and its gap is 0 (up to the ``mip_gap``) on every step it runs its own plan.

Rows go to ``oracle_gap.parquet``: iteration, time, candidates, heuristic and optimal objective, bound, gap,
status, solve time, whether the heuristic preempted. ``summary.json`` gets ``oracle_gap_mean``,
``oracle_gap_p50``, ``oracle_gap_p99`` over the rows solved to optimality, and counts of the rest.
``oracle.gap_every: k`` solves every k-th step only (the heuristic still schedules every step).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput
from solvers.formulation import InfeasibleBatch, evaluate_units, units_of
from solvers.instance import DECODE, NEW, OracleInstance
from solvers.oracle import ObservedScheduler, oracle_params
from solvers.solve import DEFAULT_MIP_GAP, check_backend, solve

_COLUMNS = ["iteration", "time", "num_candidates", "heuristic_objective", "optimal_objective", "bound", "gap",
            "status", "solve_time_s", "heuristic_preempted", "note"]


def prune(instance: OracleInstance, keep: set[str]) -> OracleInstance:
    """The instance restricted to its running items, the ``max_candidates`` least-slack waiting ones and ``keep``."""
    new = instance.kind == NEW
    limit = instance.params.max_candidates
    if int(new.sum()) <= limit:
        return instance
    new_idx = np.flatnonzero(new)
    # Alive requests first (least slack first), then lost ones, as build_instance ranks them.
    ranked = new_idx[np.lexsort((instance.slack[new_idx], ~instance.alive[new_idx]))]
    mask = ~new
    mask[ranked[:limit]] = True
    for i, req_id in enumerate(instance.req_ids):
        if req_id in keep:
            mask[i] = True
    idx = np.flatnonzero(mask)
    fields = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, np.ndarray) and value.shape == (len(instance),):
            value = value[idx]
        elif f.name == "req_ids":
            value = tuple(instance.req_ids[i] for i in idx)
        fields[f.name] = value
    return OracleInstance(**fields)


def widen(instance: OracleInstance, units: np.ndarray) -> OracleInstance:
    """``U_i ≥ units_i`` (a heuristic chunk above the Oracle's ``U_i``), with the secant coefficient recomputed."""
    upper = np.maximum(instance.upper, units)
    prefill = instance.kind != DECODE
    ta = np.where(prefill, instance.latency.b2 * (instance.computed + 0.5 * upper), instance.ta)
    bonus = np.where(prefill & (upper != instance.upper) & (upper < instance.remaining), 0.0, instance.bonus)
    return dataclasses.replace(instance, upper=upper, ta=ta, bonus=bonus)


def relative_gap(optimal: float, heuristic: float) -> float:
    """``(J* − J) / (max(J*, J, 0) − min(J*, J, 0))``, in ``[−1, 1]`` (module docstring); NaN if either is NaN."""
    if math.isnan(optimal) or math.isnan(heuristic):
        return math.nan
    span = max(optimal, heuristic, 0.0) - min(optimal, heuristic, 0.0)
    return (optimal - heuristic) / span if span > 0.0 else 0.0


class GapAccountant(ObservedScheduler):
    """Wraps a scheduler; solves the Oracle on the state of each of its steps (module docstring)."""

    def __init__(self, inner, *, cost_model, backend: str = "decomposed", time_limit_s: float | None = 0.05,
                 mip_gap: float = DEFAULT_MIP_GAP, every: int = 1, bound_prefill_iterations: bool = True,
                 **objective: Any) -> None:
        check_backend(backend)
        if not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"oracle.gap_every must be an integer >= 1, got {every!r}")
        objective.pop("kv_mode", None)  # gap accounting always uses the physical constraints only
        super().__init__(inner, cost_model=cost_model,
                         params=oracle_params(kv_mode="physical", bound_prefill_iterations=bound_prefill_iterations,
                                              **objective))
        self._full = dataclasses.replace(self.params, max_candidates=1 << 62)
        self.backend, self.time_limit_s, self.mip_gap, self.every = backend, time_limit_s, mip_gap, every
        self.rows: list[tuple] = []
        self._iteration = 0

    def schedule(self, now: float) -> SchedulerOutput:
        inner = self.inner
        k = self._iteration
        self._iteration += 1
        if k % self.every:
            return inner.schedule(now)
        tables = inner.block_manager.tables
        held = {r.req_id: len(tables.get(r.req_id, ())) for r in inner.running}
        full = self.instance(now, self._full)
        output = inner.schedule(now)
        self._account(k, now, full, output, held)
        return output

    def _account(self, k: int, now: float, full: OracleInstance, output: SchedulerOutput, held: dict[str, int]) -> None:
        picks = output.num_scheduled_tokens
        preempted = output.preempted_req_ids
        instance = prune(dataclasses.replace(full, params=self.params), set(picks))
        if preempted:
            freed = sum(held.get(r, 0) for r in preempted)
            instance = dataclasses.replace(instance, free_blocks=instance.free_blocks + freed,
                                           free_blocks_new=instance.free_blocks_new + freed,
                                           new_slots=instance.new_slots + len(preempted))
        # Heuristic chunks may exceed oracle.chunk_cap: widen U_i for its own picks so its batch stays feasible.
        note = ""
        try:
            units = units_of(instance, picks)
            if (units > instance.upper).any():
                instance = widen(instance, units)
            heuristic = evaluate_units(instance, units).objective
        except InfeasibleBatch as error:
            units, heuristic, note = None, math.nan, f"heuristic batch infeasible: {error}"
        plan = solve(instance, self.backend, self.time_limit_s, mip_gap=self.mip_gap, hint=units)
        optimal = plan.objective if plan.batch else math.nan
        gap = relative_gap(optimal, heuristic)
        self.rows.append((k, now, len(instance), heuristic, optimal, plan.bound, gap, plan.status, plan.solve_time_s,
                          len(preempted), note or plan.message))

    def gap_frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.rows, columns=_COLUMNS)

    def run_artifacts(self) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        frame = self.gap_frame()
        ok = frame[frame["status"] == "optimal"]["gap"].dropna().to_numpy() if len(frame) else np.zeros(0)
        summary = {
            "oracle_gap_backend": self.backend,
            "oracle_gap_iterations": int(len(frame)),
            "oracle_gap_solved": int(len(ok)),
            "oracle_gap_mean": float(ok.mean()) if len(ok) else None,
            "oracle_gap_p50": float(np.median(ok)) if len(ok) else None,
            "oracle_gap_p99": float(np.percentile(ok, 99)) if len(ok) else None,
            "oracle_gap_zero_share": float((ok <= 1e-9).mean()) if len(ok) else None,
            "oracle_gap_status_counts": frame["status"].value_counts().to_dict() if len(frame) else {},
        }
        inner = getattr(self.inner, "run_artifacts", None)
        tables = {"oracle_gap.parquet": frame}
        if inner is not None:
            more, extra = inner()
            tables.update(more)
            summary = {**extra, **summary}
        return tables, summary
