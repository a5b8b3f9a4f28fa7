"""BaseScheduler: queues, admission checks, KV bookkeeping and preemption mechanics shared by every policy.

Policies (``heuristics/*``, the Oracle) override ``schedule(now)`` and the hooks ``pick_victim`` and
``rejection_reason``; everything that must be identical across policies lives here, so the baselines differ
only in policy (algorithms.md section 4).

Request flow: ``add_request`` either rejects the request at once (``FINISHED_REJECTED`` with a reason) or
appends it to ``waiting``. A policy allocates KV through ``block_manager`` and moves a request to ``prefilling``
with ``_admit``; ``_add_chunk`` schedules prompt (or recompute) chunks, ``_schedule_decodes`` gives running decodes
their token and preempts (``pick_victim``, ``_preempt``: free the KV, rewind, requeue at the front of ``waiting``)
when a block is missing. ``update_from_output`` appends sampled tokens, stamps their times, moves finished prefills
to ``decoding`` and finishes requests. ``_schedule_stall_free`` is the Sarathi-Serve batch that several policies
share.
"""
from __future__ import annotations

from collections import deque
from typing import Mapping

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
    #: Whether the policy may preempt (recompute): then a whole prefill can be a prompt plus its outputs so far.
    preempts: bool = True
    #: Whether the policy continues partial prefills (so it can take over a step from the Oracle's chunked plan).
    chunks_prompts: bool = True

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
        # Running requests, split by phase so the hot decode loop needs no filtering: ``decoding`` miss only their
        # last sampled token; ``prefilling`` have a prompt (or a recompute) still to compute.
        self.decoding: list[Request] = []
        self.prefilling: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._newly_rejected: list[str] = []
        # Arrival order of admitted requests: breaks ties between equal arrival times (victim choice).
        self._arrival_order: dict[str, int] = {}
        self._num_added = 0
        self._step_preempted: list[str] = []
        # The decodes of the step being built, as objects (see _schedule_decodes / update_from_output).
        self._step_output: SchedulerOutput | None = None
        self._step_decodes: list[Request] = []

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
        if self.whole_prefill_cap is not None:
            # A recompute prefills the prompt plus every output but the last in one step.
            longest = total - 1 if self.preempts else request.num_prompt_tokens
            if longest > self.whole_prefill_cap:
                what = "prompt+output-1" if self.preempts else "prompt"
                return f"{what}={longest} tokens exceeds the per-step token cap {self.whole_prefill_cap}"
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
        self._arrival_order[request.req_id] = self._num_added
        self._num_added += 1
        self.waiting.append(request)

    @property
    def running(self) -> list[Request]:
        """Every RUNNING request (a new list: decodes, then prefills)."""
        return self.decoding + self.prefilling

    @property
    def num_running(self) -> int:
        return len(self.decoding) + len(self.prefilling)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.decoding or self.prefilling)

    # Policy hooks ----------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def pick_victim(self, candidates: list[Request]) -> Request:
        """The running request to preempt when KV runs out: the latest arrival (vLLM, Sarathi-Serve)."""
        order = self._arrival_order
        return max(candidates, key=lambda r: (r.arrival_time, order[r.req_id]))

    # Mechanics used by schedule() -------------------------------------------------------------------------------
    def _new_output(self) -> SchedulerOutput:
        finished, self._newly_rejected = self._newly_rejected, []
        return SchedulerOutput(num_scheduled_tokens={}, finished_req_ids=finished)

    def _admit(self, request: Request, now: float) -> None:
        """WAITING/PREEMPTED -> RUNNING (the caller has popped it from ``waiting`` and allocated its KV)."""
        request.status = RequestStatus.RUNNING
        if request.times.first_scheduled_time is None:
            request.times.first_scheduled_time = now
        self.prefilling.append(request)

    def _preempt(self, request: Request, now: float) -> None:
        """Recompute preemption: drop r's KV, rewind it to zero computed tokens, requeue it at the front."""
        assert request.status == RequestStatus.RUNNING, request
        self.block_manager.free(request.req_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        (self.prefilling if request in self.prefilling else self.decoding).remove(request)
        self.waiting.appendleft(request)
        self.num_preemptions += 1
        self._step_preempted.append(request.req_id)

    def _preempt_until_slot(self, request: Request, now: float, scheduled: set[str] | dict[str, int]) -> bool:
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

        Only the first ``limit`` decodes are considered; returns how many were scheduled. This is the simulator's
        hot loop (about 90 decodes a step on the Azure trace): the loop only advances counters, and only a decode
        that opens a new KV block calls into the block manager; the output's lists are built afterwards in bulk.
        """
        bm = self.block_manager
        tables = bm.tables
        block_size = bm.block_size
        running = RequestStatus.RUNNING
        batch = decodes if len(decodes) <= limit else decodes[:limit]
        preempted_any = False
        for request in batch:
            if preempted_any and request.status != running:
                continue  # preempted earlier in this loop
            ctx = request.num_computed_tokens + 1
            # Only a token that opens a new block can need one (tables never fall short of computed tokens).
            if not (ctx - 1) % block_size and ctx > len(tables[request.req_id]) * block_size \
                    and not bm.append_slot(request.req_id, ctx):
                preempted_any = True
                if not self._preempt_until_slot(request, now, self._scheduled_ids(output, batch, request)):
                    continue
            request.num_computed_tokens = ctx
        if preempted_any:
            batch = [r for r in batch if r.status == running]
        ids = [r.req_id for r in batch]
        output.decode_req_ids += ids
        output.decode_context_lens += [r.num_computed_tokens for r in batch]
        if output.num_scheduled_tokens:
            output.num_scheduled_tokens.update(dict.fromkeys(ids, 1))
        else:
            output.num_scheduled_tokens = dict.fromkeys(ids, 1)
        # update_from_output reuses the objects instead of looking every id up again.
        if self._step_output is not output:
            self._step_output, self._step_decodes = output, []
        self._step_decodes += batch
        return len(batch)

    @staticmethod
    def _scheduled_ids(output: SchedulerOutput, batch: list[Request], current: Request) -> set[str]:
        """Ids already in this step: the output's, plus the decodes of ``batch`` before ``current`` (rare path)."""
        before = batch[:batch.index(current)]
        return {*output.num_scheduled_tokens, *(r.req_id for r in before if r.status == RequestStatus.RUNNING)}

    def _add_chunk(self, output: SchedulerOutput, request: Request, num_new_tokens: int) -> None:
        """Schedule a prefill chunk (its KV must already be allocated); the final chunk samples a token."""
        before = request.num_computed_tokens
        request.num_computed_tokens = before + num_new_tokens
        output.num_scheduled_tokens[request.req_id] = num_new_tokens
        output.prefill_chunks.append((num_new_tokens, before))
        output.prefill_req_ids.append(request.req_id)
        if request.num_computed_tokens == request.num_prompt_tokens + request.num_output_tokens:
            output.prefill_done_req_ids.append(request.req_id)

    def _schedule_stall_free(self, now: float, token_budget: int, chunk_align: int) -> SchedulerOutput:
        """Sarathi-Serve's stall-free hybrid batch under a fixed token budget (algorithms.md section 4).

        1. every running decode gets its token (preempting the latest arrival when KV runs out);
        2. ongoing partial prefills (including recomputes) continue, FCFS, in chunks;
        3. new prompts are admitted FCFS while the budget, ``max_num_seqs`` and KV (whole prompt, watermark) allow.
        A chunk smaller than what remains is rounded down to a multiple of ``chunk_align``; a prompt's final
        remainder is not. Shared by ``sarathi`` and ``vllm`` with ``chunked_prefill``.
        """
        output = self._new_output()
        decodes = list(self.decoding)
        partials = list(self.prefilling)
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
        while not self._step_preempted and waiting and self.num_running < self.max_num_seqs and n < token_budget:
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

    def _remove_waiting(self, request: Request) -> None:
        """Take ``request`` out of the waiting queue (policies with their own queue index override this)."""
        self.waiting.remove(request)

    def schedule_batch(self, now: float, batch: Mapping[str, int]) -> SchedulerOutput:
        """Run a batch chosen outside the policy (the Oracle's plan) with this policy's own mechanics.

        ``batch`` maps req_id to units: 1 for a running decode, a chunk for a prefill-phase request. Decodes get
        their token first (preempting as usual if a block is missing), then partial prefills continue, then
        waiting requests are admitted (their whole ``num_tokens`` allocated, without the watermark: the plan
        already counted blocks). An entry that no longer fits (a victim of this step's preemption, a block that
        is not there) is skipped, so the step is always one the engine can execute; the caller checks what ran.
        """
        output = self._new_output()
        requests = self.requests
        decodes = [r for r in self.decoding if r.req_id in batch]
        if decodes:
            self._schedule_decodes(output, decodes, now, len(decodes))
        for req_id, units in batch.items():
            request = requests.get(req_id)
            if request is None or req_id in output.num_scheduled_tokens or units < 1:
                continue
            if request.status == RequestStatus.RUNNING:
                if request in self.prefilling and units <= request.num_uncomputed_tokens:
                    self._add_chunk(output, request, units)
                continue
            if self._step_preempted or self.num_running >= self.max_num_seqs or units > request.num_uncomputed_tokens:
                continue
            if not self.block_manager.allocate_slots(req_id, request.num_tokens, use_watermark=False):
                continue
            self._remove_waiting(request)
            self._admit(request, now)
            self._add_chunk(output, request, units)
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
        # (The per-step token budget is checked by every policy's own loop and by the contract tests.)
        assert self.num_running <= self.max_num_seqs
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
        add_finished = finished.append
        # Decodes: the hot loop (no first-token case: a decode has sampled before).
        decodes = self._step_decodes if output is self._step_output else None
        if decodes is None or len(decodes) != len(output.decode_req_ids):
            decodes = [requests[req_id] for req_id in output.decode_req_ids]
        for request in decodes:
            num_output_tokens = request.num_output_tokens + 1
            request.num_output_tokens = num_output_tokens
            request.token_times.append(now)
            if num_output_tokens >= request.max_tokens:
                add_finished(request)
        for req_id in output.prefill_done_req_ids:
            request = requests[req_id]
            request.num_output_tokens += 1
            request.token_times.append(now)
            if request.num_output_tokens == 1:
                request.times.first_token_time = now
            if request.num_output_tokens >= request.max_tokens:
                add_finished(request)
        if result.sampled_token_ids:  # live runtime: keep the real tokens
            for req_id, token_id in result.sampled_token_ids.items():
                ids = requests[req_id].output_token_ids
                if ids is not None:
                    ids.append(token_id)
        for request in finished:
            request.status = RequestStatus.FINISHED_STOPPED
            request.times.finished_time = now
        # Prefills that emitted their token are decodes from now on.
        if output.prefill_done_req_ids:
            done = [requests[req_id] for req_id in output.prefill_done_req_ids]
            self.prefilling = [r for r in self.prefilling if r not in done]
            self.decoding.extend(r for r in done if r.status == RequestStatus.RUNNING)
        if finished:
            bm = self.block_manager
            for request in finished:
                bm.free(request.req_id)
                del requests[request.req_id]
                del self._arrival_order[request.req_id]
            if len(finished) > 4:
                self.decoding = [r for r in self.decoding if r.status == RequestStatus.RUNNING]
            else:
                for request in finished:
                    if request in self.decoding:  # identity comparison: Request defines no __eq__
                        self.decoding.remove(request)
        return finished

