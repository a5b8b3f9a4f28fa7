"""The cluster loop: one replica replays the single engine exactly; N replicas conserve every request."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from runtime.cluster.cluster_engine import ClusterEngine
from runtime.cluster.replica import Replica
from runtime.cluster.router import LeastOutstandingRouter, RoundRobinRouter, SLOAwareRouter
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import create_block_manager, create_cost_model, create_scheduler, create_slo_classes

ROUTERS = {"round_robin": RoundRobinRouter, "least_outstanding": LeastOutstandingRouter, "slo_aware": SLOAwareRouter}


def workload(arrivals, prompts, outputs, slo=None):
    n = len(arrivals)
    slo = np.zeros(n, int) if slo is None else np.asarray(slo)
    return Workload(name="t", arrival_time=np.array(arrivals, float), num_prompt_tokens=np.array(prompts),
                    num_output_tokens=np.array(outputs), app_index=slo, apps=["chat", "batch"],
                    app_slo_classes=["tight", "loose"], slo_classes=create_slo_classes())


def bursty_workload(n=60, seed=0):
    """Bursts, simultaneous arrivals, idle gaps, and one request too long for max_model_len (rejected)."""
    rng = np.random.default_rng(seed)
    arrivals = np.sort(np.round(rng.exponential(0.05, n).cumsum(), 2))  # rounding makes ties
    arrivals[n // 2:] += 30.0  # an idle gap
    prompts = rng.integers(1, 600, n)
    prompts[7] = 5000
    return workload(arrivals, prompts, rng.integers(1, 40, n), slo=rng.integers(0, 2, n))


def make_replica(index, scheduler_name, num_blocks=256, **overrides):
    scheduler = create_scheduler(scheduler_name, block_manager=create_block_manager(num_blocks=num_blocks),
                                 **overrides)
    return Replica(index, scheduler=scheduler, executor=SimExecutor(cost_model=create_cost_model()),
                   clock=VirtualClock())


def run_cluster(wl, n, router, scheduler_name="sarathi", **kwargs):
    replicas = [make_replica(i, scheduler_name, **kwargs) for i in range(n)]
    return ClusterEngine(replicas=replicas, router=ROUTERS[router](cost_model=create_cost_model()),
                         workload=wl).run()


@pytest.mark.parametrize("scheduler_name", ["vllm", "vllm_swap", "sarathi", "accelgen"])
@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_one_replica_equals_the_single_engine_exactly(scheduler_name, router):
    single = Engine(scheduler=create_scheduler(scheduler_name, block_manager=create_block_manager(num_blocks=64)),
                    executor=SimExecutor(cost_model=create_cost_model()), workload=bursty_workload(),
                    clock=VirtualClock()).run()
    cluster = run_cluster(bursty_workload(), 1, router, scheduler_name, num_blocks=64)
    assert [r.req_id for r in cluster.requests] == [r.req_id for r in single.requests]
    for a, b in zip(cluster.requests, single.requests):
        assert (a.status, a.token_times, a.num_preemptions, a.times) == (b.status, b.token_times, b.num_preemptions,
                                                                         b.times)
    assert cluster.replicas[0].log.to_frame().equals(single.iterations.to_frame())
    assert cluster.end_time == single.end_time and set(cluster.replica_of) == {0}


@settings(max_examples=25)
@given(n=st.integers(1, 4), router=st.sampled_from(sorted(ROUTERS)),
       scheduler_name=st.sampled_from(["vllm", "sarathi"]),
       rows=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 700), st.integers(1, 30), st.integers(0, 1)),
                     min_size=1, max_size=25))
def test_every_request_ends_exactly_once_on_exactly_one_replica(n, router, scheduler_name, rows):
    rows.sort()
    arrivals, prompts, outputs, slo = (list(c) for c in zip(*rows))
    arrivals = [a / 10 for a in arrivals]  # 0.1 s grid: simultaneous arrivals are common
    prompts[0] = prompts[0] * 10  # sometimes longer than max_model_len: rejected on its replica
    result = run_cluster(workload(arrivals, prompts, outputs, slo), n, router, scheduler_name, num_blocks=48)
    assert sorted(r.req_id for r in result.requests) == sorted(f"r{i}" for i in range(len(rows)))
    assert len(result.replica_of) == len(result.requests) and set(result.replica_of) <= set(range(n))
    assert sum(rep.num_routed for rep in result.replicas) == len(rows)
    for rep in result.replicas:
        assert rep.num_routed == result.replica_of.count(rep.index)
        assert rep.num_outstanding == 0 and not rep.inbox and not rep.scheduler.has_unfinished_requests()
        assert rep.scheduler.block_manager.num_used_blocks == 0
    step_ends = [{s + d for s, d in zip(rep.log.start, rep.log.duration)} for rep in result.replicas]
    for request, index in zip(result.requests, result.replica_of):
        assert request.is_finished
        if request.status.name == "FINISHED_REJECTED":
            assert not request.token_times
        else:  # every token came from a step of the replica it was routed to
            assert len(request.token_times) == request.max_tokens
            assert set(request.token_times) <= step_ends[index]


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_same_inputs_give_the_same_cluster_run(router):
    first, second = (run_cluster(bursty_workload(seed=3), 3, router) for _ in range(2))
    assert first.replica_of == second.replica_of
    assert [r.token_times for r in first.requests] == [r.token_times for r in second.requests]


def test_routers_spread_a_burst_over_the_replicas():
    wl = lambda: workload([0.0] * 9, [200] * 9, [20] * 9)  # noqa: E731
    assert run_cluster(wl(), 3, "round_robin").replica_of == [0, 1, 2] * 3
    assert run_cluster(wl(), 3, "least_outstanding").replica_of == [0, 1, 2] * 3
    assert sorted(run_cluster(wl(), 3, "slo_aware").replica_of) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_an_idle_replica_starts_at_the_arrival_it_is_given():
    result = run_cluster(workload([1.0, 5.0], [10, 10], [2, 2]), 2, "round_robin")
    assert result.replicas[0].log.start[0] == 1.0 and result.replicas[1].log.start[0] == 5.0
