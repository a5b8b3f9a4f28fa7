"""CacheOPT's KV components (algorithms.md section 7) on small hand-built states.

Unless a test says otherwise: block_size 16, the oracle predictor with no training split (ô = o, no padding, so
A_r = blocks(p_r + o_r)), token_budget 512 (so P̄ = 512 in the embedding rule), the reserve at its default 8 blocks,
embed_buffer_tokens 8, embed_margin_iters 4, prealloc_iters 2, eps_slo = eps_rem = 0.1. Cost and transfer models
and SLO classes (tight: TBT 50 ms, loose: TBT 500 ms) are tests/conftest.py's.

A "hand-built" running decode is admitted through the ledger with a chosen allocation (``place_decode``): its
KV holds ``computed = prompt + generated − 1`` tokens, so its room is ``own_blocks · 16 − computed``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from heuristics.padding import confidence, hoeffding_padding
from runtime.core.base_scheduler import swap_crossover_tokens
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.request import Request, RequestStatus
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import (create_block_manager, create_cost_model, create_kv_transfer, create_scheduler,
                            create_slo_classes)

CLASSES = create_slo_classes()
BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def make(num_blocks=256, *, frame=None, token_budget=512, num_swap_blocks=0, max_model_len=4096, **cacheopt):
    bm = create_block_manager(num_blocks=num_blocks, block_size=BS, num_swap_blocks=num_swap_blocks)
    s = create_scheduler("cacheopt", block_manager=bm, token_budget=token_budget, max_model_len=max_model_len,
                         cacheopt={"predictor": "oracle", **cacheopt})
    s.calibrate(frame)
    return s


def new_request(req_id, *, prompt, out, at=0.0, cls="tight", tbt=None, app="chat"):
    c = CLASSES[cls]
    return Request(req_id, arrival_time=at, num_prompt_tokens=prompt, max_tokens=out, app=app, slo_class=cls,
                   ttft_slo_s=c.ttft_slo_s, tbt_slo_s=c.tbt_slo_s if tbt is None else tbt)


def commit(ledger, req_id, alloc):
    """Reserve ``alloc`` blocks for ``req_id`` as a root: a hand-built state may already reach into the reserve,
    which ``admit`` (rightly) never does, so this writes the ledger's entry directly."""
    assert req_id not in ledger.alloc and ledger.committed + alloc <= ledger.num_blocks
    ledger.alloc[req_id] = alloc
    ledger.committed += alloc
    ledger.check_invariants()


def place_decode(s, req_id, *, prompt, out, generated, alloc, host=None, at=0.0, **kw):
    """A running decode admitted with ``alloc`` ledger blocks (embedded in ``host`` if given)."""
    r = new_request(req_id, prompt=prompt, out=out, at=at, **kw)
    s.add_request(r)
    assert r.status == RequestStatus.WAITING, r.rejection_reason
    s._remove_waiting(r)
    if host is None:
        commit(s.ledger, req_id, alloc)
    else:
        s.ledger.embed(req_id, host, alloc)
    s._admit(r, at)
    r.num_output_tokens = generated
    r.num_computed_tokens = prompt + generated - 1
    r.token_times = [at + 1e-3 * (i + 1) for i in range(generated)]
    r.times.first_token_time = r.token_times[0]
    assert s.block_manager.allocate_slots(req_id, r.num_computed_tokens)
    s.prefilling.remove(r)
    s.decoding.append(r)
    return r


def room(s, r) -> int:
    return s.ledger.own_blocks(r.req_id) * BS - r.num_computed_tokens


def step(s, now):
    out = s.schedule(now)
    s.check_kv_invariants()
    s.block_manager.check_invariants()
    result = SimExecutor(cost_model=create_cost_model(), kv_transfer=create_kv_transfer()).execute(out)
    end = now + result.step_time
    s.update_from_output(out, result, end)
    s.check_kv_invariants()
    return out, end


def calibration_frame() -> pd.DataFrame:
    """101 fitting rows of app chat with 100 output tokens (median ô = 100), then 101 calibration rows with
    errors o − ô = −50..50: R = q99 − q1 = 49 − (−49) = 98 and R_up = 49."""
    fit = [100] * 101
    cal = [100 + e for e in range(-50, 51)]
    n = len(fit) + len(cal)
    return pd.DataFrame({"app": ["chat"] * n, "slo_class": ["tight"] * n, "num_prompt_tokens": [100] * n,
                         "num_output_tokens": fit + cal})


