from __future__ import annotations

import pytest

from runtime.core.errors import ConfigError
from runtime.core.outputs import StepResult
from tests.conftest import create_cost_model, create_requests, create_scheduler, create_slo_classes


def step(s, now=0.0):
    out = s.schedule(now)
    s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=0.01), now + 0.01)
    return out


def test_chunks_prompt_under_budget_then_final_remainder():
    s = create_scheduler("sarathi", token_budget=64, chunk_align=32)
    (r,) = create_requests(1, num_prompt_tokens=100, max_tokens=4)
    s.add_request(r)
    assert step(s).num_scheduled_tokens == {"r0": 64}
    assert r.num_output_tokens == 0
    out = step(s)
    assert out.num_scheduled_tokens == {"r0": 36} and out.prefill_chunks == [(36, 64)]
    assert r.num_output_tokens == 1


def test_decodes_first_then_partial_then_new_with_alignment():
    s = create_scheduler("sarathi", token_budget=64, chunk_align=32)
    a, b, c = create_requests(3, num_prompt_tokens=[10, 200, 50], max_tokens=8)
    s.add_request(a)
    assert step(s).num_scheduled_tokens == {"r0": 10}
    s.add_request(b)
    s.add_request(c)
    # 1 decode + 63 tokens left -> b's chunk is aligned down to 32; c does not fit the remaining 31 tokens.
    out = step(s)
    assert out.num_scheduled_tokens == {"r0": 1, "r1": 32}
    out = step(s)
    assert list(out.num_scheduled_tokens) == ["r0", "r1"] and out.num_scheduled_tokens["r1"] == 32


def test_auto_budget_meets_tightest_tbt():
    cm = create_cost_model()
    slo = create_slo_classes()
    s = create_scheduler("sarathi", cost_model=cm, slo_classes=slo, token_budget="auto")
    tight = min(c.tbt_slo_s for c in slo.values())
    decodes = [2048] * 64
    assert s.token_budget % 32 == 0
    assert cm.predict([(s.token_budget, 0)], decodes) <= tight
    assert cm.predict([(s.token_budget + 32, 0)], decodes) > tight


@pytest.mark.parametrize("overrides", [{"token_budget": 0}, {"token_budget": 16, "chunk_align": 32}])
def test_bad_budget_is_a_config_error(overrides):
    with pytest.raises(ConfigError, match="token_budget"):
        create_scheduler("sarathi", **overrides)
