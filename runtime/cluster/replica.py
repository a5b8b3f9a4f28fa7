"""One replica of a cluster: a scheduler, its block manager, an executor and a clock of its own.

A replica runs the single engine's step (``runtime.core.engine``), split at the step's end so that other
replicas and the router can act while it is busy:

* ``start_step()`` at the replica's clock: hand the scheduler the requests routed here since its last step
  (its *inbox*, in arrival order), then schedule, execute and advance the clock to the step's end;
* ``finish_step()`` at that end: ``update_from_output`` and the iteration log.

The scheduler is touched only at those two points, exactly as the single engine touches it, so one replica
behind any router replays the single engine step for step.
"""
from __future__ import annotations

import math

from runtime.core.errors import SchedulerStallError
from runtime.core.interface import Clock, Executor, Scheduler
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request
from runtime.core.run_log import IterationLog


class Replica:
    """A replica's engine state; routers read ``num_outstanding``, ``residual_s``, ``queued_requests`` and
    ``running_requests``."""

    def __init__(self, index: int, *, scheduler: Scheduler, executor: Executor, clock: Clock) -> None:
        self.index = index
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.log = IterationLog()
        # Routed here, not yet handed to the scheduler (it is mid-step, or the step starts at this instant).
        self.inbox: list[Request] = []
        self.in_flight: tuple[SchedulerOutput, StepResult, float] | None = None
        # Routed here and neither finished nor rejected yet.
        self.num_outstanding = 0
        self.num_routed = 0

    # The router's view ---------------------------------------------------------------------------------------
    def residual_s(self, now: float) -> float:
        """Seconds until the step in flight ends (0 when idle)."""
        return max(self.clock.now() - now, 0.0) if self.in_flight is not None else 0.0

    def queued_requests(self) -> list[Request]:
        """Requests waiting for (more) prefill: the inbox, then the scheduler's waiting, swapped and prefilling."""
        s = self.scheduler
        return [*self.inbox, *getattr(s, "waiting", ()), *getattr(s, "swapped", ()), *getattr(s, "prefilling", ())]

    def running_requests(self) -> list[Request]:
        """Requests in the decode phase (they take one token in every step)."""
        return list(getattr(self.scheduler, "decoding", ()))

    # The cluster loop's view ---------------------------------------------------------------------------------
    def next_event_time(self) -> float:
        """When this replica next acts: its step's end, or its next step's start; ``inf`` when idle."""
        if self.in_flight is not None or self.inbox or self.scheduler.has_unfinished_requests():
            return self.clock.now()
        return math.inf

    def accept(self, request: Request, now: float) -> None:
        """Take a routed request at its arrival time ``now``; an idle replica's clock jumps there."""
        if self.in_flight is None and not self.inbox and not self.scheduler.has_unfinished_requests():
            self.clock.advance_to(now)  # idle fast-forward, as the single engine does
        self.inbox.append(request)
        self.num_outstanding += 1
        self.num_routed += 1

    def start_step(self) -> int:
        """Admit the inbox and start the next step (if anything is unfinished); returns the requests rejected."""
        assert self.in_flight is None, f"replica {self.index} is mid-step"
        scheduler = self.scheduler
        num_rejected = 0
        for request in self.inbox:
            scheduler.add_request(request)
            num_rejected += request.is_finished  # rejected on arrival
        self.inbox.clear()
        self.num_outstanding -= num_rejected
        if not scheduler.has_unfinished_requests():
            return num_rejected
        now = self.clock.now()
        output = scheduler.schedule(now)
        if not output.num_scheduled_tokens:
            raise SchedulerStallError(
                f"{type(scheduler).__name__} on replica {self.index} scheduled nothing at t={now:.6f}s with "
                f"unfinished requests (waiting={len(getattr(scheduler, 'waiting', ()))}, "
                f"running={len(getattr(scheduler, 'running', ()))})")
        result = self.executor.execute(output)
        self.clock.advance(result.step_time)
        self.in_flight = (output, result, now)
        return num_rejected

    def finish_step(self) -> list[Request]:
        """End the step in flight at the replica's clock; returns the requests that finished in it."""
        assert self.in_flight is not None, f"replica {self.index} has no step in flight"
        output, result, start = self.in_flight
        self.in_flight = None
        finished = self.scheduler.update_from_output(output, result, self.clock.now())
        self.log.log_step(start, output, result.step_time, result.swap_time, result.recompute_time)
        self.num_outstanding -= len(finished)
        return finished
