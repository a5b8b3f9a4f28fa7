"""Every Oracle backend (solvers.solve.BACKENDS) against hand-solved optima, a brute-force reference and the heuristics.

* hand-solved instances (tests/solvers/test_formulation.py): every backend reaches the optimum worked out by hand;
* random small instances (hypothesis): every backend's objective is the brute-force optimum over every batch that
  satisfies (1)-(5), within the declared ``mip_gap``; its batch is feasible and re-scores to its objective;
* targeted instances, one per feature (dead items, a gap about to be lost, completion bonuses, the knee, the
  footprint constraint, tight KV, tight ``max_num_seqs``, the margin, the token and chunk caps): the feature
  changes the brute-force optimum, and every backend (PuLP included) still finds it; a limit a hair below a batch
  time still binds; running footprints above the cache stop admissions only;
* real simulator states: no heuristic's batch scores above the Oracle's optimum (``evaluate(B^H) <= J*``), and
  every batch a heuristic executes is a feasible point (given the blocks and slots its own preemptions freed);
* ``solve`` reports failures as statuses (empty, infeasible, solver missing, error, time limit), never raises.

Tolerances. A backend stops within ``DEFAULT_MIP_GAP`` (relative) of its bound, so its objective may sit below the
brute-force optimum by ``2·mip_gap·|J*|`` (plus 1e-7 absolute for floating point); it may never sit above it.
CP-SAT works in integer picoseconds and rounds every time coefficient up and every limit down, so a batch
within a few picoseconds of a member's cap or a skipped decode's limit counts as a violation there: its objective
is compared with the brute force in which a batch within 1 ns of a limit breaks it. The decomposition compares
times with a 1e-15 s slack where ``evaluate`` allows ``TIME_TOL = 1e-12`` s: it is compared with the brute force
in which any batch above a limit breaks it (``CONSERVATIVE``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from runtime.cli import build
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import ConfigError
from runtime.core.outputs import StepResult
from runtime.core.request import Request, RequestStatus
from solvers.formulation import InfeasibleBatch, check_feasible, evaluate, units_of
from solvers.instance import Latency, OracleParams, SLOTracker, build_instance, instance_from_scheduler
from solvers.solve import BACKENDS, DEFAULT_MIP_GAP, solve
from tests.conftest import compose_config, create_block_manager, create_cost_model, create_scheduler
from tests.solvers.test_formulation import (
    HAND_BATCH, HAND_OPTIMUM, KNEE_BATCH, KNEE_OPTIMUM, NOW, build_from_spec, decode_request, hand_instance,
    knee_instance, prefill_request, reference, specs,
)

ALL = list(BACKENDS)
IN_PROCESS = [b for b in ALL if b != "pulp_cbc"]  # pulp_cbc spawns a CBC process per solve: fewer examples
# Backends that compare times more strictly than ``evaluate`` (T <= limit + TIME_TOL) and the comparison they are
# held to: CP-SAT rounds limits down to whole picoseconds (a batch within 1 ns of a limit may count as breaking it);
# the decomposition tests T <= θ + 1e-15 (a batch up to TIME_TOL = 1e-12 s above a limit may count as breaking it).
CONSERVATIVE = {"cpsat": -1e-9, "decomposed": 0.0, "decomposed_cbc": 0.0}


def check_plan_against_reference(inst, plan, ref):
    """``plan`` (solved without a time limit) is the brute-force optimum ``ref`` within the tolerances above."""
    if ref.units is None:
        assert plan.status == "infeasible", (plan.status, plan.message)
        assert not plan.usable and not plan.batch
        return
    assert plan.status == "optimal", (plan.status, plan.message)
    assert plan.usable
    units = units_of(inst, plan.batch)
    check_feasible(inst, units)
    assert all(c > 0 for c in plan.batch.values())
    ev = evaluate(inst, plan.batch)
    assert plan.objective == pytest.approx(ev.objective, abs=1e-12)
    assert plan.time_s == pytest.approx(ev.time_s, abs=1e-12)
    assert plan.bound >= plan.objective - 1e-9
    assert plan.objective <= ref.objective + 1e-9, "above the brute-force optimum"
    floor = ref.objective
    if plan.backend in CONSERVATIVE:
        floor = reference(inst, limit_tol=CONSERVATIVE[plan.backend]).objective
    assert plan.objective >= floor - 2 * DEFAULT_MIP_GAP * max(abs(ref.objective), 1e-9) - 1e-7, (
        f"{plan.backend}: {plan.objective!r} < optimum {ref.objective!r}; batch {plan.batch}, "
        f"optimal {dict(zip(inst.req_ids, ref.units.tolist()))}")


# 1. Hand-solved instances ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("make, optimum, batch", [(hand_instance, HAND_OPTIMUM, HAND_BATCH),
                                                  (knee_instance, KNEE_OPTIMUM, KNEE_BATCH)], ids=["hand", "knee"])
def test_every_backend_reaches_the_hand_optimum(backend, make, optimum, batch):
    inst = make()
    plan = solve(inst, backend, time_limit_s=None)
    assert plan.status == "optimal" and plan.usable and plan.backend == backend
    assert plan.batch == batch
    assert plan.objective == pytest.approx(optimum, abs=1e-12)
    assert evaluate(inst, plan.batch).objective == pytest.approx(optimum, abs=1e-12)
    assert plan.gap <= DEFAULT_MIP_GAP


# 2. Brute force ----------------------------------------------------------------------------------------------------
@settings(max_examples=100)
@given(spec=specs())
def test_in_process_backends_match_the_brute_force_optimum(spec):
    inst = build_from_spec(spec)
    ref = reference(inst)
    for backend in IN_PROCESS:
        check_plan_against_reference(inst, solve(inst, backend, time_limit_s=None), ref)


@settings(max_examples=10)
@given(spec=specs())
def test_pulp_matches_the_brute_force_optimum(spec):
    inst = build_from_spec(spec)
    check_plan_against_reference(inst, solve(inst, "pulp_cbc", time_limit_s=None), reference(inst))


def dec(p, o, g, left, tbt=None, dead=False):
    return dict(kind="decode", p=p, o=o, g=g, q=0, left=left, tbt=tbt or max(left, 0.0) + 0.01, ttft=1.0, dead=dead)


def new(p, o, tbt, left=1.0, dead=False):
    return dict(kind="new", p=p, o=o, g=0, q=0, left=left, tbt=tbt, ttft=left + 1.0, dead=dead)


def spec_of(items, *, latency=(1e-3, 1e-3, 0.0, 0.0, 0.0, 0.0), block_size=16, free=64, watermark=0.0, slots=8,
            **params):
    base = dict(c_done=0.5, eta=0.0, urgency_theta=0.0, margin=0.0, chunk_cap=None, max_tokens=None,
                kv_mode="physical", bound_prefill_iterations=True)
    return dict(items=items, latency=latency, params={**base, **params}, block_size=block_size, free=free,
                watermark=watermark, slots=slots)


def respec(spec, **changes):
    """A copy of ``spec`` with top-level keys, ``params`` keys or ``items`` replaced."""
    spec = copy.deepcopy(spec)
    for key, value in changes.items():
        if key in spec:
            spec[key] = value
        else:
            spec["params"][key] = value
    return spec


_PARTIAL = dict(kind="partial", p=30, o=4, g=0, q=10, left=0.5, tbt=0.05, ttft=1.0, dead=False)
_PREEMPTED = dict(kind="preempted", p=12, o=6, g=2, q=0, left=0.05, tbt=0.05, ttft=1.0, dead=False)
# (name, spec, the same instance without the feature): each feature must move the brute-force optimum.
TARGETED = [
    ("dead_and_alive",
     spec_of([dec(20, 8, 3, 0.05), dec(20, 8, 3, 0.5, dead=True), dec(20, 8, 3, -0.005), new(30, 4, 0.04),
              new(20, 4, 0.04, dead=True)]),
     lambda s: build_from_spec(respec(s, items=[{**it, "dead": False, "left": abs(it["left"])} for it in s["items"]]))),
    ("gap_nearly_lost",  # d0 is due in 8 ms; T_floor = 3 ms: skipping it is allowed only while T <= 5 ms
     spec_of([dec(20, 8, 3, 0.008), dec(20, 8, 3, 1.0), new(40, 40, 1.0), _PARTIAL]),
     lambda s: dataclasses.replace(build_from_spec(s), lim=np.full(4, math.inf))),
    ("completion_bonus",  # one new slot: x finishes (bonus 0.55) but y is worth more per token
     spec_of([dec(20, 4, 3, 1.0), new(30, 1, 1.0), new(20, 20, 1.0), _PREEMPTED], eta=0.1, slots=1),
     lambda s: dataclasses.replace(build_from_spec(s), bonus=np.zeros(4))),
    ("knee",  # T >= 31 ms under the knee: the 25 ms cap of the bonus prompt can never be met
     spec_of([new(20, 1, 0.025), new(40, 10, 0.2), dec(20, 8, 3, 1.0)], latency=(1e-3, 1e-3, 0.0, 0.0, 0.0, 30.0)),
     lambda s: build_from_spec(respec(s, latency=(1e-3, 1e-3, 0.0, 0.0, 0.0, 0.0)))),
    ("seq_knee",  # T = 1 ms + 1 ms/token + 4 ms·min(|B|, 1): 2 decodes leave 23 tokens of the 30 ms cap, not 17
     spec_of([dec(20, 8, 3, 1.0), dec(20, 8, 3, 1.0), new(40, 4, 0.03)],
             latency=(1e-3, 1e-3, 0.0, 0.0, 0.0, 0.0, 4e-3, 1)),
     lambda s: build_from_spec(respec(s, latency=(1e-3, 1e-3, 0.0, 0.0, 4e-3, 0.0)))),
    ("footprint",  # blocks(p + o): 12 for x (worth 0.417), 2 for y (0.4); 4 left after the running decode's 12
     spec_of([dec(8, 40, 1, 1.0), new(8, 40, 1.0), new(4, 2, 1.0)], block_size=4, free=14, slots=1, eta=0.1,
             kv_mode="footprint"),
     lambda s: build_from_spec(respec(s, kv_mode="physical"))),
    ("kv_tight",  # 3 free blocks of 4 tokens: the decode crosses a block boundary (1), x needs 5, y 2
     spec_of([dec(8, 6, 1, 1.0), new(20, 2, 1.0), new(8, 8, 1.0)], block_size=4, free=3, watermark=0.0),
     lambda s: dataclasses.replace(build_from_spec(s), free_blocks=100, free_blocks_new=100)),
    ("kv_watermark",  # 7 blocks, 4 free, 2 of them the watermark: x (3 blocks, worth 0.56) gives way to y (2, 0.48)
     spec_of([dec(8, 6, 2, 1.0), new(12, 20, 1.0), new(8, 2, 1.0)], block_size=4, free=4, watermark=0.3, eta=0.1),
     lambda s: (lambda i: dataclasses.replace(i, free_blocks_new=i.free_blocks))(build_from_spec(s))),
    ("slots_tight",
     spec_of([dec(20, 8, 3, 1.0), new(10, 2, 1.0), new(12, 2, 1.0), new(14, 2, 1.0)], slots=1),
     lambda s: dataclasses.replace(build_from_spec(s), new_slots=10)),
    ("margin",  # (1 - 0.3)·30 ms = 21 ms: 20 tokens instead of 29
     spec_of([new(40, 4, 0.03), dec(20, 8, 3, 1.0)], margin=0.3),
     lambda s: build_from_spec(respec(s, margin=0.0))),
    ("max_tokens_and_chunk_cap",
     spec_of([dec(20, 8, 3, 1.0), new(40, 4, 1.0), _PARTIAL], max_tokens=25, chunk_cap=16),
     lambda s: build_from_spec(respec(s, max_tokens=None, chunk_cap=None))),
]


@pytest.mark.parametrize("name, spec, without", TARGETED, ids=[t[0] for t in TARGETED])
def test_every_backend_matches_the_brute_force_on_targeted_features(name, spec, without):
    inst = build_from_spec(spec)
    ref = reference(inst)
    assert ref.units is not None
    plain = reference(without(spec))
    assert plain.objective != pytest.approx(ref.objective, abs=1e-9) or not (plain.units == ref.units).all(), (
        f"{name}: the feature does not change the optimum")
    for backend in ALL:
        check_plan_against_reference(inst, solve(inst, backend, time_limit_s=None), ref)


def _limit_below_a_batch_time(below, member):
    """T = 1 ms + 1 ms per token. ``member``: decode d (0.5/20 per unit) is due in 10 ms − ``below``; new prompt w
    (0.5/80 per token, 1 s cap). d must join (skipping breaks (7)) with N <= 8: J* = 0.025 + 7·0.00625 = 0.06875
    with {d: 1, w: 7}; {d: 1, w: 8} takes 10 ms and loses d (−0.925).
    Otherwise d needs a KV block and none is free, so it cannot join; its limit as a non-member is
    11 ms − ``below`` − T_floor (2 ms): J* = 7·0.00625 = 0.04375 with {w: 7}, and {w: 8} loses d (−0.95)."""
    bm = create_block_manager(num_blocks=64 if member else 4, block_size=16, watermark=0.0)
    if member:
        d = decode_request("d", prompt=10, out=10, generated=5, left=0.01 - below, tbt=0.05)
        w = prefill_request("w", prompt=40, out=40, left=1.0, ttft=2.0, tbt=1.0)
        prefilling, waiting = [], [w]
    else:
        d = decode_request("d", prompt=16, out=10, generated=1, left=0.011 - below, tbt=0.05)
        w = prefill_request("w", prompt=40, out=40, left=1.0, ttft=2.0, tbt=1.0, computed=1,
                            status=RequestStatus.RUNNING)
        assert bm.allocate_slots("w", w.num_tokens)
        prefilling, waiting = [w], []
    assert bm.allocate_slots("d", d.num_computed_tokens)
    return build_instance(now=NOW, decoding=[d], prefilling=prefilling, waiting=waiting, block_manager=bm,
                          latency=Latency(1e-3, 1e-3, 0.0, 0.0, 0.0), max_num_seqs=8, params=OracleParams(eta=0.0))


# The whole big-M models (scip, cbc, pulp_cbc) accept rows violated within their ~1e-6 feasibility tolerance, so a
# limit a few nanoseconds below a batch's time is below their resolution; the exact backends must still honour it.
@pytest.mark.parametrize("backend", ["decomposed", "decomposed_cbc", "cpsat"])
@pytest.mark.parametrize("below", [1e-10, 1e-8])
@pytest.mark.parametrize("member", [True, False], ids=["cap", "lim"])
def test_a_limit_just_below_a_batch_time_still_binds(backend, below, member):
    """A limit 0.1 ns or 10 ns below the time of a batch one token larger than the optimum: the backend must not
    take that batch (``evaluate`` charges it the decode's value)."""
    inst = _limit_below_a_batch_time(below, member)
    ref = reference(inst)
    optimum, batch = (0.06875, {"d": 1, "w": 7}) if member else (0.04375, {"w": 7})
    assert ref.objective == pytest.approx(optimum, abs=1e-12)
    plan = solve(inst, backend, time_limit_s=None)
    assert plan.batch == batch, f"{backend}: {plan.batch} scores {plan.objective:.6f}, optimum {optimum}"
    check_plan_against_reference(inst, plan, ref)


def test_running_footprints_above_the_cache_stop_admission_but_not_decodes():
    """``kv_mode: footprint`` with the running decode's blocks(p + o) = 7 above the 4-block cache (the fallback
    admitted past it). No new request may join, the decode still may: every backend returns {d: 1}, a batch
    ``check_feasible`` accepts (with a negative footprint left, ``check_feasible`` and the MILP backends rejected
    every batch while the decomposition returned one)."""
    bm = create_block_manager(num_blocks=4, block_size=16, watermark=0.0)
    d = decode_request("d", prompt=8, out=100, generated=1, left=1.0, tbt=1.0)
    assert bm.allocate_slots("d", d.num_computed_tokens)
    w = prefill_request("w", prompt=8, out=2, left=1.0, tbt=1.0)
    inst = build_instance(now=NOW, decoding=[d], prefilling=[], waiting=[w], block_manager=bm,
                          latency=Latency(1e-3, 1e-3, 0.0, 0.0, 0.0), max_num_seqs=8,
                          params=OracleParams(kv_mode="footprint"))
    assert inst.footprint_left is not None and inst.footprint_left <= 0
    ref = reference(inst)
    assert dict(zip(inst.req_ids, ref.units.tolist())) == {"d": 1, "w": 0}
    for backend in ALL:
        plan = solve(inst, backend, time_limit_s=None)
        assert plan.batch == {"d": 1}, (backend, plan.status, plan.message)
        check_plan_against_reference(inst, plan, ref)


# 3. Heuristic batches never beat the optimum -------------------------------------------------------------------------
SIM = ["workload.num_requests=150", "workload.arrival.rate=6", "kv.num_blocks=400"]
SIM_STEPS = 700
CHECK_EVERY = 40
# Gap accounting's instance: physical constraints only, the heuristic's picks kept whatever their slack.
GAP_PARAMS = OracleParams(max_candidates=16, chunk_cap=None)


def simulate(name, check=frozenset(), on_check=None):
    """Run ``name`` for ``SIM_STEPS`` steps; at the steps in ``check`` call ``on_check(step, now, state, dead, out)``
    with a deep copy of the scheduler as it was before ``schedule(now)``. Returns {step: preempted ids}."""
    parts = build(compose_config([f"scheduler={name}", *SIM]))
    s = parts["scheduler"]
    schedule, update = s.schedule, s.update_from_output
    tracker = SLOTracker()
    preempted, step = {}, 0

    def wrapped_schedule(now):
        nonlocal step
        step += 1
        if step not in check:
            out = schedule(now)
        else:
            state, dead = copy.deepcopy(s), frozenset(tracker.dead)
            out = schedule(now)
            on_check(step, now, state, dead, out)
        if out.preempted_req_ids:
            preempted[step] = list(out.preempted_req_ids)
        return out

    def wrapped_update(output, result, now):
        finished = update(output, result, now)
        tracker.observe(output, result.step_time, s.requests, finished)
        return finished

    s.schedule, s.update_from_output = wrapped_schedule, wrapped_update
    Engine(scheduler=s, executor=parts["executor"], workload=parts["workload"], clock=VirtualClock(),
           max_steps=SIM_STEPS).run()
    return preempted


@pytest.mark.parametrize("name", ["accelgen", "sarathi", "vllm", "orca"])
def test_no_heuristic_batch_scores_above_the_optimum(name):
    first = simulate(name)
    check = {k for k in range(CHECK_EVERY, SIM_STEPS + 1, CHECK_EVERY)} | set(sorted(first)[:3])
    seen = []

    def on_check(step, now, state, dead, out):
        # The copy is faithful: the same policy on it picks the same batch.
        twin = copy.deepcopy(state)
        assert type(twin).schedule(twin, now).num_scheduled_tokens == out.num_scheduled_tokens
        assert out.preempted_req_ids == first.get(step, [])
        picks = dict(out.num_scheduled_tokens)
        freed = sum(state.block_manager.num_blocks_of(r) for r in out.preempted_req_ids)
        eta = 1.0 / np.mean([r.max_tokens for r in state.requests.values()])
        inst = instance_from_scheduler(state, now, latency=Latency.of(state.cost_model), params=GAP_PARAMS, dead=dead,
                                       eta=eta, keep=set(picks), extra_free_blocks=freed,
                                       extra_slots=len(out.preempted_req_ids), unit_floor=picks)
        heuristic = evaluate(inst, picks)  # raises InfeasibleBatch if the batch is not a feasible point
        plan = solve(inst, "decomposed", time_limit_s=None)
        assert plan.status == "optimal", plan.message
        assert heuristic.objective <= plan.objective + DEFAULT_MIP_GAP * max(abs(plan.objective), 1e-9) + 1e-9, (
            step, picks, plan.batch)
        pruned = len(state.waiting) > GAP_PARAMS.max_candidates  # the picks survived pruning (units_of would raise)
        seen.append((step, pruned, heuristic.objective < plan.objective - 1e-9))

    simulate(name, check, on_check)
    assert len(seen) == len(check) >= SIM_STEPS // CHECK_EVERY
    assert any(pruned for _, pruned, _ in seen)
    assert any(below for *_, below in seen)  # the inequality is not vacuous


def test_a_preempting_step_is_a_feasible_point_only_with_the_blocks_it_freed():
    """Five blocks of 16 tokens: a, b and c prefill (1 + 2 + 2 blocks); a's 17th token needs a block, so Sarathi
    preempts the latest arrival c. The pre-step instance has no free block for a; with c's two it does."""
    bm = create_block_manager(num_blocks=5, block_size=16, watermark=0.0)
    s = create_scheduler("sarathi", block_manager=bm, cost_model=create_cost_model(), token_budget=512)
    for k, prompt in enumerate((16, 20, 20)):
        s.add_request(Request("abc"[k], arrival_time=0.001 * k, num_prompt_tokens=prompt, max_tokens=8,
                              ttft_slo_s=1.0, tbt_slo_s=0.5))
    out = s.schedule(0.0)
    s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=0.01), 0.01)
    state = copy.deepcopy(s)
    out = s.schedule(0.01)
    assert out.preempted_req_ids == ["c"] and out.num_scheduled_tokens == {"a": 1, "b": 1}
    latency = Latency.of(create_cost_model())
    kwargs = dict(latency=latency, params=OracleParams(), keep=set(out.num_scheduled_tokens))
    bare = instance_from_scheduler(state, 0.01, **kwargs)
    assert bare.free_blocks == 0
    with pytest.raises(InfeasibleBatch, match=r"^\(4\)"):
        evaluate(bare, out.num_scheduled_tokens)
    inst = instance_from_scheduler(state, 0.01, extra_free_blocks=2, extra_slots=1, **kwargs)
    assert (inst.free_blocks, inst.new_slots) == (2, bare.new_slots + 1)
    heuristic = evaluate(inst, out.num_scheduled_tokens)
    plan = solve(inst, "decomposed", time_limit_s=None)
    assert plan.status == "optimal" and heuristic.objective <= plan.objective + 1e-9


