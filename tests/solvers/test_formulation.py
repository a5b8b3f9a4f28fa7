"""The Oracle's instance and objective (solvers.instance, solvers.formulation, solvers.plan) on hand-solved states.

Also home of the helpers the backend tests share: request builders for a frozen engine state, random instance
specs (hypothesis) built through the real ``build_instance``, and a brute-force reference that enumerates every
batch of a small instance (vectorised over numpy; ``test_brute_force_reference_agrees_with_evaluate`` keeps it
equal to ``formulation.check_feasible`` / ``evaluate_units``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.request import Request, RequestStatus
from solvers.formulation import TIME_TOL, InfeasibleBatch, check_feasible, evaluate, evaluate_units, units_of
from solvers.instance import DECODE, NEW, Latency, OracleParams, build_instance
from solvers.plan import Plan
from tests.conftest import create_block_manager

NOW = 10.0


# Frozen engine states ----------------------------------------------------------------------------------------------
def decode_request(req_id, *, prompt, out, generated, left, tbt):
    """A running decode with ``generated`` outputs whose next-token deadline is ``now + left``."""
    r = Request(req_id, arrival_time=NOW - 2.0, num_prompt_tokens=prompt, max_tokens=out, ttft_slo_s=1.0, tbt_slo_s=tbt)
    r.status = RequestStatus.RUNNING
    r.num_output_tokens = generated
    r.num_computed_tokens = prompt + generated - 1
    r.token_times = [NOW - 1.0] * (generated - 1) + [NOW + left - tbt]
    return r


def prefill_request(req_id, *, prompt, out, left, tbt, ttft=1.0, generated=0, computed=0, status=RequestStatus.WAITING):
    """A prefill-phase request (waiting, partial or recomputing) whose next-token deadline is ``now + left``."""
    arrival = NOW + left - ttft if not generated else NOW - 2.0
    r = Request(req_id, arrival_time=arrival, num_prompt_tokens=prompt, max_tokens=out, ttft_slo_s=ttft, tbt_slo_s=tbt)
    r.status = status
    r.num_output_tokens = generated
    r.num_computed_tokens = computed
    if generated:
        r.token_times = [NOW - 1.0] * (generated - 1) + [NOW + left - tbt]
    return r


def build_from_spec(spec: dict, **extra):
    """An ``OracleInstance`` from a plain-data spec (what the hypothesis strategy draws), through ``build_instance``.

    Running requests hold the KV the engine gives them (a decode its computed tokens, a partial its whole prompt,
    taken at admission); ``free`` blocks are left over, ``slots`` sequences may still be admitted and, with
    ``kv_mode: footprint``, at least ``footprint`` blocks of footprint are left for new requests.
    """
    size = spec["block_size"]
    decoding, prefilling, waiting, held = [], [], [], []
    for k, it in enumerate(spec["items"]):
        kind = it["kind"]
        rid = f"{kind[0]}{k}"
        if kind == "decode":
            r = decode_request(rid, prompt=it["p"], out=it["o"], generated=it["g"], left=it["left"], tbt=it["tbt"])
            decoding.append(r)
            held.append((rid, r.num_computed_tokens))
        elif kind == "partial":
            r = prefill_request(rid, prompt=it["p"], out=it["o"], left=it["left"], tbt=it["tbt"], ttft=it["ttft"],
                                generated=it["g"], computed=it["q"], status=RequestStatus.RUNNING)
            prefilling.append(r)
            held.append((rid, r.num_tokens))
        else:  # new, or preempted (recompute from scratch)
            status = RequestStatus.PREEMPTED if it["g"] else RequestStatus.WAITING
            waiting.append(prefill_request(rid, prompt=it["p"], out=it["o"], left=it["left"], tbt=it["tbt"],
                                           ttft=it["ttft"], generated=it["g"], status=status))
    num_held = sum(-(-tokens // size) for _, tokens in held)
    # Enough blocks that the running requests' footprints leave ``footprint`` blocks (kv_mode: footprint); a filler
    # outside every queue holds what is not ``free``.
    footprints = sum(-(-(r.num_prompt_tokens + r.max_tokens) // size) for r in (*decoding, *prefilling))
    footprints += spec.get("footprint", 0)
    num_blocks = max(1, num_held + spec["free"], math.ceil(footprints / (1.0 - spec["watermark"])) + 1)
    bm = create_block_manager(num_blocks=num_blocks, block_size=size, watermark=spec["watermark"])
    for rid, tokens in held:
        assert bm.allocate_slots(rid, tokens)
    assert bm.allocate_slots("filler", (num_blocks - num_held - spec["free"]) * size)
    dead = {f"{it['kind'][0]}{k}" for k, it in enumerate(spec["items"]) if it["dead"]}
    return build_instance(now=NOW, decoding=decoding, prefilling=prefilling, waiting=waiting, block_manager=bm,
                          latency=Latency(*spec["latency"]), params=OracleParams(**spec["params"]),
                          max_num_seqs=len(decoding) + len(prefilling) + spec["slots"], dead=dead, eta=0.02, **extra)


#: Product of (U_i + 1) over the items of a random spec: the brute force enumerates at most this many batches.
MAX_BATCHES = 120_000
floats = dict(allow_nan=False, allow_infinity=False)


@st.composite
def specs(draw):
    """A random small engine state: 0-3 decodes and 1-3 prefill-phase requests, prompts and chunks <= 40 tokens."""
    num_decodes = draw(st.integers(0, 3))
    num_prefills = draw(st.integers(0 if num_decodes else 1, 3))
    budget = MAX_BATCHES // 2**num_decodes
    dead = st.sampled_from([False, False, False, True])
    items = []
    for _ in range(num_decodes):
        out = draw(st.integers(2, 12))
        left = draw(st.floats(-0.01, 0.15, **floats))  # <~ T_floor: (7) bites; < alone: lost
        items.append(dict(kind="decode", p=draw(st.integers(1, 40)), o=out, g=draw(st.integers(1, out - 1)), q=0,
                          left=left, tbt=max(left, 0.0) + draw(st.floats(1e-3, 0.1, **floats)), ttft=1.0,
                          dead=draw(dead)))
    for _ in range(num_prefills):
        kind = draw(st.sampled_from(["new", "new", "partial", "preempted"]))
        out = draw(st.integers(1, 12))
        m_max = max(1, min(40, budget - 1))
        if kind == "preempted" and (out < 2 or m_max < 2):
            kind = "new"
        if kind == "new":
            g, m = 0, draw(st.integers(1, m_max))
            p, q = m, 0
        elif kind == "preempted":
            g = draw(st.integers(1, min(out - 1, m_max - 1)))
            p = draw(st.integers(1, m_max - g))
            m, q = p + g, 0
        else:
            g = draw(st.integers(0, min(out - 1, 2)))
            m = draw(st.integers(1, m_max))
            q = draw(st.integers(max(1, g + 1 - m), 30))
            p = q + m - g
        budget //= m + 1
        left = draw(st.floats(-0.05, 0.3, **floats))
        items.append(dict(kind=kind, p=p, o=out, g=g, q=q, left=left, tbt=draw(st.floats(5e-3, 0.2, **floats)),
                          ttft=max(left, 0.0) + draw(st.floats(0.01, 0.5, **floats)), dead=draw(dead)))
    latency = (draw(st.sampled_from([0.0, 1e-3, 5e-3])), draw(st.floats(5e-5, 1e-3, **floats)),
               draw(st.sampled_from([0.0, 1e-6, 2e-5])), draw(st.sampled_from([0.0, 1e-6, 1e-5])),
               draw(st.sampled_from([0.0, 1e-5, 1e-3])), draw(st.sampled_from([0.0, 0.0, 8.0, 30.0])),
               draw(st.sampled_from([0.0, 0.0, 2e-3])), draw(st.integers(1, 3)))  # b5·min(|B|, s_knee)
    params = dict(c_done=draw(st.sampled_from([0.0, 0.5, 0.9])), eta=draw(st.sampled_from([None, 0.0, 0.1])),
                  urgency_theta=draw(st.sampled_from([0.0, 2.0])), margin=draw(st.sampled_from([0.0, 0.05, 0.3])),
                  chunk_cap=draw(st.none() | st.integers(1, 40)), max_tokens=draw(st.none() | st.integers(1, 80)),
                  kv_mode=draw(st.sampled_from(["physical", "footprint"])),
                  bound_prefill_iterations=draw(st.booleans()))
    return dict(items=items, latency=latency, params=params, block_size=draw(st.sampled_from([4, 16])),
                free=draw(st.integers(0, 16)), footprint=draw(st.integers(0, 16)),
                watermark=draw(st.sampled_from([0.0, 0.1, 0.3])), slots=draw(st.integers(0, 3)))


# Brute force -------------------------------------------------------------------------------------------------------
class Reference(NamedTuple):
    objective: float          # max over feasible non-empty batches (-inf: none)
    units: np.ndarray | None  # an optimal batch
    grid: np.ndarray          # every batch, one row each
    feasible: np.ndarray      # (1)-(5) and non-empty
    values: np.ndarray        # J of every row


def all_batches(inst) -> np.ndarray:
    """Every batch of ``inst``: each decode in or out, each chunk 0..U_i (rows of per-item units)."""
    axes = [np.arange(int(u) + 1) for u in inst.upper]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(inst))


def reference(inst, *, limit_tol: float = TIME_TOL) -> Reference:
    """Brute force over ``all_batches``, written from the formulation's docstring.

    ``limit_tol``: a member (skipped decode) keeps its SLO when ``T <= cap + limit_tol`` (``lim + limit_tol``);
    ``TIME_TOL`` is ``evaluate``'s rule, a negative value counts a batch within ``-limit_tol`` of a limit as
    a violation (the CP-SAT backend rounds limits down).
    """
    u = all_batches(inst)
    x = u > 0
    new = x & (inst.kind == NEW)
    ok = x.any(axis=1)
    ok &= x @ inst.need <= inst.free_blocks
    ok &= new @ inst.need <= inst.free_blocks_new
    if inst.footprint_left is not None:
        ok &= new @ inst.footprint <= inst.footprint_left
    ok &= new.sum(axis=1) <= inst.new_slots
    if inst.max_tokens is not None:
        ok &= u.sum(axis=1) <= inst.max_tokens
    lat = inst.latency
    seqs = x.sum(axis=1)
    t = (lat.b0 + lat.b1 * np.maximum(u.sum(axis=1), lat.n_knee) + u @ inst.ta + lat.b4 * seqs
         + lat.b5 * np.minimum(seqs, lat.s_knee))
    t = np.where(x.any(axis=1), t, 0.0)[:, None]
    member_fail = x & inst.alive & (t > inst.cap + limit_tol)
    skip_fail = ~x & inst.alive & (inst.kind == DECODE) & (t > inst.lim + limit_tol)
    values = u @ inst.value + (x & (u == inst.remaining)) @ inst.bonus - (member_fail | skip_fail) @ inst.penalty
    if not ok.any():
        return Reference(-math.inf, None, u, ok, values)
    best = int(np.argmax(np.where(ok, values, -np.inf)))
    return Reference(float(values[best]), u[best], u, ok, values)


# Hand-solved instances ---------------------------------------------------------------------------------------------
def hand_instance():
    """Two decodes and two new prompts; T = 1 ms + 1 ms per token (β2 = β3 = β4 = 0, no knee); η = 0 so V = 1.

    ``u = (1 − C_done)/(p + o) = 0.5/(p + o)`` per unit:

    =====  ===========================  ===========  ==========  =====  ==================
    item   state                        u per unit   bonus       need   cap (member)
    =====  ===========================  ===========  ==========  =====  ==================
    A      decode, p=30 o=10 g=2        0.5/40       -           0      1.0 (deadline)
    B      decode, p=10 o=3 g=2         0.5/13       0.5 (last)  0      1.0
    C      new, p=40 o=10, S^tbt 50 ms  0.5/50       -           3      0.05   -> N <= 49
    D      new, p=12 o=1, S^tbt 15.5ms  0.5/13       0.5 (done)  1      0.0155 -> N <= 14
    =====  ===========================  ===========  ==========  =====  ==================

    Decodes are never at risk (lim = 1 − T_floor = 0.997). Breaking C's or D's cap costs 1, more than any item
    earns, so the batch keeps N <= 14 with D or N <= 49 without it:

    * D in (N <= 14): A + B + all 12 of D (it completes) = 0.0125 + 0.5/13 + 0.5 + 12·0.5/13 + 0.5 = 1.5125  <- J*;
      the runner-up swaps A for one token of C (0.01 < 0.0125): 1.51;
    * D out: A + B + all 40 of C (N = 42, T = 43 ms <= 50 ms): 0.0125 + 0.5/13 + 0.5 + 0.4 = 0.950962;
    * everything (N = 54) breaks C's and D's caps: 1.5125 + 0.4 − 2 = −0.0875.
    """
    bm = create_block_manager(num_blocks=64, block_size=16, watermark=0.0)
    a = decode_request("A", prompt=30, out=10, generated=2, left=1.0, tbt=1.0)
    b = decode_request("B", prompt=10, out=3, generated=2, left=1.0, tbt=1.0)
    for r in (a, b):
        assert bm.allocate_slots(r.req_id, r.num_computed_tokens)
    c = prefill_request("C", prompt=40, out=10, left=10.0, ttft=10.0, tbt=0.05)
    d = prefill_request("D", prompt=12, out=1, left=10.0, ttft=10.0, tbt=0.0155)
    return build_instance(now=NOW, decoding=[a, b], prefilling=[], waiting=[c, d], block_manager=bm,
                          latency=Latency(b0=1e-3, b1=1e-3, b2=0.0, b3=0.0, b4=0.0), max_num_seqs=256,
                          params=OracleParams(eta=0.0))


HAND_BATCH = {"A": 1, "B": 1, "D": 12}
HAND_OPTIMUM = 1.5125


def knee_instance():
    """A decode about to lose its gap, under the GEMM knee: T = 1 ms + 1 ms·max(N, 10).

    E and F decode (p=10 o=10 g=5: 0.5/20 per unit); G is a new 100-token prompt (0.5/200 per token, S^tbt 1 s).
    E's next token is due in 15.5 ms: as a member it needs T <= 15.5 ms (N <= 14); skipped, it needs
    T <= 15.5 − T_floor = 4.5 ms (T_floor = 11 ms, two decodes under the knee), which no batch meets, so (7)
    charges its value 1 whenever E stays out. F's deadline is 1 s away.

    * E in, N <= 14: E + F + 12 tokens of G = 0.025 + 0.025 + 12·0.0025 = 0.08  <- J*;
    * E out: F + all of G = 0.025 + 0.25 − 1 = −0.725; E in with all of G (T = 103 ms): 0.05 + 0.25 − 1 = −0.7.
    """
    bm = create_block_manager(num_blocks=64, block_size=16, watermark=0.0)
    e = decode_request("E", prompt=10, out=10, generated=5, left=0.0155, tbt=0.05)
    f = decode_request("F", prompt=10, out=10, generated=5, left=1.0, tbt=1.0)
    for r in (e, f):
        assert bm.allocate_slots(r.req_id, r.num_computed_tokens)
    g = prefill_request("G", prompt=100, out=100, left=10.0, ttft=10.0, tbt=1.0)
    return build_instance(now=NOW, decoding=[e, f], prefilling=[], waiting=[g], block_manager=bm,
                          latency=Latency(b0=1e-3, b1=1e-3, b2=0.0, b3=0.0, b4=0.0, n_knee=10.0), max_num_seqs=256,
                          params=OracleParams(eta=0.0))


KNEE_BATCH = {"E": 1, "F": 1, "G": 12}
KNEE_OPTIMUM = 0.08


def test_hand_instance_holds_the_numbers_worked_out_by_hand():
    inst = hand_instance()
    assert inst.req_ids == ("A", "B", "C", "D")
    assert list(inst.kind) == [DECODE, DECODE, NEW, NEW]
    assert list(inst.upper) == [1, 1, 40, 12] and list(inst.need) == [0, 0, 3, 1]
    assert inst.value == pytest.approx([0.5 / 40, 0.5 / 13, 0.5 / 50, 0.5 / 13])
    assert list(inst.bonus) == [0.0, 0.5, 0.0, 0.5] and list(inst.penalty) == [1.0] * 4
    assert inst.cap == pytest.approx([1.0, 1.0, 0.05, 0.0155])
    assert inst.lim[:2] == pytest.approx([1.0 - 0.003, 1.0 - 0.003]) and np.isinf(inst.lim[2:]).all()
    assert inst.alive.all() and inst.free_blocks == 61 and inst.new_slots == 254
    knee = knee_instance()
    assert knee.cap[:2] == pytest.approx([0.0155, 1.0]) and knee.lim[:2] == pytest.approx([0.0045, 0.989])


@pytest.mark.parametrize("batch, objective, time_s, violated", [
    (HAND_BATCH, HAND_OPTIMUM, 0.015, ()),
    ({"B": 1, "C": 1, "D": 12}, 1.51, 0.015, ()),
    ({"A": 1, "B": 1, "C": 40}, 0.0125 + 0.5 / 13 + 0.5 + 0.4, 0.043, ()),
    ({"A": 1, "B": 1, "C": 40, "D": 12}, HAND_OPTIMUM + 0.4 - 2.0, 0.055, ("C", "D")),
    ({"A": 1, "B": 1, "D": 12, "C": 1}, 1.5125 + 0.01 - 1.0, 0.016, ("D",)),
    ({"D": 11}, 11 * 0.5 / 13, 0.012, ()),                    # no bonus short of the whole prompt
])
def test_evaluate_scores_hand_batches(batch, objective, time_s, violated):
    ev = evaluate(hand_instance(), batch)
    assert ev.objective == pytest.approx(objective, abs=1e-12)
    assert ev.time_s == pytest.approx(time_s, abs=1e-12)
    assert ev.violated == violated


@pytest.mark.parametrize("batch, objective, violated", [
    (KNEE_BATCH, KNEE_OPTIMUM, ()),
    ({"E": 1, "F": 1}, 0.05, ()),                       # under the knee: T = 11 ms either way
    ({"F": 1, "G": 100}, 0.025 + 0.25 - 1.0, ("E",)),  # (7): skipped and T > 4.5 ms
    ({"E": 1, "F": 1, "G": 100}, 0.05 + 0.25 - 1.0, ("E",)),
    ({"E": 1, "F": 1, "G": 13}, 0.05 + 13 * 0.0025 - 1.0, ("E",)),
])
def test_evaluate_charges_a_skipped_decode_whose_gap_is_lost(batch, objective, violated):
    ev = evaluate(knee_instance(), batch)
    assert ev.objective == pytest.approx(objective, abs=1e-12)
    assert ev.violated == violated


@pytest.mark.parametrize("make, optimum, batch", [(hand_instance, HAND_OPTIMUM, HAND_BATCH),
                                                  (knee_instance, KNEE_OPTIMUM, KNEE_BATCH)])
def test_brute_force_finds_the_hand_optimum(make, optimum, batch):
    inst = make()
    ref = reference(inst)
    assert ref.objective == pytest.approx(optimum, abs=1e-12)
    assert dict(zip(inst.req_ids, ref.units.tolist())) == {r: batch.get(r, 0) for r in inst.req_ids}


@settings(max_examples=30)
@given(spec=specs(), seed=st.integers(0, 2**32 - 1))
def test_brute_force_reference_agrees_with_evaluate(spec, seed):
    """The vectorised reference is ``check_feasible`` + ``evaluate_units`` on every row it is asked about."""
    inst = build_from_spec(spec)
    ref = reference(inst)
    rows = np.random.default_rng(seed).choice(len(ref.grid), size=min(60, len(ref.grid)), replace=False)
    if ref.units is not None:
        rows = np.append(rows, int(np.flatnonzero((ref.grid == ref.units).all(axis=1))[0]))
    for row in rows:
        units = ref.grid[row]
        try:
            check_feasible(inst, units)
            feasible = bool((units > 0).any())
        except InfeasibleBatch:
            feasible = False
        assert feasible == ref.feasible[row], units
        if (units > 0).any():
            assert evaluate_units(inst, units, check=False).objective == pytest.approx(ref.values[row], abs=1e-12)


# Instance construction ---------------------------------------------------------------------------------------------
def test_pruning_keeps_the_least_slack_waiting_requests_and_the_kept_ones():
    bm = create_block_manager(num_blocks=64, block_size=16)
    waiting = [prefill_request(f"w{k}", prompt=16, out=4, left=0.1 * (k + 1), ttft=1.0, tbt=0.1) for k in range(6)]
    lat = Latency(b0=1e-3, b1=1e-4, b2=0.0, b3=0.0, b4=0.0)
    inst = build_instance(now=NOW, decoding=[], prefilling=[], waiting=waiting[::-1], block_manager=bm, latency=lat,
                          max_num_seqs=8, params=OracleParams(max_candidates=2), keep={"w5"})
    assert set(inst.req_ids) == {"w0", "w1", "w5"}


def test_blocks_and_slots_a_heuristic_freed_are_added():
    bm = create_block_manager(num_blocks=20, block_size=16, watermark=0.1)
    d = decode_request("d", prompt=32, out=4, generated=1, left=0.5, tbt=0.5)  # ctx 33 > 2 blocks: needs one
    assert bm.allocate_slots("d", d.num_computed_tokens)
    w = prefill_request("w", prompt=40, out=4, left=1.0, tbt=0.1)
    lat = Latency(b0=1e-3, b1=1e-4, b2=0.0, b3=0.0, b4=0.0)
    kwargs = dict(now=NOW, decoding=[d], prefilling=[], waiting=[w], block_manager=bm, latency=lat, max_num_seqs=1,
                  params=OracleParams())
    base = build_instance(**kwargs)
    more = build_instance(**kwargs, extra_free_blocks=3, extra_slots=1)
    assert list(base.need) == [1, 3]
    assert (base.free_blocks, base.free_blocks_new, base.new_slots) == (18, 16, 0)
    assert (more.free_blocks, more.free_blocks_new, more.new_slots) == (21, 19, 1)


def _uncapped_prompt_beside_a_lost_decode(**extra):
    """``bound_prefill_iterations: false``, so the waiting prompt w (100 tokens, alive) has no cap of its own; the
    decode d is due in 1.5 ms but takes 2 ms even alone, so it is not alive and imposes no limit either."""
    bm = create_block_manager(num_blocks=64, block_size=16, watermark=0.0)
    d = decode_request("d", prompt=10, out=10, generated=5, left=0.0015, tbt=0.05)
    assert bm.allocate_slots("d", d.num_computed_tokens)
    w = prefill_request("w", prompt=100, out=10, left=1.0, ttft=2.0, tbt=0.05)
    return build_instance(now=NOW, decoding=[d], prefilling=[], waiting=[w], block_manager=bm,
                          latency=Latency(1e-3, 1e-3, 0.0, 0.0, 0.0), max_num_seqs=8,
                          params=OracleParams(eta=0.0, chunk_cap=None, bound_prefill_iterations=False), **extra)


def _urgent_prompt(**extra):
    """A 30-token prompt (o = 1, C_done = 0) 50 ms before its TTFT deadline with urgency θ = 2: u·30 ≈ 2.9·V, so
    joining whole and breaking its own 10 ms cap (penalty V) beats the 9 tokens that fit the cap."""
    w = prefill_request("w", prompt=30, out=1, left=0.05, ttft=1.0, tbt=0.01)
    return build_instance(now=NOW, decoding=[], prefilling=[], waiting=[w], block_manager=create_block_manager(),
                          latency=Latency(1e-3, 1e-3, 0.0, 0.0, 0.0), max_num_seqs=8,
                          params=OracleParams(eta=0.0, c_done=0.0, chunk_cap=None, urgency_theta=2.0), **extra)


@pytest.mark.parametrize("make", [_uncapped_prompt_beside_a_lost_decode, _urgent_prompt])
def test_capping_chunks_at_what_fits_a_limit_loses_no_optimum(make):
    """``build_instance`` caps U_i at the largest chunk that alone fits a limit. With β2 = 0 the secant does not
    depend on U_i, so widening U_i to the whole remaining prompt (``unit_floor``) only adds batches: the optimum
    must not move if the cap is without loss."""
    inst = make()
    wide = make(unit_floor={r: int(m) for r, m in zip(inst.req_ids, inst.remaining)})
    assert (wide.upper == wide.remaining).all()
    assert reference(wide).objective <= reference(inst).objective + 1e-12, (
        f"U = {inst.upper.tolist()} loses the optimum {dict(zip(wide.req_ids, reference(wide).units.tolist()))}")


# Infeasible batches ------------------------------------------------------------------------------------------------
def tight_instance(**params):
    """11 blocks of 16 tokens, 2 of them the admission watermark. Running: decode ``d`` (32 tokens in 2 blocks, its
    33rd needs a third) and partial ``p`` (20 of 60 prompt tokens computed, its 4 blocks taken at admission):
    5 blocks free, 3 admissible for new prompts. Waiting: ``w1`` (40 tokens: 3 blocks; footprint blocks(70) = 5)
    and ``w2`` (20 tokens: 2 blocks). Footprint left: 11 − 2 − blocks(36) − blocks(64) = 2. One new slot."""
    bm = create_block_manager(num_blocks=11, block_size=16, watermark=0.2)
    d = decode_request("d", prompt=32, out=4, generated=1, left=0.5, tbt=0.5)
    p = prefill_request("p", prompt=60, out=4, left=1.0, tbt=0.1, computed=20, status=RequestStatus.RUNNING)
    assert bm.allocate_slots("d", d.num_computed_tokens) and bm.allocate_slots("p", p.num_tokens)
    w1 = prefill_request("w1", prompt=40, out=30, left=1.0, tbt=0.1)
    w2 = prefill_request("w2", prompt=20, out=4, left=1.0, tbt=0.1)
    return build_instance(now=NOW, decoding=[d], prefilling=[p], waiting=[w1, w2], block_manager=bm,
                          latency=Latency(b0=1e-3, b1=1e-4, b2=0.0, b3=0.0, b4=0.0), max_num_seqs=3,
                          params=OracleParams(**params))


@pytest.mark.parametrize("params, batch, match", [
    ({}, {"w1": 41}, r"^\(2\) 'w1': 41 units outside \[0, 40\]"),
    ({}, {"p": 41}, r"^\(2\) 'p'"),                     # a partial has 40 tokens left
    ({}, {"d": 2}, r"^\(2\) 'd'"),                      # a decode computes one token
    ({}, {"w1": -1}, r"^\(2\) 'w1'"),
    ({"chunk_cap": 16}, {"w1": 17}, r"^\(2\) 'w1': 17 units outside \[0, 16\]"),
    ({}, {"d": 1, "w1": 40, "w2": 20}, r"^\(4\) needs 6 KV blocks, 5 free"),
    ({}, {"w1": 40, "w2": 20}, r"^\(4\) new requests need 5 blocks, 3 admissible"),
    ({"kv_mode": "footprint"}, {"w1": 40}, r"^\(4f\) footprint 5 > 2"),
    ({}, {"w2": 20, "x": 1}, r"'x' is not a candidate"),
    ({"max_tokens": 30}, {"d": 1, "w2": 20, "p": 10}, r"^\(5\) 31 tokens > max_tokens=30"),
])
def test_evaluate_names_the_broken_constraint(params, batch, match):
    inst = tight_instance(**params)
    assert (inst.free_blocks, inst.free_blocks_new) == (5, 3) and list(inst.need) == [1, 0, 3, 2]
    with pytest.raises(InfeasibleBatch, match=match):
        evaluate(inst, batch)


def test_evaluate_names_the_slot_limit():
    inst = dataclasses.replace(tight_instance(), free_blocks_new=5)
    assert inst.new_slots == 1 and evaluate(inst, {"w2": 20}).objective > 0
    with pytest.raises(InfeasibleBatch, match=r"^\(5\) admits 2 requests, 1 slots left"):
        evaluate(inst, {"w1": 1, "w2": 1})


def test_units_of_maps_a_heuristic_batch_onto_items():
    inst = hand_instance()
    assert units_of(inst, {"D": 7, "A": 1}).tolist() == [1, 0, 0, 7]
    with pytest.raises(InfeasibleBatch, match="'Z' is not a candidate"):
        units_of(inst, {"Z": 1})


# Plan ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective, bound, gap", [
    (1.0, 1.5, 0.5), (2.0, 2.0, 0.0), (2.0, 1.0, 0.0), (-2.0, -1.0, 0.5), (0.0, 1e-12, 1e-3),
    (-math.inf, 1.0, math.inf), (1.0, math.inf, math.inf),
])
def test_plan_gap_is_relative_to_the_objective(objective, bound, gap):
    assert Plan(backend="x", status="optimal", objective=objective, bound=bound).gap == pytest.approx(gap)


@pytest.mark.parametrize("status, batch, usable", [
    ("optimal", {"a": 1}, True), ("time_limit", {"a": 3}, True), ("optimal", {}, False),
    ("no_solution", {}, False), ("infeasible", {}, False), ("empty", {}, False), ("solver_missing", {}, False),
    ("error", {"a": 1}, False),
])
def test_plan_is_usable_only_with_a_batch_from_a_finished_or_timed_out_solve(status, batch, usable):
    assert Plan(backend="x", status=status, batch=batch).usable is usable
    assert Plan(backend="x", status=status).gap == math.inf


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 500)), max_size=3),
       st.lists(st.integers(1, 2000), max_size=20), st.sampled_from([0.0, 3e-4]), st.integers(1, 16),
       st.sampled_from([0.0, 64.0]))
def test_latency_is_the_cost_models_prediction_seq_knee_included(chunks, ctx, b5, s_knee, n_knee):
    """The Oracle's ``Latency`` of a ``LinearCostModel`` charges what the simulator does, ``β5·min(|B|, s_knee)``
    included, and ``max_chunk_alone`` is the largest chunk that fits a limit on its own under it."""
    from runtime.sim.cost_model import LinearCostModel
    from solvers.instance import max_chunk_alone

    cm = LinearCostModel(beta0=2e-3, beta1=5e-5, beta2=3e-8, beta3=1e-6, beta4=1e-4, beta5=b5, s_knee=s_knee,
                         n_knee=n_knee, engine_overhead_s=1e-4)
    lat = Latency.of(cm)
    assert (lat.b5, lat.s_knee) == (b5, s_knee)
    assert lat.exact(chunks, ctx) == pytest.approx(cm.predict_deterministic(chunks, ctx), rel=1e-12, abs=1e-15)
    limit, q = 0.02, chunks[0][1] if chunks else 0
    c = math.floor(max_chunk_alone(lat, q, limit) + 1e-9)
    assert cm.predict_deterministic([(c, q)], []) <= limit * (1 + 1e-12)
    assert cm.predict_deterministic([(c + 1, q)], []) > limit
