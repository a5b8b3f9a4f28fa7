from __future__ import annotations

import numpy as np
import pytest

from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import SchedulerStallError
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import create_block_manager, create_cost_model, create_scheduler, create_slo_classes


def workload(arrivals, prompts, outputs):
    n = len(arrivals)
    return Workload(name="t", arrival_time=np.array(arrivals, float), num_prompt_tokens=np.array(prompts),
                    num_output_tokens=np.array(outputs), app_index=np.zeros(n, int), apps=["a"],
                    app_slo_classes=["tight"], slo_classes=create_slo_classes())


def test_idle_fast_forward_and_token_times():
    cm = create_cost_model()
    wl = workload([1.0, 100.0], [10, 10], [2, 2])
    scheduler = create_scheduler("sarathi", token_budget=64)
    result = Engine(scheduler=scheduler, executor=SimExecutor(cost_model=cm), workload=wl, clock=VirtualClock()).run()
    log = result.iterations.to_frame()
    # Nothing runs between the two requests: the clock jumps to each arrival.
    assert log["start_time"].tolist()[0] == 1.0 and 100.0 in log["start_time"].tolist()
    first, second = result.requests
    t_prefill = cm.predict([(10, 0)], [])
    assert first.token_times[0] == pytest.approx(1.0 + t_prefill)
    assert first.token_times[1] == pytest.approx(1.0 + t_prefill + cm.predict([], [11]))
    assert second.token_times[0] == pytest.approx(100.0 + t_prefill)
    assert len(log) == 4 and result.end_time == pytest.approx(second.token_times[-1])


def test_rejected_requests_are_accounted_for():
    wl = workload([0.0, 0.5, 0.6], [10, 5000, 10], [3, 3, 3])  # the middle one exceeds max_model_len
    scheduler = create_scheduler("vllm")
    result = Engine(scheduler=scheduler, executor=SimExecutor(cost_model=create_cost_model()), workload=wl,
                    clock=VirtualClock()).run()
    assert [r.status.name for r in result.requests] == ["FINISHED_STOPPED", "FINISHED_REJECTED", "FINISHED_STOPPED"]
    assert "max_model_len" in result.requests[1].rejection_reason


class LazyScheduler:
    """Accepts requests and never schedules them."""

    def __init__(self):
        self.waiting = []

    def add_request(self, request):
        self.waiting.append(request)

    def schedule(self, now):
        return SchedulerOutput(num_scheduled_tokens={})

    def update_from_output(self, output, result, now):
        return []

    def has_unfinished_requests(self):
        return bool(self.waiting)


def test_a_scheduler_that_schedules_nothing_raises_instead_of_spinning():
    with pytest.raises(SchedulerStallError, match="LazyScheduler scheduled nothing"):
        Engine(scheduler=LazyScheduler(), executor=SimExecutor(cost_model=create_cost_model()),
               workload=workload([0.0], [10], [2]), clock=VirtualClock()).run()


def test_virtual_clock_rejects_negative_or_nan_steps():
    clock = VirtualClock()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            clock.advance(bad)
    clock.advance_to(5.0)
    clock.advance_to(1.0)  # never backwards
    assert clock.now() == 5.0


def test_step_result_is_what_update_uses():
    s = create_scheduler("sarathi", token_budget=64, block_manager=create_block_manager())
    wl = workload([0.0], [10], [1])
    for r in wl.arrivals_until(0.0):
        s.add_request(r)
    out = s.schedule(0.0)
    (finished,) = s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=0.25), 0.25)
    assert finished.max_prefill_step_time == 0.25 and finished.times.finished_time == 0.25
    assert s.block_manager.num_used_blocks == 0
