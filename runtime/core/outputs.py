"""What a scheduler hands an executor each step, and what comes back."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SchedulerOutput:
    """One step's batch.

    ``num_scheduled_tokens`` maps req_id to the tokens computed this step: a prompt chunk, a whole prompt, a
    recompute chunk, or 1 for a decode. The batch's *composition* is also given in the form every latency
    model takes (algorithms.md section 3), so an executor needs no access to request objects:
    ``prefill_chunks`` holds ``(num_new_tokens, num_computed_tokens_before)`` per prefill-phase request and
    ``decode_context_lens`` the context length (KV tokens read, including the token being decoded) per decode.
    """

    num_scheduled_tokens: dict[str, int]
    prefill_chunks: list[tuple[int, int]] = field(default_factory=list)
    decode_context_lens: list[int] = field(default_factory=list)
    # Decodes of this step, aligned with decode_context_lens; each emits a token.
    decode_req_ids: list[str] = field(default_factory=list)
    # Prefill-phase members, aligned with prefill_chunks (for slo.bound_prefill_iterations).
    prefill_req_ids: list[str] = field(default_factory=list)
    # Prefill-phase members whose final chunk runs this step: they emit their next (first) token.
    prefill_done_req_ids: list[str] = field(default_factory=list)
    # Every request preempted while this step was built; the swapped subset is in swapped_out_req_ids, the rest
    # were preempted by recompute.
    preempted_req_ids: list[str] = field(default_factory=list)
    swapped_out_req_ids: list[str] = field(default_factory=list)
    swapped_in_req_ids: list[str] = field(default_factory=list)
    # Block copies the executor performs before the step: (GPU, CPU) pairs out, (CPU, GPU) pairs in.
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    # Prefill-phase members that recompute KV dropped by a recompute preemption (a subset of prefill_req_ids),
    # and how many of the step's prefill tokens are such recomputes.
    recompute_req_ids: list[str] = field(default_factory=list)
    num_recompute_tokens: int = 0
    # Finished since the last step (stopped, rejected or aborted): an executor drops their per-request state.
    finished_req_ids: list[str] = field(default_factory=list)
    # Blocks in use after this step's allocations (for the iteration log).
    num_used_blocks: int = 0
    # Requests queued after this step was built (waiting + swapped out): the queue length of the iteration log.
    num_waiting: int = 0
    # The latency bound the scheduler planned this step against (seconds; None: it planned none). Logged next to
    # the step's duration, so a run shows its own budget and, with a noisy latency model, where the plan missed.
    step_cap_s: float | None = None

    @property
    def sampling_req_ids(self) -> list[str]:
        """Requests that emit a token at the end of this step (their computed count reaches num_tokens)."""
        return self.decode_req_ids + self.prefill_done_req_ids

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c for c, _ in self.prefill_chunks)

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decode_context_lens)

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass(slots=True)
class StepResult:
    """What executing a step produced."""

    # Only for requests whose computed count reached num_tokens this step; the simulator samples placeholders.
    sampled_token_ids: dict[str, int]
    # Seconds: predicted by the cost model (simulator) or measured on the device (live runtime). Includes the
    # swap transfers, which stall the whole step.
    step_time: float
    # Parts of step_time: the KV swap transfers, and the marginal time of the recompute chunks.
    swap_time: float = 0.0
    recompute_time: float = 0.0