# 7.1: the reserved allocation is blocks(p + clip(ceil(ô + t), g + 1, max_model_len − p)) -------------------------
def test_calibration_frame_has_the_documented_error_range():
    errors = np.arange(-50, 51, dtype=float)
    q1, q99 = np.percentile(errors, [1.0, 99.0])
    assert (q99 - q1, max(0.0, q99)) == (98.0, 49.0)
    s = make(frame=calibration_frame(), predictor="class_quantile")
    assert s.length_planner.describe()["groups"]["app:chat"] == {"R": 98.0, "R_up": 49.0, "n": 101}


@pytest.mark.parametrize("hoeffding_n, prompt, max_model_len", [
    (1, 100, 4096),     # t = R_up = 49 (the clip binds at conf ≈ 0.95): L = 149
    (16, 100, 4096),    # unclipped: t = 98·sqrt(ln(1/(1−conf))/32) ≈ 30
    (1, 3976, 4096),    # L clipped to max_model_len − p = 120
    (1, 1000, 1100),    # L clipped to 100
])
def test_reserved_allocation_is_the_padded_target(hoeffding_n, prompt, max_model_len):
    s = make(num_blocks=512, frame=calibration_frame(), predictor="class_quantile", hoeffding_n=hoeffding_n,
             max_model_len=max_model_len)
    r = new_request("r", prompt=prompt, out=20, at=0.0)
    s.add_request(r)
    conf = confidence(0.95, 0.001, 1 / 30.0)  # one arrival in the 30 s window
    t = min(49.0, 98.0 * math.sqrt(math.log(1.0 / (1.0 - conf)) / (2 * hoeffding_n)))
    assert t == pytest.approx(hoeffding_padding(98.0, 49.0, conf, hoeffding_n))
    if hoeffding_n == 1:
        assert t == 49.0
    else:
        assert 25 < t < 49
    target = min(max(math.ceil(100 + t), 1), max_model_len - prompt)
    assert s.target_length(r) == target
    out, _ = step(s, 0.0)
    assert out.prefill_req_ids == ["r"]
    assert s.ledger.alloc["r"] == blocks(prompt + target)
    assert s.block_manager.num_blocks_of("r") == blocks(prompt)  # physical: the prompt, not the reservation


def test_target_never_falls_below_the_tokens_generated_plus_one():
    s = make(frame=calibration_frame(), predictor="class_quantile")
    r = new_request("r", prompt=100, out=400)
    s.add_request(r)
    assert s.target_length(r) == 149
    r.num_output_tokens = 200  # an under-prediction: the target follows g + 1
    assert s.target_length(r) == 201
    assert s._target_blocks(r) == blocks(100 + 201)


# 7.2: embedding exactly when room − size − buffer >= 0 and iters + margin <= room − size ------------------------
# Host: prompt 16, output 400, allocation 26 blocks (416 tokens). With generated = 1 it holds 16 tokens: room 400;
# with generated = 2: room 399 (one token less).
# Guest (margin binds): prompt 8, output 187: size = 16·blocks(195) = 208, iters = ceil(8/512) + 187 = 188, and at
# room 400: room − size = 192 = iters + margin.
def host_and_guest(generated, *, num_blocks=256, guest_out=187, **cacheopt):
    s = make(num_blocks=num_blocks, **cacheopt)
    h = place_decode(s, "h", prompt=16, out=400, generated=generated, alloc=26)
    g = new_request("g", prompt=8, out=guest_out, at=0.0)
    s.add_request(g)
    return s, h, g


def test_the_margin_boundary_scenario_is_what_the_comment_says():
    s, h, g = host_and_guest(1)
    size = s._target_blocks(g) * BS
    iters = math.ceil(8 / 512) + 187
    assert (room(s, h), size, iters) == (400, 208, 188)
    assert room(s, h) - size == iters + 4 and room(s, h) - size - 8 >= 0