# 4. Failure statuses -----------------------------------------------------------------------------------------------
def empty_instance():
    return build_instance(now=NOW, decoding=[], prefilling=[], waiting=[], block_manager=create_block_manager(),
                          latency=Latency(1e-3, 1e-4, 0.0, 0.0, 0.0), max_num_seqs=8, params=OracleParams())


def waiting_only_instance(*, num_blocks=4, max_num_seqs=8):
    """Three 20-token prompts (5 blocks of 4 each) and nothing running."""
    waiting = [prefill_request(f"w{k}", prompt=20, out=4, left=1.0, tbt=0.5) for k in range(3)]
    return build_instance(now=NOW, decoding=[], prefilling=[], waiting=waiting,
                          block_manager=create_block_manager(num_blocks=num_blocks, block_size=4, watermark=0.0),
                          latency=Latency(1e-3, 1e-4, 0.0, 0.0, 0.0), max_num_seqs=max_num_seqs, params=OracleParams())


@pytest.mark.parametrize("backend", ALL)
def test_no_candidates_is_empty(backend):
    plan = solve(empty_instance(), backend)
    assert plan.status == "empty" and not plan.usable and plan.backend == backend


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kwargs", [dict(num_blocks=4), dict(num_blocks=64, max_num_seqs=0)], ids=["kv", "slots"])
def test_nothing_schedulable_is_infeasible(backend, kwargs):
    inst = waiting_only_instance(**kwargs)
    assert reference(inst).units is None
    plan = solve(inst, backend, time_limit_s=None)
    assert plan.status == "infeasible", plan.message
    assert not plan.usable and not plan.batch and plan.objective == -math.inf


