"""The Oracle as a scheduler: every iteration runs the goodput-optimal batch of the per-iteration MILP.

``OracleScheduler`` meets the same ``Scheduler`` protocol as the heuristics, so it runs in the simulator and on
the live runtime unchanged. It knows what no online policy does (algorithms.md section 6): every request's true
output length ``o_r``; it does not know future arrivals. Each step it freezes the engine state into an
``OracleInstance`` (``solvers.instance``), solves it (``solvers.solve``, ``oracle.backend`` within
``oracle.time_limit_s``) and runs the plan through the fallback's own mechanics (``BaseScheduler.schedule_batch``).

The queues, KV bookkeeping and preemption mechanics are those of a **fallback** heuristic (``accelgen`` by
default; any policy that chunks prompts). When the solve ends without a usable plan (time limit without an
incumbent, infeasible, solver missing or crashed, an empty plan) or the plan cannot run (its blocks are gone),
the fallback schedules that step itself; every step's decision is recorded in ``decisions`` (``oracle.parquet``
in the run directory, and ``oracle_*`` keys in ``summary.json``), so a run never stalls and never hides a
fallback.

With ``kv_mode: footprint`` (the default here) the Oracle admits a request only while every running request's
final footprint ``blocks(p + o)`` fits the cache, so its own steps never preempt. Runs are deterministic unless a
solve hits ``time_limit_s`` (recorded as status ``time_limit``); ``time_limit_s: null`` removes the limit.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request
from solvers.instance import Latency, OracleInstance, OracleParams, SLOTracker, instance_from_scheduler
from solvers.solve import DEFAULT_MIP_GAP, check_backend, solve


class OutputLengthMean:
    """``η = 1 / mean o_r`` over the requests seen so far (the Oracle knows true lengths; no workload coupling)."""

    __slots__ = ("total", "count", "prior")

    def __init__(self, prior: float = 256.0) -> None:
        self.total, self.count, self.prior = 0.0, 0, prior

    def observe(self, request: Request) -> None:
        self.total += request.max_tokens
        self.count += 1

    @property
    def eta(self) -> float:
        return 1.0 / (self.total / self.count if self.count else self.prior)


def oracle_params(*, kv_mode: str, bound_prefill_iterations: bool, c_done: float = 0.5, eta: float | None = None,
                  eps: float = 1e-4, urgency_theta: float = 0.0, margin: float = 0.0, chunk_cap: int | None = None,
                  max_tokens: int | None = None, max_candidates: int = 256) -> OracleParams:
    return OracleParams(c_done=c_done, eta=eta, eps=eps, urgency_theta=urgency_theta, margin=margin,
                        chunk_cap=chunk_cap, max_tokens=max_tokens, max_candidates=max_candidates, kv_mode=kv_mode,
                        bound_prefill_iterations=bound_prefill_iterations)


class ObservedScheduler:
    """A wrapper around the ``BaseScheduler`` that holds the queues, keeping what the Oracle needs beyond them.

    It forwards the ``Scheduler`` protocol to ``inner``, tracks which requests have already lost their SLO
    (``SLOTracker``) and the mean output length (``η``), and freezes ``inner``'s state into an instance. Any other
    attribute (waiting, running, requests, block_manager, max_num_seqs, ...) is ``inner``'s. Shared by
    ``OracleScheduler`` (``inner``: its fallback) and gap accounting (``inner``: the heuristic measured).
    """

    def __init__(self, inner: BaseScheduler, *, cost_model, params: OracleParams) -> None:
        self.inner = inner
        self.latency = Latency.of(cost_model)
        self.params = params
        self.tracker = SLOTracker(bound_prefill_iterations=params.bound_prefill_iterations)
        self.lengths = OutputLengthMean()

    def add_request(self, request: Request) -> None:
        self.inner.add_request(request)
        if not request.is_finished:
            self.lengths.observe(request)

    def has_unfinished_requests(self) -> bool:
        return self.inner.has_unfinished_requests()

    def update_from_output(self, output: SchedulerOutput, result: StepResult, now: float) -> list[Request]:
        finished = self.inner.update_from_output(output, result, now)
        self.tracker.observe(output, result.step_time, self.inner.requests, finished)
        return finished

    def instance(self, now: float, params: OracleParams | None = None) -> OracleInstance:
        """``inner``'s state at ``now`` as an ``OracleInstance``."""
        return instance_from_scheduler(self.inner, now, latency=self.latency, params=params or self.params,
                                       dead=self.tracker.dead, eta=self.lengths.eta)

    def __getattr__(self, key: str):
        if key == "inner":  # not set yet (during __init__ or unpickling)
            raise AttributeError(key)
        return getattr(self.inner, key)


