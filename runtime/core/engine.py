"""The serving engine: one loop, the same for the simulator and the live runtime.

    while arrivals remain or the scheduler has unfinished requests:
        hand the scheduler every request that has arrived by now
        if nothing is unfinished: jump the clock to the next arrival (idle fast-forward); continue
        output = scheduler.schedule(now); result = executor.execute(output)
        advance the clock by result.step_time; scheduler.update_from_output(output, result, now)

A scheduler that returns an empty batch while requests are unfinished would spin forever: the engine raises
``SchedulerStallError`` instead. Every request that arrives ends finished or rejected; the engine checks it.

By default the engine keeps every request (``RunResult.requests``) and the whole ``IterationLog``. With a
``results`` sink (``result_stream.ResultStream``: ``results.mode=stream|summary``) it keeps none: each request is
handed to ``results.add_arrival`` on arrival and to ``results.add_finished`` when it finishes or is rejected, and
the engine itself then holds only what the scheduler holds (the in-flight requests). ``iteration_log`` replaces
the in-memory log (``result_stream.ChunkedIterationLog`` writes it in chunks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from runtime.core.errors import SchedulerStallError
from runtime.core.interface import Clock, Executor, RequestSource, Scheduler
from runtime.core.request import Request
from runtime.core.run_log import IterationLog


class ResultSink(Protocol):
    """Where finished requests go instead of ``RunResult.requests`` (``result_stream.ResultStream``)."""

    def add_arrival(self, request: Request) -> None: ...

    def add_finished(self, requests: Iterable[Request]) -> None: ...


@dataclass(slots=True)
class RunResult:
    requests: list[Request]
    iterations: IterationLog
    wall_s: float
    end_time: float
    time_to_first_step_s: float | None = None
    stats: dict = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        executor: Executor,
        workload: RequestSource,
        clock: Clock,
        progress: object | None = None,
        max_steps: int | None = None,
        results: ResultSink | None = None,
        iteration_log: IterationLog | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.workload = workload
        self.clock = clock
        # Anything with update(n) and set_postfix_str(s) (a tqdm bar); None for silence.
        self.progress = progress
        self.max_steps = max_steps
        self.results = results
        self.iteration_log = iteration_log

    def run(self) -> RunResult:
        scheduler, executor, workload, clock = self.scheduler, self.executor, self.workload, self.clock
        log = IterationLog() if self.iteration_log is None else self.iteration_log
        arrived: list[Request] = []
        sink = self.results
        # Full mode keeps every request; with a sink the engine keeps none (module docstring).
        keep = arrived.append if sink is None else sink.add_arrival
        num_arrived = 0
        wall_start = time.perf_counter()
        first_step_wall: float | None = None
        num_done = reported = num_steps = 0
        progress = self.progress
        while workload.has_pending() or scheduler.has_unfinished_requests():
            for request in workload.arrivals_until(clock.now()):
                keep(request)
                num_arrived += 1
                scheduler.add_request(request)
                if request.is_finished:  # rejected on arrival
                    num_done += 1
                    if sink is not None:
                        sink.add_finished((request,))
            if not scheduler.has_unfinished_requests():
                if workload.has_pending():
                    clock.advance_to(workload.next_arrival_time())  # idle fast-forward
                continue
            output = scheduler.schedule(clock.now())
            if not output.num_scheduled_tokens:
                raise SchedulerStallError(
                    f"{type(scheduler).__name__} scheduled nothing at t={clock.now():.6f}s with unfinished requests "
                    f"(waiting={len(getattr(scheduler, 'waiting', ()))}, running={len(getattr(scheduler, 'running', ()))})"
                )
            if first_step_wall is None:
                first_step_wall = time.perf_counter() - wall_start
            start = clock.now()
            result = executor.execute(output)
            clock.advance(result.step_time)
            finished = scheduler.update_from_output(output, result, clock.now())
            log.log_step(start, output, result.step_time, result.swap_time, result.recompute_time)
            if finished:
                num_done += len(finished)
                if sink is not None:
                    sink.add_finished(finished)
            num_steps += 1
            if progress is not None and not num_steps % 512:
                progress.update(num_done - reported)
                reported = num_done
                progress.set_postfix_str(f"t={clock.now():,.1f}s", refresh=False)
            if self.max_steps is not None and num_steps >= self.max_steps:
                break
        if progress is not None:
            progress.update(num_done - reported)
        if sink is None:
            unaccounted = [r.req_id for r in arrived if not r.is_finished]
            num_unaccounted = len(unaccounted)
        else:
            unaccounted = list(getattr(scheduler, "requests", {}))[:5]
            num_unaccounted = num_arrived - num_done
        if num_unaccounted and self.max_steps is None:
            raise AssertionError(f"{num_unaccounted} requests neither finished nor rejected: {unaccounted[:5]}")
        return RunResult(
            requests=arrived,
            iterations=log,
            wall_s=time.perf_counter() - wall_start,
            end_time=clock.now(),
            time_to_first_step_s=first_step_wall,
        )