@pytest.mark.parametrize("pool_open", [True, False])
def test_embedded_at_the_margin_boundary_and_not_one_token_below(pool_open):
    # Pool closed: host 26 + reserve 8 + 12 blocks < the guest's 13.
    num_blocks = 256 if pool_open else 26 + 8 + 12
    s, h, g = host_and_guest(1, num_blocks=num_blocks)
    assert s._kv_admit(g)
    assert s.ledger.is_guest("g") and s.ledger.host_of["g"] == "h"
    assert s.ledger.own_blocks("h") == 26 - 13 and s.ledger.num_embedded == 1
    s, h, g = host_and_guest(2, num_blocks=num_blocks)
    assert room(s, h) == 399
    if pool_open:
        assert s._kv_admit(g)  # from the pool instead
        assert s.ledger.has("g") and not s.ledger.is_guest("g") and s.ledger.lent.get("h", 0) == 0
    else:
        committed = s.ledger.committed
        assert not s._kv_admit(g)  # waits: nothing reserved, nothing allocated
        assert not s.ledger.has("g") and not s.block_manager.has("g") and s.ledger.committed == committed


@pytest.mark.parametrize("pool_open", [True, False])
def test_embedded_at_the_buffer_boundary_and_not_one_token_below(pool_open):
    # A small guest (prompt 8, output 10: size 32, iters 11) with the margin off and the buffer binding: at room 400
    # room − size = 368, so a buffer of 368 admits it and one of 369 (one token less room) does not.
    num_blocks = 256 if pool_open else 26 + 8 + 1
    s, h, g = host_and_guest(1, num_blocks=num_blocks, guest_out=10, embed_margin_iters=0, embed_buffer_tokens=368)
    assert room(s, h) - s._target_blocks(g) * BS == 368
    assert s._kv_admit(g) and s.ledger.is_guest("g")
    s, h, g = host_and_guest(1, num_blocks=num_blocks, guest_out=10, embed_margin_iters=0, embed_buffer_tokens=369)
    assert s._kv_admit(g) == pool_open
    assert not s.ledger.is_guest("g")


def test_with_reuse_off_the_boundary_guest_goes_to_the_pool_or_waits():
    s, h, g = host_and_guest(1, reuse=False)
    assert s._kv_admit(g) and s.ledger.has("g") and not s.ledger.is_guest("g")
    s, h, g = host_and_guest(1, num_blocks=26 + 8 + 12, reuse=False)
    assert not s._kv_admit(g) and not s.ledger.has("g")


def test_embedding_through_schedule_finishes_before_the_host_collides():
    # The host decodes first in the step (room 401 -> 400 at admission): the guest is embedded, runs to the end
    # inside the host's tail, and the host never needs its lent blocks back.
    s = make(prealloc_iters=2)
    h = place_decode(s, "h", prompt=15, out=400, generated=1, alloc=26)
    assert room(s, h) == 401
    s.add_request(new_request("g", prompt=8, out=187, at=0.0))
    out, now = step(s, 0.0)
    assert out.prefill_req_ids == ["g"] and s.ledger.is_guest("g")
    while s.has_unfinished_requests():
        out, now = step(s, now)
        assert not out.preempted_req_ids
    assert s.ledger.num_embedded == 1 and s.num_guest_evictions == 0 and s.num_preemptions == 0
    assert not s.ledger.alloc and s.block_manager.num_used_blocks == 0
    # The other side: one token less room at admission, and the guest takes the pool.
    s = make()
    place_decode(s, "h", prompt=16, out=400, generated=1, alloc=26)
    s.add_request(new_request("g", prompt=8, out=187, at=0.0))
    step(s, 0.0)
    assert s.ledger.has("g") and not s.ledger.is_guest("g") and s.ledger.num_embedded == 0


def test_never_embedded_in_a_prefilling_request():
    # Budget 64: the host's 96-token prompt takes two steps. In the second, 32 tokens of budget are left and the
    # guest is admitted while the host is still prefilling with a 400-token unwritten tail.
    s = make(token_budget=64)
    s.add_request(new_request("h", prompt=96, out=400, at=0.0))
    out, now = step(s, 0.0)
    assert out.num_scheduled_tokens == {"h": 64}
    s.add_request(new_request("g", prompt=8, out=10, at=now))
    out, now = step(s, now)
    assert out.num_scheduled_tokens == {"h": 32, "g": 8}
    assert s.ledger.has("g") and not s.ledger.is_guest("g"), "embedded in a prefilling request"
    # Control: the same guest arriving once the host decodes is embedded in it.
    s.add_request(new_request("g2", prompt=8, out=10, at=now))
    out, now = step(s, now)
    assert "g2" in out.prefill_req_ids and s.ledger.host_of.get("g2") == "h"


