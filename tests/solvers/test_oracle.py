"""The Oracle as a scheduler (recorded fallback on every solver failure) and gap accounting in real runs."""
from __future__ import annotations

import pandas as pd
import pytest

from runtime.cli import build, run
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import ConfigError
from runtime.core.request import RequestStatus
from solvers import oracle as oracle_module
from solvers.plan import Plan
from tests.conftest import compose_config, create_block_manager, create_cost_model, create_requests, create_scheduler


def run_oracle(overrides: list[str], monkeypatch=None, fake_solve=None):
    cfg = compose_config(["scheduler=oracle", "workload.num_requests=80", "workload.arrival.rate=5", *overrides])
    parts = build(cfg)
    if fake_solve is not None:
        monkeypatch.setattr(oracle_module, "solve", fake_solve)
    scheduler = parts["scheduler"]
    result = Engine(scheduler=scheduler, executor=parts["executor"], workload=parts["workload"],
                    clock=VirtualClock()).run()
    return scheduler, result


def test_oracle_runs_every_step_from_its_plan_and_finishes_every_request():
    scheduler, result = run_oracle(["oracle.time_limit_s=null"])  # no fallback can come from machine load
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)
    frame = scheduler.decisions_frame()
    assert len(frame) == len(result.iterations)
    assert set(frame["status"]) <= {"optimal", "time_limit"}
    assert not frame["fallback"].any(), frame[frame["fallback"]]
    # kv_mode footprint: the Oracle admits only what can always finish, so its own steps never preempt.
    assert scheduler.fallback.num_preemptions == 0


@pytest.mark.parametrize("status", ["infeasible", "no_solution", "solver_missing", "error", "empty"])
def test_every_solver_failure_ends_in_the_recorded_fallback(monkeypatch, status):
    def failing(instance, backend, time_limit_s, *, mip_gap):
        return Plan(backend=backend, status=status, message="injected")

    scheduler, result = run_oracle([], monkeypatch, failing)
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)
    frame = scheduler.decisions_frame()
    assert frame["fallback"].all()
    assert (frame["reason"] == status).all()
    assert (frame["status"] == status).all()


def test_a_plan_that_cannot_run_falls_back(monkeypatch):
    def stale(instance, backend, time_limit_s, *, mip_gap):
        return Plan(backend=backend, status="optimal", batch={"no-such-request": 3}, objective=1.0, bound=1.0)

    scheduler, result = run_oracle([], monkeypatch, stale)
    frame = scheduler.decisions_frame()
    assert frame["fallback"].all() and (frame["reason"] == "plan could not run").all()
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)


def test_real_solver_missing_falls_back(monkeypatch):
    from ortools.linear_solver import pywraplp

    monkeypatch.setattr(pywraplp.Solver, "CreateSolver", staticmethod(lambda name: None))
    scheduler, result = run_oracle(["oracle.backend=scip"])
    frame = scheduler.decisions_frame()
    assert (frame["status"] == "solver_missing").all() and frame["fallback"].all()
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)


def test_real_time_limit_either_uses_the_incumbent_or_falls_back():
    # One millisecond is too little for the whole big-M model on the busier steps.
    scheduler, result = run_oracle(["oracle.backend=cbc", "oracle.time_limit_s=0.001", "workload.num_requests=40"])
    frame = scheduler.decisions_frame()
    assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)
    assert set(frame["status"]) <= {"optimal", "time_limit", "no_solution", "infeasible"}
    assert (frame.loc[frame["status"].isin(["no_solution", "infeasible"]), "fallback"]).all()
    assert not frame.loc[frame["status"] == "optimal", "fallback"].any()


def test_cli_run_writes_the_decisions_and_summary_keys(tmp_path):
    summary = run(compose_config(["scheduler=oracle", "workload.num_requests=40"]), tmp_path)
    decisions = pd.read_parquet(tmp_path / "oracle.parquet")
    assert len(decisions) == summary["num_iterations"] == summary["oracle_iterations"]
    assert summary["oracle_fallbacks"] == int(decisions["fallback"].sum())
    assert summary["oracle_solve_time_p50_s"] >= 0


