"""BaseScheduler: queues, admission checks, KV bookkeeping and preemption mechanics shared by every policy.

Policies (``heuristics/*``, the Oracle) override ``schedule(now)`` and the hooks ``pick_victim`` and
``rejection_reason``; everything that must be identical across policies lives here, so the baselines differ
only in policy (algorithms.md section 4).

Request flow: ``add_request`` either rejects the request at once (``FINISHED_REJECTED`` with a reason) or
appends it to ``waiting``. A policy moves requests to ``running`` with ``_admit``, grows their KV with
``_allocate`` / ``_append_decode_slot`` and records the batch with ``_add_chunk`` / ``_add_decode``;
``_preempt`` frees a running request's KV and puts it back at the front of ``waiting`` (recompute).
``update_from_output`` appends sampled tokens, stamps their times and finishes requests.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Mapping

from runtime.core.errors import ConfigError
from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request, RequestStatus, SLOClass


class BaseScheduler:
    """Shared mechanics. Subclasses implement ``schedule(now)`` and set ``token_budget`` (None: no cap)."""

    #: Largest number of tokens one step may compute (None: no cap). Tests check every step against it.
    token_budget: int | None = None
    #: Policies that prefill whole prompts set this to their per-step cap: a longer request could never start.
    whole_prefill_cap: int | None = None

    def __init__(
        self,
        *,
        block_manager: BlockManager,
        max_num_seqs: int = 256,
        max_model_len: int = 4096,
        cost_model: object | None = None,
        slo_classes: Mapping[str, SLOClass] | None = None,
        name: str = "",
    ) -> None:
        if max_num_seqs < 1:
            raise ConfigError(f"scheduler.max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_model_len < 2:
            raise ConfigError(f"scheduler.max_model_len must be >= 2, got {max_model_len}")
        self.name = name or type(self).__name__
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        # Latency predictor (CostModel protocol); SLO-aware policies plan with it, baselines may ignore it.
        self.cost_model = cost_model
        # The run's resolved SLO classes (seconds); per-request SLOs are on the requests themselves.
        self.slo_classes = dict(slo_classes or {})
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._newly_rejected: list[str] = []
        self._step_preempted: list[str] = []

    # Intake ----------------------------------------------------------------------------------------------------
    def rejection_reason(self, request: Request) -> str | None:
        """Why ``request`` can never be served (None if it can). Policies may add their own limits."""
        if request.num_prompt_tokens < 1:
            return f"num_prompt_tokens={request.num_prompt_tokens} < 1"
        if request.max_tokens < 1:
            return f"max_tokens={request.max_tokens} < 1"
        total = request.num_prompt_tokens + request.max_tokens
        if total > self.max_model_len:
            return f"prompt+output={total} tokens exceeds max_model_len={self.max_model_len}"
        if not self.block_manager.can_fit_ever(total):
            bm = self.block_manager
            return (
                f"prompt+output={total} tokens needs {bm.blocks_for(total)} KV blocks; the cache has "
                f"{bm.num_blocks - bm.watermark_blocks} admissible blocks"
            )
        # After a recompute the whole prompt plus outputs is prefilled in one step, hence prompt+output.
        if self.whole_prefill_cap is not None and total > self.whole_prefill_cap:
            return f"prompt+output={total} tokens exceeds the per-step token cap {self.whole_prefill_cap}"
        return None

    def add_request(self, request: Request) -> None:
        if request.req_id in self.requests:
            raise ValueError(f"duplicate req_id {request.req_id!r}")
        reason = self.rejection_reason(request)
        if reason is not None:
            request.status = RequestStatus.FINISHED_REJECTED
            request.rejection_reason = reason
            request.times.finished_time = request.arrival_time
            self._newly_rejected.append(request.req_id)
            return
        self.requests[request.req_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # Policy hooks ----------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def pick_victim(self, candidates: list[Request]) -> Request:
        """The running request to preempt when KV runs out: the latest arrival (vLLM, Sarathi-Serve)."""
        return max(candidates, key=lambda r: (r.arrival_time, r.req_id))

    # Mechanics used by schedule() -------------------------------------------------------------------------------
    def _new_output(self) -> SchedulerOutput:
        finished, self._newly_rejected = self._newly_rejected, []
        preempted, self._step_preempted = self._step_preempted, []
        return SchedulerOutput(num_scheduled_tokens={}, preempted_req_ids=preempted, finished_req_ids=finished)

    def _admit(self, request: Request, now: float) -> None:
        """WAITING/PREEMPTED -> RUNNING (the caller has popped it from ``waiting`` and allocated its KV)."""
        request.status = RequestStatus.RUNNING
        if request.times.first_scheduled_time is None:
            request.times.first_scheduled_time = now
        self.running.append(request)

    def _preempt(self, request: Request, now: float) -> None:
        """Recompute preemption: drop r's KV, rewind it to zero computed tokens, requeue it at the front."""
        assert request.status == RequestStatus.RUNNING, request
        self.block_manager.free(request.req_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.running.remove(request)
        self.waiting.appendleft(request)
        self.num_preemptions += 1
        self._step_preempted.append(request.req_id)

    def _preempt_until_slot(self, request: Request, now: float, scheduled: dict[str, int]) -> bool:
        """Preempt victims until ``request`` can grow by one token; False if ``request`` itself was the victim.

        Victims come only from running requests not yet scheduled in this step, so a batch under construction is
        never invalidated.
        """
        bm = self.block_manager
        target = request.num_computed_tokens + 1
        while not bm.append_slot(request.req_id, target):
            candidates = [r for r in self.running if r.req_id not in scheduled]
            victim = self.pick_victim(candidates)
            self._preempt(victim, now)
            if victim is request:
                return False
        return True

    def _schedule_decodes(self, output: SchedulerOutput, decodes: list[Request], now: float, limit: int) -> int:
        """Give each of ``decodes`` (a snapshot, in priority order) one token, preempting when KV runs out.

        At most ``limit`` decodes are scheduled. Returns how many were. This is the simulator's hot loop, so the
        bookkeeping of ``_add_decode`` is inlined.
        """
        bm = self.block_manager
        append_slot = bm.append_slot
        scheduled = output.num_scheduled_tokens
        ctx_lens = output.decode_context_lens
        sampling = output.sampling_req_ids
        running = RequestStatus.RUNNING
        n = 0
        for request in decodes:
            if n >= limit:
                break
            if request.status != running:
                continue  # preempted earlier in this loop
            req_id = request.req_id
            ctx = request.num_computed_tokens + 1
            if not append_slot(req_id, ctx) and not self._preempt_until_slot(request, now, scheduled):
                continue
            request.num_computed_tokens = ctx
            scheduled[req_id] = 1
            ctx_lens.append(ctx)
            sampling.append(req_id)
            n += 1
        return n

    def _add_decode(self, output: SchedulerOutput, request: Request) -> None:
        """Schedule one decode token (its KV slot must already be allocated)."""
        ctx = request.num_computed_tokens + 1
        request.num_computed_tokens = ctx
        output.num_scheduled_tokens[request.req_id] = 1
        output.decode_context_lens.append(ctx)
        output.sampling_req_ids.append(request.req_id)

    def _add_chunk(self, output: SchedulerOutput, request: Request, num_new_tokens: int) -> None:
        """Schedule a prefill chunk (its KV must already be allocated); the final chunk samples a token."""
        before = request.num_computed_tokens
        request.num_computed_tokens = before + num_new_tokens
        output.num_scheduled_tokens[request.req_id] = num_new_tokens
        output.prefill_chunks.append((num_new_tokens, before))
        output.prefill_req_ids.append(request.req_id)
        if request.num_computed_tokens == request.num_prompt_tokens + request.num_output_tokens:
            output.sampling_req_ids.append(request.req_id)

    def _schedule_stall_free(self, now: float, token_budget: int, chunk_align: int) -> SchedulerOutput:
        """Sarathi-Serve's stall-free hybrid batch under a fixed token budget (algorithms.md section 4).

        1. every running decode gets its token (preempting the latest arrival when KV runs out);
        2. ongoing partial prefills (including recomputes) continue, FCFS, in chunks;
        3. new prompts are admitted FCFS while the budget, ``max_num_seqs`` and KV (whole prompt, watermark) allow.
        A chunk smaller than what remains is rounded down to a multiple of ``chunk_align``; a prompt's final
        remainder is not. Shared by ``sarathi`` and ``vllm`` with ``chunked_prefill``.
        """
        output = self._new_output()
        decodes: list[Request] = []
        partials: list[Request] = []
        for request in self.running:
            (partials if request.is_prefill else decodes).append(request)
        # NOTE(accelgen): decodes beyond the budget wait a step; with the default budgets (>= max_num_seqs) never.
        n = self._schedule_decodes(output, decodes, now, token_budget)

        # Next, continue partial prefills.
        for request in partials:
            if request.status != RequestStatus.RUNNING:
                continue
            chunk = self._chunk_size(request.num_uncomputed_tokens, token_budget - n, chunk_align)
            if chunk <= 0:
                break
            self._add_chunk(output, request, chunk)
            n += chunk

        # Next, admit WAITING requests, unless this step had to preempt (re-admitting at once would thrash).
        waiting = self.waiting
        while not self._step_preempted and waiting and len(self.running) < self.max_num_seqs and n < token_budget:
            request = waiting[0]
            chunk = self._chunk_size(request.num_uncomputed_tokens, token_budget - n, chunk_align)
            if chunk <= 0:
                break
            # KV for the whole prompt (plus any outputs to recompute) is taken at admission, as vLLM does.
            if not self.block_manager.allocate_slots(request.req_id, request.num_tokens, use_watermark=True):
                break
            waiting.popleft()
            self._admit(request, now)
            self._add_chunk(output, request, chunk)
            n += chunk
        assert n <= token_budget
        return self._finish_output(output)

    @staticmethod
    def _chunk_size(remaining: int, budget_left: int, chunk_align: int) -> int:
        if remaining <= budget_left:
            return remaining
        return budget_left - budget_left % chunk_align if chunk_align > 1 else budget_left

    def _finish_output(self, output: SchedulerOutput) -> SchedulerOutput:
        output.num_used_blocks = self.block_manager.num_used_blocks
        # Preemptions made while building this step are reported with it.
        output.preempted_req_ids.extend(self._step_preempted)
        self._step_preempted = []
        assert len(self.running) <= self.max_num_seqs
        if self.token_budget is not None:
            assert sum(output.num_scheduled_tokens.values()) <= self.token_budget, "token budget exceeded"
        return output

    # Results ---------------------------------------------------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput, result: StepResult, now: float) -> list[Request]:
        requests = self.requests
        step_time = result.step_time
        for req_id in output.prefill_req_ids:
            request = requests[req_id]
            if step_time > request.max_prefill_step_time:
                request.max_prefill_step_time = step_time
        finished: list[Request] = []
        live = result.sampled_token_ids if result.sampled_token_ids else None
        for req_id in output.sampling_req_ids:
            request = requests[req_id]
            if request.status != RequestStatus.RUNNING:
                continue  # preempted after being scheduled (cannot happen in the built-in policies)
            request.num_output_tokens += 1
            request.token_times.append(now)
            if live is not None and request.output_token_ids is not None:
                request.output_token_ids.append(live[req_id])
            if request.num_output_tokens == 1:
                request.times.first_token_time = now
            if request.num_output_tokens >= request.max_tokens:
                request.status = RequestStatus.FINISHED_STOPPED
                request.times.finished_time = now
                finished.append(request)
        if finished:
            bm = self.block_manager
            for request in finished:
                bm.free(request.req_id)
                del requests[request.req_id]
            self.running = [r for r in self.running if r.status == RequestStatus.RUNNING]
        return finished

    def iter_unfinished(self) -> Iterable[Request]:
        yield from self.running
        yield from self.waiting