def guest_with_room(as_guest):
    """A host whose own room is small after lending 30 blocks to a decode with a large room (472 tokens)."""
    s = make()
    place_decode(s, "h", prompt=16, out=1000, generated=1, alloc=40)
    if as_guest:
        g = place_decode(s, "g", prompt=8, out=400, generated=1, alloc=30, host="h", at=0.0)
    else:
        g = place_decode(s, "g", prompt=8, out=400, generated=1, alloc=30, at=0.0)
    s.check_kv_invariants()
    newcomer = new_request("s", prompt=8, out=180, at=0.0)  # size 192, iters 181: fits g (left 280), not h
    s.add_request(newcomer)
    return s, g, newcomer


def test_never_embedded_in_a_guest():
    s, g, newcomer = guest_with_room(as_guest=True)
    assert room(s, s.requests["h"]) == 144 and room(s, g) == 472
    assert s._kv_admit(newcomer)
    assert not s.ledger.is_guest("s"), f"embedded in {s.ledger.host_of.get('s')}"
    # Control: the same decode as a root is a host.
    s, g, newcomer = guest_with_room(as_guest=False)
    assert s._kv_admit(newcomer) and s.ledger.host_of["s"] == "g"


# 7.3: the reserve -----------------------------------------------------------------------------------------------
def test_admission_never_takes_uncommitted_below_the_reserve():
    # 40 blocks, reserve 8. The newcomer needs 4 blocks (prompt 40 + output 24). A decode with (almost) no room
    # holds 29 (pool 3) or 28 (pool 4).
    for held, admitted in ((29, False), (28, True)):
        s = make(num_blocks=40)
        place_decode(s, "d", prompt=held * BS - 5, out=10, generated=1, alloc=held)
        s.add_request(new_request("n", prompt=40, out=24, at=0.0))
        assert s.ledger.uncommitted == 40 - held >= 4  # there are enough uncommitted blocks either way
        out, _ = step(s, 0.0)
        assert ("n" in out.prefill_req_ids) == admitted
        assert s.ledger.uncommitted >= s.ledger.reserved_blocks == 8
        if admitted:
            assert s.ledger.uncommitted == 8
        else:
            assert s.waiting[0].req_id == "n" and not s.ledger.has("n")


def test_embedding_needs_no_pool_and_leaves_the_reserve_alone():
    s = make(num_blocks=26 + 8)  # the host's 26 blocks leave exactly the reserve uncommitted
    place_decode(s, "h", prompt=15, out=400, generated=1, alloc=26)
    s.add_request(new_request("g", prompt=8, out=10, at=0.0))
    assert s.ledger.pool_room == 0
    out, _ = step(s, 0.0)
    assert "g" in out.prefill_req_ids and s.ledger.is_guest("g")
    assert s.ledger.uncommitted == 8 and s.ledger.num_reserve_extensions == 0


@pytest.mark.parametrize("proactive", [True, False])
def test_extensions_may_use_the_reserve(proactive):
    # The pool is empty (32 of 40 committed); d1 has written all 16 of its blocks and needs a 17th.
    s = make(num_blocks=40, proactive=proactive)
    d1 = place_decode(s, "d1", prompt=256, out=10, generated=1, alloc=16)
    place_decode(s, "d2", prompt=100, out=10, generated=1, alloc=16)
    assert room(s, d1) == 0 and s.ledger.pool_room == 0
    out, _ = step(s, 0.0)
    assert out.decode_req_ids == ["d1", "d2"] and not out.preempted_req_ids
    assert s.ledger.alloc["d1"] == 17 and s.ledger.uncommitted == 7
    assert (s.ledger.num_reserve_extensions, s.ledger.reserve_blocks_used) == (1, 1)
    assert s.block_manager.num_blocks_of("d1") == 17


@pytest.mark.parametrize("d2_alloc, preempted", [(24, True), (23, False)])
def test_preemption_only_when_the_extension_fails_even_from_the_reserve(d2_alloc, preempted):
    # 40 blocks; d1 (16) needs a 17th. With d2 at 24 nothing is uncommitted; at 23 one reserve block is left.
    s = make(num_blocks=40)
    d1 = place_decode(s, "d1", prompt=256, out=10, generated=1, alloc=16)
    place_decode(s, "d2", prompt=100, out=10, generated=1, alloc=d2_alloc)
    assert room(s, d1) == 0 and s.ledger.uncommitted == 24 - d2_alloc
    out, _ = step(s, 0.0)
    assert "d1" in out.decode_req_ids
    if preempted:
        assert out.preempted_req_ids == ["d2"] and s.num_preemptions == 1
    else:
        assert not out.preempted_req_ids and s.ledger.num_reserve_extensions == 1 and s.ledger.uncommitted == 0


