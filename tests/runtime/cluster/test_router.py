"""Routers: each rule on hand-built replica states, ties to the lowest index."""
from __future__ import annotations

import pytest

from runtime.cluster.router import LeastOutstandingRouter, RoundRobinRouter, SLOAwareRouter
from runtime.core.errors import ConfigError
from tests.conftest import create_cost_model, create_requests


class FakeReplica:
    """The router's view of a replica, set by hand."""

    def __init__(self, index, *, num_outstanding=0, residual_s=0.0, queued=(), running=()):
        self.index = index
        self.num_outstanding = num_outstanding
        self._residual_s, self._queued, self._running = residual_s, list(queued), list(running)

    def residual_s(self, now):
        return self._residual_s

    def queued_requests(self):
        return self._queued

    def running_requests(self):
        return self._running


def request(prompt=100, ttft_slo_s=1.0, tbt_slo_s=0.05):
    return create_requests(1, num_prompt_tokens=prompt, ttft_slo_s=ttft_slo_s, tbt_slo_s=tbt_slo_s)[0]


def test_round_robin_takes_replicas_in_turn():
    router, replicas = RoundRobinRouter(), [FakeReplica(i, num_outstanding=9 - i) for i in range(3)]
    assert [router.route(request(), replicas, 0.0) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_takes_the_fewest_and_ties_go_to_the_lowest_index():
    router = LeastOutstandingRouter()
    assert router.route(request(), [FakeReplica(0, num_outstanding=3), FakeReplica(1, num_outstanding=1),
                                    FakeReplica(2, num_outstanding=1)], 0.0) == 1
    assert router.route(request(), [FakeReplica(i, num_outstanding=2) for i in range(4)], 0.0) == 0


def test_slo_aware_headroom_is_the_documented_formula():
    cm = create_cost_model()
    router = SLOAwareRouter(cost_model=cm, reference_chunk=512)
    kappa = cm.predict([(512, 0)], []) / 512
    queued = create_requests(2, num_prompt_tokens=300)
    running = create_requests(3, num_prompt_tokens=40)
    for r in running:  # decoding: prompt computed, 5 tokens out
        r.num_output_tokens, r.num_computed_tokens = 5, 44
    q = request(prompt=100, ttft_slo_s=2.0, tbt_slo_s=0.05)
    replica = FakeReplica(0, residual_s=0.01, queued=queued, running=running)
    ttft = 0.01 + kappa * (600 + 100)
    tbt = cm.predict([], [45, 45, 45, 101])
    assert router.headroom(q, replica, 0.0) == pytest.approx(min(1 - ttft / 2.0, 1 - tbt / 0.05))


def test_slo_aware_avoids_the_prefill_backlog_and_the_big_decode_batch():
    router = SLOAwareRouter(cost_model=create_cost_model())
    backlog = FakeReplica(0, queued=create_requests(8, num_prompt_tokens=2000))
    idle = FakeReplica(1)
    assert router.route(request(), [backlog, idle], 0.0) == 1
    busy = FakeReplica(0, running=create_requests(200, num_prompt_tokens=2000))
    light = FakeReplica(1, running=create_requests(2, num_prompt_tokens=100), num_outstanding=2)
    assert router.route(request(tbt_slo_s=0.03), [busy, light], 0.0) == 1


def test_slo_aware_ties_go_to_fewer_outstanding_then_the_lowest_index():
    router = SLOAwareRouter(cost_model=create_cost_model())
    assert router.route(request(), [FakeReplica(0, num_outstanding=2), FakeReplica(1, num_outstanding=1),
                                    FakeReplica(2, num_outstanding=1)], 0.0) == 1
    assert router.route(request(), [FakeReplica(i) for i in range(3)], 0.0) == 0


def test_slo_aware_needs_a_cost_model_and_a_positive_chunk():
    with pytest.raises(ConfigError, match="cost model"):
        SLOAwareRouter()
    with pytest.raises(ConfigError, match="reference_chunk"):
        SLOAwareRouter(cost_model=create_cost_model(), reference_chunk=0)
