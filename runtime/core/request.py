"""A request's lifecycle and counters, in vLLM v1's vocabulary.

A request owns ``num_prompt_tokens`` prompt tokens and will generate ``max_tokens`` output tokens (in the
simulator this is the true output length ``o_r``; the live runtime stops at it). ``num_tokens`` is what the
request holds now (prompt plus sampled outputs); ``num_computed_tokens`` is how many of them have their KV in
the cache. There is no separate prefill/decode state: a step computes ``num_tokens - num_computed_tokens``
tokens or fewer (a chunk), and when the computed count reaches ``num_tokens`` a new token is sampled. After a
recompute preemption ``num_computed_tokens`` drops to 0 and the prompt plus the outputs so far are prefilled
again; the step that finishes that re-prefill samples the next output token. After a swap preemption the KV
waits in CPU memory and every counter is kept, so the request resumes where it stopped.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class RequestStatus(enum.IntEnum):
    """Ordered so that ``status > PREEMPTED`` means finished (the finish reason is the status)."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_REJECTED = enum.auto()


@dataclass(frozen=True, slots=True)
class SLOClass:
    """An application class's service-level objectives, in seconds (algorithms.md section 8)."""

    name: str
    ttft_slo_s: float
    tbt_slo_s: float

    def __post_init__(self) -> None:
        for key in ("ttft_slo_s", "tbt_slo_s"):
            value = getattr(self, key)
            if not (value > 0.0 and value != float("inf")):
                raise ValueError(f"SLO class {self.name!r}: {key} must be a positive finite number of seconds, got {value!r}")


@dataclass(slots=True)
class RequestTimes:
    """Wall (or virtual) times of a request's milestones; None until reached."""

    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


class Request:
    """One inference request. A plain mutable entity: schedulers advance its counters."""

    __slots__ = (
        "req_id", "arrival_time", "num_prompt_tokens", "max_tokens", "app", "slo_class", "ttft_slo_s",
        "tbt_slo_s", "status", "num_computed_tokens", "num_output_tokens", "num_preemptions", "num_swaps",
        "recompute_until", "token_times", "times", "max_prefill_step_time", "rejection_reason", "output_token_ids",
    )

    def __init__(
        self,
        req_id: str,
        *,
        arrival_time: float,
        num_prompt_tokens: int,
        max_tokens: int,
        app: str = "default",
        slo_class: str = "default",
        ttft_slo_s: float = float("inf"),
        tbt_slo_s: float = float("inf"),
    ) -> None:
        self.req_id = req_id
        self.arrival_time = float(arrival_time)
        self.num_prompt_tokens = int(num_prompt_tokens)
        self.max_tokens = int(max_tokens)
        self.app = app
        self.slo_class = slo_class
        self.ttft_slo_s = float(ttft_slo_s)
        self.tbt_slo_s = float(tbt_slo_s)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_preemptions = 0
        # Preemptions by swapping (a subset of num_preemptions; the rest recomputed).
        self.num_swaps = 0
        # After a recompute preemption, tokens [0, recompute_until) had their KV computed once already.
        self.recompute_until = 0
        # Emission time of every output token: TTFT is token_times[0] - arrival_time, TBT gaps are its diffs.
        self.token_times: list[float] = []
        self.times = RequestTimes()
        # Longest iteration this request took part in while prefilling (slo.bound_prefill_iterations).
        self.max_prefill_step_time = 0.0
        self.rejection_reason: str | None = None
        # Live runtime only: the sampled token ids (the simulator samples placeholders and keeps none).
        self.output_token_ids: list[int] | None = None

    # Derived counters -----------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Tokens the request holds now: prompt plus sampled outputs."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.PREEMPTED

    def __repr__(self) -> str:
        return (
            f"Request({self.req_id!r}, status={self.status.name}, prompt={self.num_prompt_tokens}, "
            f"computed={self.num_computed_tokens}, out={self.num_output_tokens}/{self.max_tokens})"
        )