class OracleScheduler(ObservedScheduler):
    """The per-iteration goodput-optimal scheduler, with a recorded fallback (module docstring)."""

    def __init__(
        self,
        *,
        fallback: Callable[..., BaseScheduler] | BaseScheduler,
        block_manager,
        cost_model,
        slo_classes=None,
        max_model_len: int = 4096,
        max_num_seqs: int = 256,
        backend: str = "decomposed",
        time_limit_s: float | None = 0.05,
        mip_gap: float = DEFAULT_MIP_GAP,
        kv_mode: str = "footprint",
        bound_prefill_iterations: bool = True,
        kv_transfer=None,
        name: str = "oracle",
        **objective: Any,
    ) -> None:
        check_backend(backend)
        if time_limit_s is not None and not time_limit_s > 0:
            raise ConfigError(f"scheduler.time_limit_s must be > 0 or null, got {time_limit_s!r}")
        if not 0.0 <= mip_gap < 1.0:
            raise ConfigError(f"scheduler.mip_gap must be in [0, 1), got {mip_gap!r}")
        if cost_model is None:
            raise ConfigError("scheduler=oracle needs a latency predictor (cost_model)")
        if not isinstance(fallback, BaseScheduler):
            fallback = fallback(block_manager=block_manager, cost_model=cost_model, slo_classes=slo_classes,
                                max_model_len=max_model_len, max_num_seqs=max_num_seqs, kv_transfer=kv_transfer)
        if not isinstance(fallback, BaseScheduler) or not fallback.chunks_prompts:
            raise ConfigError("scheduler.fallback must be a policy that chunks prompts (accelgen, sarathi, or vllm with "
                              f"chunked_prefill); got {type(fallback).__name__}")
        super().__init__(fallback, cost_model=cost_model,
                         params=oracle_params(kv_mode=kv_mode, bound_prefill_iterations=bound_prefill_iterations,
                                              **objective))
        self.name = name
        self.backend, self.time_limit_s, self.mip_gap = backend, time_limit_s, mip_gap
        self.decisions: list[tuple] = []
        self._iteration = 0

    @property
    def fallback(self) -> BaseScheduler:
        """The heuristic that holds the queues and schedules any step without a usable plan."""
        return self.inner

    def schedule(self, now: float) -> SchedulerOutput:
        fb = self.inner
        t0 = time.perf_counter()
        instance = self.instance(now)
        plan = solve(instance, self.backend, self.time_limit_s, mip_gap=self.mip_gap)
        reason = "" if plan.usable else (plan.status if plan.status != "optimal" else "empty plan")
        output = None
        if plan.usable:
            output = fb.schedule_batch(now, plan.batch)
            ran = output.num_scheduled_tokens
            if not ran:
                reason = "plan could not run"
            elif ran != plan.batch:
                reason = "plan partly ran"  # recorded; the step still ran what fitted
        if output is None or not output.num_scheduled_tokens:
            fell_back = True
            output = fb.schedule(now)
        else:
            fell_back = False
        self.decisions.append((self._iteration, now, len(instance), plan.status, plan.objective, plan.bound,
                               plan.solve_time_s, time.perf_counter() - t0, fell_back, reason,
                               plan.stats.get("exact_solves", 0)))
        self._iteration += 1
        return output

    # Delegated views (the engine, the CLI and tests read these) ------------------------------------------------------
    @property
    def token_budget(self) -> int | None:
        return self.params.max_tokens

    # Run artifacts -------------------------------------------------------------------------------------------------
    def decisions_frame(self) -> pd.DataFrame:
        columns = ["iteration", "time", "num_candidates", "status", "objective", "bound", "solve_time_s",
                   "decision_time_s", "fallback", "reason", "exact_solves"]
        return pd.DataFrame.from_records(self.decisions, columns=columns)

    def run_artifacts(self) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        """Tables to write beside the run (``oracle.parquet``) and keys to merge into ``summary.json``."""
        frame = self.decisions_frame()
        n = len(frame)
        solve_t = frame["solve_time_s"].to_numpy() if n else np.zeros(0)
        summary = {
            "oracle_backend": self.backend,
            "oracle_iterations": n,
            "oracle_fallbacks": int(frame["fallback"].sum()) if n else 0,
            "oracle_fallback_rate": float(frame["fallback"].mean()) if n else 0.0,
            "oracle_status_counts": frame["status"].value_counts().to_dict() if n else {},
            "oracle_solve_time_p50_s": float(np.median(solve_t)) if n else None,
            "oracle_solve_time_p99_s": float(np.percentile(solve_t, 99)) if n else None,
        }
        return {"oracle.parquet": frame}, summary