# 7.3: proactive extension ---------------------------------------------------------------------------------------
# The calibrated padding is t = R_up = 49 tokens, so Δ = max(1 block, blocks(49)) = 4 blocks. The decode holds 7
# blocks (112 tokens) of allocation; prompt 110 (room 2) or 109 (room 3).
def proactive_state(prompt, **cacheopt):
    s = make(frame=calibration_frame(), predictor="class_quantile", **cacheopt)
    d = place_decode(s, "d", prompt=prompt, out=60, generated=1, alloc=7)
    return s, d


def test_proactive_extension_by_the_padded_delta_before_the_allocation_runs_out():
    s, d = proactive_state(110)
    assert room(s, d) == 2 and s._extension_blocks(d) == 4
    step(s, 0.0)
    assert s.ledger.alloc["d"] == 11 and s.ledger.num_extensions == 1
    assert s.block_manager.num_blocks_of("d") == 7  # the reservation grew; the blocks come as tokens are written


def test_no_proactive_extension_while_the_room_exceeds_prealloc_iters():
    s, d = proactive_state(109)
    assert room(s, d) == 3
    _, now = step(s, 0.0)
    assert s.ledger.alloc["d"] == 7 and s.ledger.num_extensions == 0
    assert room(s, d) == 2  # one token later it is within the horizon, still before the allocation runs out
    step(s, now)
    assert s.ledger.alloc["d"] == 11 and d.num_computed_tokens == 111 < 7 * BS


def test_with_proactive_off_the_extension_happens_only_when_the_block_is_needed():
    s, d = proactive_state(110, proactive=False)
    now, allocs = 0.0, []
    while d.num_computed_tokens < 7 * BS + 1:
        before = d.num_computed_tokens
        _, now = step(s, now)
        allocs.append((before, s.ledger.alloc["d"]))
    # Unchanged while the next token fits the 112 allocated tokens; extended by Δ = 4 for the 113th.
    assert allocs == [(110, 7), (111, 7), (112, 11)]


def test_the_extension_is_one_block_without_padding():
    s = make()
    d = place_decode(s, "d", prompt=110, out=60, generated=1, alloc=7)
    step(s, 0.0)
    assert s.ledger.alloc["d"] == 8


# 7.4: victim order ----------------------------------------------------------------------------------------------
def victims(specs, **cacheopt):
    """``specs``: (req_id, tbt, remaining, computed); decodes placed in that order with rising arrival times."""
    s = make(num_blocks=1024, **cacheopt)
    reqs = {}
    for i, (req_id, tbt, remaining, computed) in enumerate(specs):
        reqs[req_id] = place_decode(s, req_id, prompt=computed, out=remaining + 1, generated=1,
                                    alloc=blocks(computed + remaining + 1), at=0.001 * i, tbt=tbt)
        assert s.target_length(reqs[req_id]) - 1 == remaining
    return s, reqs


def test_victim_has_the_longest_tbt_slo_within_eps():
    # b is within 10 % of the longest SLO and cheaper to preempt than a; c is cheapest of all but outside.
    specs = [("a", 0.50, 100, 500), ("b", 0.46, 100, 100), ("c", 0.44, 100, 16)]
    s, reqs = victims(specs)
    assert s.pick_victim(list(reqs.values())).req_id == "b"
    s, reqs = victims(specs, eps_slo=0.0)
    assert s.pick_victim(list(reqs.values())).req_id == "a"


def test_then_the_longest_remaining_within_eps():
    specs = [("a", 0.5, 100, 500), ("b", 0.5, 91, 100), ("c", 0.5, 89, 16)]
    s, reqs = victims(specs)
    assert s.pick_victim(list(reqs.values())).req_id == "b"
    s, reqs = victims(specs, eps_rem=0.0)
    assert s.pick_victim(list(reqs.values())).req_id == "a"