def test_unknown_backend_and_bad_time_limit_are_config_errors():
    with pytest.raises(ConfigError, match="oracle.backend"):
        solve(hand_instance(), "gurobi")
    for limit in (0.0, -1.0):
        with pytest.raises(ConfigError, match="oracle.time_limit_s"):
            solve(hand_instance(), "decomposed", time_limit_s=limit)


@pytest.mark.parametrize("backend", ["decomposed", "decomposed_cbc", "scip", "cbc"])
def test_a_missing_mip_solver_is_reported(backend, monkeypatch):
    from ortools.linear_solver import pywraplp

    inst = hand_instance()
    assert solve(inst, "decomposed", time_limit_s=None).stats["exact_solves"] > 0  # the greedy alone is not enough
    monkeypatch.setattr(pywraplp.Solver, "CreateSolver", staticmethod(lambda solver_id: None))
    plan = solve(inst, backend, time_limit_s=None)
    assert plan.status == "solver_missing" and not plan.usable and not plan.batch
    assert ("SCIP" if backend in ("decomposed", "scip") else "CBC") in plan.message


def test_a_missing_cpsat_or_pulp_is_reported(monkeypatch):
    import pulp

    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)  # `from ortools.sat.python import cp_model` fails
    plan = solve(hand_instance(), "cpsat", time_limit_s=None)
    assert plan.status == "solver_missing" and not plan.usable
    monkeypatch.setattr(pulp.PULP_CBC_CMD, "available", lambda self: False)
    plan = solve(hand_instance(), "pulp_cbc", time_limit_s=None)
    assert plan.status == "solver_missing" and not plan.usable