def test_fallback_must_chunk_prompts():
    with pytest.raises(ConfigError, match="fallback"):
        create_scheduler("oracle", block_manager=create_block_manager(num_blocks=1024),
                         fallback={"_target_": "heuristics.orca.OrcaScheduler", "_partial_": True})


@pytest.mark.parametrize("scheduler", ["accelgen", "sarathi", "vllm"])
def test_gap_accounting_never_changes_the_heuristic_and_gaps_are_nonnegative(tmp_path, scheduler):
    base = [f"scheduler={scheduler}", "workload.num_requests=120", "workload.arrival.rate=5"]
    plain = run(compose_config(base), tmp_path / "plain")
    summary = run(compose_config([*base, "oracle.gap_accounting=true", "oracle.time_limit_s=null"]), tmp_path / "gap")
    a = pd.read_parquet(tmp_path / "plain" / "requests.parquet")
    b = pd.read_parquet(tmp_path / "gap" / "requests.parquet")
    pd.testing.assert_frame_equal(a, b)
    gaps = pd.read_parquet(tmp_path / "gap" / "oracle_gap.parquet")
    assert len(gaps) == summary["num_iterations"] == plain["num_iterations"]
    assert (gaps["status"] == "optimal").all()
    assert gaps["heuristic_objective"].notna().all(), gaps[gaps["heuristic_objective"].isna()]["note"].head()
    # J(B^H) <= J* up to the relative MIP gap (the heuristic's batch seeds the search, so never below it).
    tol = 2e-3 * gaps["optimal_objective"].abs().clip(lower=1e-9)
    assert (gaps["optimal_objective"] >= gaps["heuristic_objective"] - 1e-12).all()
    assert (gaps["gap"] >= -tol).all()
    assert summary["oracle_gap_solved"] == len(gaps)
    assert 0.0 <= summary["oracle_gap_p50"] <= summary["oracle_gap_p99"]


def test_gap_every_solves_a_subset_of_steps(tmp_path):
    summary = run(compose_config(["scheduler=sarathi", "workload.num_requests=60", "oracle.gap_accounting=true",
                                  "oracle.gap_every=5"]), tmp_path)
    gaps = pd.read_parquet(tmp_path / "oracle_gap.parquet")
    assert list(gaps["iteration"]) == list(range(0, summary["num_iterations"], 5))


def test_schedule_batch_runs_a_given_batch_with_the_policy_mechanics():
    bm = create_block_manager(num_blocks=64, block_size=16)
    sched = create_scheduler("sarathi", block_manager=bm, token_budget=512)
    for r in create_requests(3, num_prompt_tokens=40, max_tokens=4):
        sched.add_request(r)
    out = sched.schedule_batch(0.0, {"r0": 40, "r1": 16, "r9": 5})
    assert out.num_scheduled_tokens == {"r0": 40, "r1": 16}
    assert out.prefill_done_req_ids == ["r0"]
    assert [r.req_id for r in sched.waiting] == ["r2"]
    assert bm.num_blocks_of("r1") == 3  # the whole prompt is allocated at admission, as every heuristic does
    # A chunk larger than what is left is skipped rather than over-computing.
    out = sched.schedule_batch(0.1, {"r1": 100})
    assert out.num_scheduled_tokens == {}


def test_pruning_keeps_requests_that_can_still_meet_their_slo_before_lost_ones():
    from solvers.instance import Latency, OracleParams, build_instance

    lost = create_requests(3, num_prompt_tokens=64, max_tokens=4, ttft_slo_s=0.5)  # arrived at 0, now = 1: lost
    fresh = create_requests(1, num_prompt_tokens=64, max_tokens=4, ttft_slo_s=5.0)
    fresh[0].req_id = "fresh"
    inst = build_instance(now=1.0, decoding=[], prefilling=[], waiting=lost + fresh,
                          block_manager=create_block_manager(num_blocks=64), latency=Latency.of(create_cost_model()),
                          max_num_seqs=8, params=OracleParams(max_candidates=1))
    assert inst.req_ids == ("fresh",) and inst.alive.all()