def test_then_the_shortest_preemption_time():
    specs = [("a", 0.5, 100, 300), ("b", 0.5, 100, 50), ("c", 0.5, 100, 800)]
    s, reqs = victims(specs)
    times = {k: min(s.preemption_times(r)) for k, r in reqs.items()}
    assert times["b"] < times["a"] < times["c"]
    assert s.pick_victim(list(reqs.values())).req_id == "b"
    # Equal on every key: the latest arrival.
    s, reqs = victims([("a", 0.5, 100, 64), ("b", 0.5, 100, 64)])
    assert s.pick_victim(list(reqs.values())).req_id == "b"


def test_victim_order_off_takes_the_policy_default():
    s, reqs = victims([("a", 0.50, 100, 500), ("b", 0.46, 100, 100), ("c", 0.44, 100, 16)], victim_order=False)
    assert s.pick_victim(list(reqs.values())).req_id == "c"  # the latest arrival
    s, reqs = victims([("c", 0.44, 100, 16), ("b", 0.46, 100, 100), ("a", 0.50, 100, 500)], victim_order=False)
    assert s.pick_victim(list(reqs.values())).req_id == "a"


def test_the_request_asking_is_excluded_when_there_are_others():
    s, reqs = victims([("a", 0.5, 100, 100), ("b", 0.05, 10, 800)])
    s._growing = reqs["a"]
    assert s.pick_victim(list(reqs.values())).req_id == "b"
    assert s.pick_victim([reqs["a"]]).req_id == "a"


def test_victim_order_through_schedule():
    # x (tight SLO, first in the batch) needs a block and nothing is uncommitted: the order picks b.
    s = make(num_blocks=40)
    x = place_decode(s, "x", prompt=64, out=10, generated=1, alloc=4, tbt=0.05)
    place_decode(s, "a", prompt=159, out=101, generated=1, alloc=17, at=0.001, tbt=0.50)
    place_decode(s, "b", prompt=99, out=101, generated=1, alloc=13, at=0.002, tbt=0.46)
    place_decode(s, "c", prompt=15, out=101, generated=1, alloc=6, at=0.003, tbt=0.44)
    assert room(s, x) == 0 and s.ledger.uncommitted == 0
    out, _ = step(s, 0.0)
    assert out.preempted_req_ids == ["b"] and out.decode_req_ids == ["x", "a", "c"]


def host_with_guests(**cacheopt):
    """h lent 10 blocks to g1 and g2 (g2 newer) and has written all of its own 10; o has the longest SLO."""
    s = make(num_blocks=40, **cacheopt)
    h = place_decode(s, "h", prompt=160, out=200, generated=1, alloc=20, tbt=0.05)
    place_decode(s, "g1", prompt=8, out=40, generated=1, alloc=5, host="h", at=0.001, tbt=0.05)
    place_decode(s, "g2", prompt=8, out=40, generated=1, alloc=5, host="h", at=0.002, tbt=0.05)
    o = place_decode(s, "o", prompt=16, out=300, generated=1, alloc=20, at=0.003, tbt=0.5)
    assert room(s, h) == 0 and s.ledger.uncommitted == 0
    return s, h, o


def test_a_host_asking_for_room_evicts_its_own_guests_first():
    s, h, o = host_with_guests()
    s._growing = h
    cands = list(s.running)
    assert s.pick_victim(cands).req_id == "g2"  # the newest guest, though o leads the victim order
    s._growing = None
    assert s.pick_victim(cands).req_id == "o"
    # Through schedule: the host's decode evicts g2, whose 5 blocks come back to it.
    s, h, o = host_with_guests()
    out, _ = step(s, 0.0)
    assert out.preempted_req_ids == ["g2"] and s.num_guest_evictions == 1
    assert "h" in out.decode_req_ids and s.ledger.lent["h"] == 5 and s.ledger.alloc["h"] == 20
    assert s.requests["o"].status == RequestStatus.RUNNING


def test_guests_go_first_even_with_victim_order_off():
    s, h, o = host_with_guests(victim_order=False)
    out, _ = step(s, 0.0)
    assert out.preempted_req_ids == ["g2"]


# 7.5: swap or recompute -----------------------------------------------------------------------------------------
def test_swap_or_recompute_sets_the_mode_and_logs_the_crossover():
    s = make()
    assert s.preemption_mode == "auto"
    assert s.swap_crossover_tokens == swap_crossover_tokens(create_cost_model(), create_kv_transfer(), BS, 4096) == 48
    assert s.kv_summary()["cacheopt_swap_crossover_tokens"] == 48
    assert make(swap_or_recompute=False).preemption_mode == "recompute"


