"""frozen_heap (runtime.live.heap): the collector skips the start-up heap during a live run, and only then."""
from __future__ import annotations

import gc
import weakref

import pytest

from runtime.live.heap import frozen_heap
from tests.conftest import compose_config


class _Node:
    def __init__(self) -> None:
        self.other = self


def test_freezes_for_the_duration_and_hands_everything_back() -> None:
    base = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > base
        with frozen_heap():  # nested: one freeze, undone by the outer exit only
            inner = gc.get_freeze_count()
        assert gc.get_freeze_count() == inner
        # What the run leaves behind is still collected.
        ref = weakref.ref(_Node())
        gc.collect()
        assert ref() is None
    assert gc.get_freeze_count() == 0


def test_an_error_inside_still_unfreezes() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("a step failed")
    assert gc.get_freeze_count() == 0


def test_a_live_run_steps_with_the_heap_frozen(monkeypatch) -> None:
    from runtime.cli import run
    from runtime.live.executor import LiveExecutor

    frozen, execute = [], LiveExecutor.execute

    def spy(self, output):
        frozen.append(gc.get_freeze_count())
        return execute(self, output)

    monkeypatch.setattr(LiveExecutor, "execute", spy)
    run(compose_config(["runtime=live", "model=tiny", "workload=live_small", "workload.num_requests=3",
                        "workload.arrival.rate=200", "runtime.warmup_steps=0"]), None)
    assert frozen and min(frozen) > 0
    assert gc.get_freeze_count() == 0
    # A simulated run has no wall clock to protect: nothing is frozen.
    from runtime.sim.executor import SimExecutor

    seen, sim_execute = [], SimExecutor.execute
    monkeypatch.setattr(SimExecutor, "execute", lambda self, output: seen.append(gc.get_freeze_count())
                        or sim_execute(self, output))
    run(compose_config(["runtime=sim", "workload.num_requests=3"]), None)
    assert seen and max(seen) == 0