def test_a_crashing_backend_is_an_error_plan(monkeypatch):
    def crash(inst, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(BACKENDS, "scip", crash)
    plan = solve(hand_instance(), "scip")
    assert plan.status == "error" and not plan.usable
    assert "RuntimeError" in plan.message and "solver exploded" in plan.message


def large_instance(n_decodes=120, n_waiting=300, seed=7):
    """A serving-size state: 120 decodes due in 30-150 ms, 300 waiting prompts of 50-2000 tokens."""
    rng = np.random.default_rng(seed)
    bm = create_block_manager(num_blocks=20_000, block_size=16, watermark=0.01)
    decodes = []
    for k in range(n_decodes):
        r = decode_request(f"d{k}", prompt=int(rng.integers(50, 2000)), out=200, generated=int(rng.integers(1, 199)),
                           left=float(rng.uniform(0.03, 0.15)), tbt=0.2)
        assert bm.allocate_slots(r.req_id, r.num_computed_tokens)
        decodes.append(r)
    waiting = [prefill_request(f"w{k}", prompt=int(rng.integers(50, 2000)), out=int(rng.integers(1, 300)),
                               left=float(rng.uniform(0.0, 2.0)), tbt=float(rng.choice([0.05, 0.1, 0.5])), ttft=2.0)
               for k in range(n_waiting)]
    return build_instance(now=NOW, decoding=decodes, prefilling=[], waiting=waiting, block_manager=bm,
                          latency=Latency.of(create_cost_model()), max_num_seqs=256, params=OracleParams(), eta=0.01)


@pytest.fixture(scope="module")
def big():
    inst = large_instance()
    return inst, solve(inst, "decomposed", time_limit_s=None)


@pytest.mark.parametrize("backend", IN_PROCESS)
def test_a_tiny_time_limit_ends_in_a_usable_incumbent_or_none(backend, big):
    inst, best = big
    plan = solve(inst, backend, time_limit_s=1e-3)
    assert plan.status in ("time_limit", "no_solution", "optimal"), plan.message
    if plan.status == "no_solution":
        assert not plan.usable and not plan.batch
        return
    assert plan.usable
    check_feasible(inst, units_of(inst, plan.batch))
    assert plan.objective == pytest.approx(evaluate(inst, plan.batch).objective, abs=1e-12)
    assert plan.objective <= best.objective + DEFAULT_MIP_GAP * abs(best.objective) + 1e-9
    assert plan.bound >= plan.objective - 1e-9 and 0.0 <= plan.gap


def test_decomposed_out_of_time_returns_its_greedy_incumbent(big):
    """With no time left after the first greedy fill, the decomposition stops with that incumbent (deterministic:
    the unlimited solve needs exact subproblem solves on this instance)."""
    inst, best = big
    assert best.status == "optimal" and best.stats["exact_solves"] > 0
    plan = solve(inst, "decomposed", time_limit_s=1e-9)
    assert plan.status == "time_limit" and plan.usable
    assert plan.stats["exact_solves"] == 0 and plan.stats["greedy_solves"] >= 1
    check_feasible(inst, units_of(inst, plan.batch))
    assert plan.objective == pytest.approx(evaluate(inst, plan.batch).objective, abs=1e-12)
    assert plan.objective <= best.objective + DEFAULT_MIP_GAP * abs(best.objective) + 1e-9
    assert plan.bound >= best.objective - DEFAULT_MIP_GAP * abs(best.objective)  # still a valid upper bound
    assert plan.gap > 0.0