@pytest.mark.parametrize("computed, swap_or_recompute, kind", [
    (800, True, "swap"), (20, True, "recompute"), (800, False, "recompute")])
def test_the_victim_is_swapped_or_recomputed_by_predicted_time(computed, swap_or_recompute, kind):
    # x needs a block, nothing is uncommitted: v (the only other decode) is the victim.
    s = make(num_blocks=80, num_swap_blocks=64, swap_or_recompute=swap_or_recompute)
    place_decode(s, "x", prompt=64, out=10, generated=1, alloc=4, tbt=0.05)
    v = place_decode(s, "v", prompt=computed, out=10, generated=1, alloc=76, at=0.001)
    held = s.block_manager.num_blocks_of("v")
    t_swap, t_rec = s.preemption_times(v)
    if swap_or_recompute:
        assert (kind == "swap") == (2 * t_swap < t_rec)
    state = (v.num_computed_tokens, v.num_output_tokens, list(v.token_times))
    out, now = step(s, 0.0)
    assert out.preempted_req_ids == ["v"] and not s.ledger.has("v")
    if kind == "swap":
        assert out.swapped_out_req_ids == ["v"] and len(out.blocks_to_swap_out) == held
        assert list(s.swapped) == [v] and (v.num_computed_tokens, v.num_output_tokens, v.token_times) == state
    else:
        assert not out.swapped_out_req_ids and v.num_computed_tokens == 0 and v in s.waiting
    # Both finish; a swapped victim comes back with its state and a fresh reservation.
    while s.has_unfinished_requests():
        out, now = step(s, now)
        if "v" in out.swapped_in_req_ids:
            assert s.ledger.has("v") and v.num_output_tokens == state[1] + ("v" in out.decode_req_ids)
    assert s.block_manager.num_used_blocks == 0 and s.block_manager.num_free_cpu_blocks == 64
    assert not s.ledger.alloc and s.ledger.committed == 0


# Reuse off: never embedded, on a whole run -----------------------------------------------------------------------
def test_reuse_off_never_embeds_on_a_run_where_reuse_on_does():
    n = 30
    arrivals = np.sort(np.random.default_rng(3).uniform(0, 0.2, n))

    def run(**cacheopt):
        workload = Workload(name="w", arrival_time=arrivals,
                            num_prompt_tokens=np.full(n, 16), num_output_tokens=np.r_[[300] * 5, [20] * (n - 5)],
                            app_index=np.zeros(n, int), apps=["chat"], app_slo_classes=["tight"],
                            slo_classes=CLASSES)
        s = make(num_blocks=200, **cacheopt)
        Engine(scheduler=s, executor=SimExecutor(cost_model=create_cost_model(), kv_transfer=create_kv_transfer()),
               workload=workload, clock=VirtualClock()).run()
        return s

    assert run().ledger.num_embedded > 0
    off = run(reuse=False)
    assert off.ledger.num_embedded == 0 and not off.ledger.host_of


# AccelGen + CacheOPT: the same KV components under AccelGen's batching ---------------------------------------------
def test_accelgen_cacheopt_reserves_the_target_and_embeds_with_its_mean_budget():
    bm = create_block_manager(num_blocks=256, block_size=BS)
    s = create_scheduler("accelgen_cacheopt", block_manager=bm, cacheopt={"predictor": "oracle"})
    s.calibrate(None)
    h = new_request("h", prompt=16, out=400, at=0.0, cls="loose")
    s.add_request(h)
    assert s._estimate["h"] == s.target_length(h) == 400  # AccelGen's packing sees CacheOPT's target length
    out, now = step(s, 0.0)
    assert out.prefill_req_ids == ["h"] and s.ledger.alloc["h"] == blocks(16 + 400)
    budget = s.last_plan.budget_tokens
    assert s._mean_prefill_budget() == budget > 0
    # A small guest fits the host's unwritten tail (400 − 32 ≥ iters + 4): embedded, nothing more committed.
    g = new_request("g", prompt=8, out=10, at=now, cls="loose")
    s.add_request(g)
    assert 416 - 17 - 32 >= math.ceil(8 / budget) + 10 + 4
    out, now = step(s, now)
    assert "g" in out.prefill_req_ids and s.ledger.host_of.get("g") == "h"
    assert s.ledger.committed == blocks(16 + 400)
