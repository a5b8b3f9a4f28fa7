from __future__ import annotations

import pytest

from runtime.core.errors import ConfigError
from runtime.core.outputs import StepResult
from runtime.core.request import RequestStatus
from tests.conftest import create_block_manager, create_requests, create_scheduler


def step(s, now=0.0):
    out = s.schedule(now)
    finished = s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=0.01), now + 0.01)
    return out, finished


def test_prefill_first_whole_prompts_then_decodes():
    s = create_scheduler("vllm", block_manager=create_block_manager(num_blocks=64))
    for r in create_requests(2, num_prompt_tokens=64, max_tokens=3):
        s.add_request(r)
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r0": 64, "r1": 64}
    assert out.decode_context_lens == [] and sorted(out.sampling_req_ids) == ["r0", "r1"]
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r0": 1, "r1": 1}
    assert out.decode_context_lens == [65, 65]
    # A new arrival pre-empts the decode step: prefill first.
    (late,) = create_requests(1, num_prompt_tokens=10)
    late.req_id = "late"
    s.add_request(late)
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"late": 10}


def test_head_of_line_blocking():
    s = create_scheduler("vllm", block_manager=create_block_manager(num_blocks=4, block_size=16))
    big, small = create_requests(2, num_prompt_tokens=[60, 8], max_tokens=2)
    s.add_request(big)
    s.add_request(small)
    s.block_manager.allocate_slots("other", 16)  # only 3 blocks free; big needs 4 (60 tokens -> 4 blocks)
    out = s.schedule(0.0)
    assert out.num_scheduled_tokens == {}  # FCFS: small waits behind big
    assert [r.req_id for r in s.waiting] == ["r0", "r1"]


def test_recompute_preemption_of_latest_arrival():
    bm = create_block_manager(num_blocks=2, block_size=4)
    s = create_scheduler("vllm", block_manager=bm, max_model_len=8)
    for r in create_requests(2, num_prompt_tokens=4, max_tokens=3, arrival_gap=1.0):
        s.add_request(r)
    out, _ = step(s)  # both prompts fill one block each and sample their first token
    assert out.num_scheduled_tokens == {"r0": 4, "r1": 4}
    out, _ = step(s)  # each decode needs a 2nd block; none free -> r1 (latest) is preempted
    assert out.preempted_req_ids == ["r1"]
    assert out.num_scheduled_tokens == {"r0": 1}
    r1 = s.requests["r1"]
    assert r1.status == RequestStatus.PREEMPTED and r1.num_computed_tokens == 0 and r1.num_preemptions == 1
    assert s.waiting[0] is r1
    out, finished = step(s)
    assert [r.req_id for r in finished] == ["r0"]
    # r1 recomputes its prompt plus the token it already generated, in one whole prefill.
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r1": 5}


def test_chunked_prefill_mode_is_stall_free():
    s = create_scheduler("vllm", chunked_prefill=True, max_num_batched_tokens=32)
    assert s.token_budget == 32
    for r in create_requests(1, num_prompt_tokens=50, max_tokens=4):
        s.add_request(r)
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r0": 32}
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r0": 18}


def test_request_whose_recompute_exceeds_step_cap_is_rejected_with_reason():
    s = create_scheduler("vllm", max_num_batched_tokens=100, max_num_seqs=16)
    fits, too_long = create_requests(2, num_prompt_tokens=[95, 95], max_tokens=[6, 7])
    s.add_request(fits)  # its longest recompute is 95 + 6 - 1 = 100 tokens
    s.add_request(too_long)
    assert fits.status == RequestStatus.WAITING
    assert too_long.status == RequestStatus.FINISHED_REJECTED and "101" in too_long.rejection_reason
    assert [r.req_id for r in s.waiting] == ["r0"]


@pytest.mark.parametrize("overrides, key", [
    ({"max_num_batched_tokens": 100, "max_num_seqs": 256}, "max_num_seqs"),
    ({"chunked_prefill": True, "max_num_batched_tokens": 16, "chunk_align": 32}, "chunk_align"),
    ({"preemption_mode": "swapp"}, "preemption_mode"),
])
def test_impossible_configs_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        create_scheduler("vllm", **overrides)


def test_victim_ties_on_arrival_time_go_by_arrival_order():
    bm = create_block_manager(num_blocks=64, block_size=4)
    s = create_scheduler("vllm", block_manager=bm, max_model_len=64)
    reqs = create_requests(12, num_prompt_tokens=4, max_tokens=3)  # all arrive at t=0
    for r in reqs:
        s.add_request(r)
    assert s.pick_victim(list(reqs)) is reqs[-1]  # r11, not "r9" by string order
