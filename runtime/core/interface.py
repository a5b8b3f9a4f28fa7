"""The contracts every scheduler, executor, latency model and clock meets.

Schedulers see only requests and the block manager; executors see only ``SchedulerOutput``s. Neither knows
which implementation of the other it talks to, so the same scheduler object drives the simulator and the live
runtime.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request


@runtime_checkable
class Scheduler(Protocol):
    """Iteration-level scheduler.

    ``schedule(now)`` picks the next step's batch and advances ``num_computed_tokens`` of the scheduled requests
    at once (as vLLM v1 does), so a chunked prefill can be scheduled again next step. ``update_from_output``
    records the sampled tokens at time ``now`` (the end of the step), checks stop conditions, frees the blocks of
    finished requests and returns the requests that finished during the step. A request rejected at
    ``add_request`` is finished at once with ``FINISHED_REJECTED`` and a reason (the engine keeps every request
    it hands over, so rejected ones are accounted for). Every finished request's id, stopped or rejected, is
    reported in the next step's ``finished_req_ids``.
    """

    def add_request(self, request: Request) -> None: ...

    def schedule(self, now: float) -> SchedulerOutput: ...

    def update_from_output(self, output: SchedulerOutput, result: StepResult, now: float) -> list[Request]: ...

    def has_unfinished_requests(self) -> bool: ...


@runtime_checkable
class Executor(Protocol):
    """Runs one step: ``SimExecutor`` predicts its time with a cost model; ``LiveExecutor`` runs a torch forward."""

    def execute(self, output: SchedulerOutput) -> StepResult: ...


@runtime_checkable
class CostModel(Protocol):
    """Iteration-latency predictor ``T̂(B)`` (algorithms.md section 3), in seconds.

    ``prefill_chunks``: ``(num_new_tokens, num_computed_tokens_before)`` per prefill-phase request.
    ``decode_context_lens``: context length per decode (tokens whose KV is read, including the new one).
    Must be non-decreasing in every chunk size and in adding a request.
    """

    def predict(self, prefill_chunks: Sequence[tuple[int, int]], decode_context_lens: Sequence[int]) -> float: ...


@runtime_checkable
class KVTransferModel(Protocol):
    """Time to move KV blocks between GPU and CPU swap space, one direction (algorithms.md section 7.5)."""

    def swap_time_s(self, num_blocks: int) -> float: ...


@runtime_checkable
class RequestSource(Protocol):
    """Arrivals, in time order. The engine pulls from it; ``runtime.sim.workload.Workload`` implements it."""

    def has_pending(self) -> bool: ...

    def next_arrival_time(self) -> float: ...

    def arrivals_until(self, now: float) -> list[Request]: ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float: ...

    def advance(self, dt: float) -> None: ...

    def advance_to(self, t: float) -> None: ...
