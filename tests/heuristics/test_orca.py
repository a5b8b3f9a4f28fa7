from __future__ import annotations

import pytest

from runtime.core.errors import ConfigError
from runtime.core.outputs import StepResult
from tests.conftest import create_block_manager, create_requests, create_scheduler


def step(s, now=0.0):
    out = s.schedule(now)
    finished = s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=0.01), now + 0.01)
    return out, finished


def test_reserves_max_len_and_mixes_whole_prompts_with_decodes():
    bm = create_block_manager(num_blocks=8, block_size=16)
    s = create_scheduler("orca", block_manager=bm, max_model_len=64)  # 4 blocks reserved per request
    reqs = create_requests(3, num_prompt_tokens=[20, 30, 40], max_tokens=[2, 5, 5])
    for r in reqs:
        s.add_request(r)
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r0": 20, "r1": 30}  # r2 cannot reserve: only 2 x 4 blocks
    assert bm.num_used_blocks == 8
    out, finished = step(s)
    assert out.num_scheduled_tokens == {"r0": 1, "r1": 1}
    assert [r.req_id for r in finished] == ["r0"]
    out, _ = step(s)
    assert out.num_scheduled_tokens == {"r1": 1, "r2": 40}  # a whole prompt joins the decodes
    assert out.preempted_req_ids == []


def test_cache_smaller_than_one_reservation_is_a_config_error():
    with pytest.raises(ConfigError, match="max_model_len"):
        create_scheduler("orca", block_manager=create_block_manager(num_blocks=3, block_size=16), max_model_len=64)


def test_step_cap_bounds_prompts_only_since_orca_never_recomputes():
    s = create_scheduler("orca", max_num_batched_tokens=2048, block_manager=create_block_manager(num_blocks=1024))
    ok, too_long = create_requests(2, num_prompt_tokens=[1000, 2049], max_tokens=[1500, 10])
    s.add_request(ok)
    s.add_request(too_long)
    assert ok.rejection_reason is None
    assert "prompt=2049" in too_long.rejection_reason
