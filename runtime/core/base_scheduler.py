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

**Preemption: recompute or swap** (``preemption_mode``, algorithms.md section 7.5). ``recompute`` drops the
victim's KV and requeues it at the front of ``waiting`` to prefill its prompt and outputs again. ``swap`` moves
its blocks to CPU swap space (``BlockManager.swap_out``) and parks it in ``swapped``, counters intact; when the
swap space is full it recomputes instead (vLLM v0 aborts the request there; we never lose one). ``auto`` takes
the shorter predicted way, swap iff there is room and ``2·T_swap(blocks(n)) < T_rec(n)`` (out and back in)
with ``n`` the victim's computed tokens and

    T_rec(n) = T̂(D_ref ∪ {(n, 0)}) − T̂(D_ref),   D_ref = RECOMPUTE_REF_DECODES decodes,

the marginal time of re-prefilling ``n`` tokens in a busy step (in the linear cost model the decodes' contexts
cancel, only their count against the GEMM knee matters; 32 is the SLO reference batch). A request with nothing
computed is never swapped. Swapped requests resume FCFS (``_resume_swapped``), before any new admission, when
their blocks fit above the watermark and the step preempted nobody; the copies travel in the step's
``blocks_to_swap_out``/``blocks_to_swap_in`` and the executor charges their time to that step.
"""
from __future__ import annotations

from collections import deque
from typing import Mapping

from runtime.core.errors import ConfigError
from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request, RequestStatus, SLOClass

PREEMPTION_MODES = ("recompute", "swap", "auto")
#: Decodes in the reference step that prices a recompute (see the module docstring).
RECOMPUTE_REF_DECODES = 32


def recompute_time_s(cost_model, num_tokens: int, ref_decodes: int = RECOMPUTE_REF_DECODES) -> float:
    """``T_rec(n)``: the marginal time of a ``num_tokens`` re-prefill in a step of ``ref_decodes`` decodes."""
    if num_tokens <= 0:
        return 0.0
    decodes = [1] * ref_decodes
    return cost_model.predict([(num_tokens, 0)], decodes) - cost_model.predict([], decodes)


def swap_crossover_tokens(cost_model, kv_transfer, block_size: int, max_tokens: int) -> int | None:
    """Smallest ``n`` (block multiples up to ``max_tokens``) from which swapping beats recomputing, or None."""
    for blocks in range(1, -(-max_tokens // block_size) + 1):
        n = blocks * block_size
        if 2 * kv_transfer.swap_time_s(blocks) < recompute_time_s(cost_model, n):
            return n
    return None


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
        preemption_mode: str = "recompute",
        kv_transfer: object | None = None,
        name: str = "",
    ) -> None:
        if preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"scheduler.preemption_mode must be one of {', '.join(PREEMPTION_MODES)}; "
                              f"got {preemption_mode!r}")
        if preemption_mode == "auto" and (kv_transfer is None or cost_model is None):
            raise ConfigError("scheduler.preemption_mode=auto needs a latency predictor and a KV transfer model")
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
        self.preemption_mode = preemption_mode
        # KVTransferModel (swap time per block count); None: swap costs are unknown to the policy.
        self.kv_transfer = kv_transfer
        self.waiting: deque[Request] = deque()
        # Preempted by swapping, in preemption order; their KV is in CPU swap space.
        self.swapped: deque[Request] = deque()
        # Running requests, split by phase so the hot decode loop needs no filtering: ``decoding`` miss only their
        # last sampled token; ``prefilling`` have a prompt (or a recompute) still to compute.
        self.decoding: list[Request] = []
        self.prefilling: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.num_swaps = 0
        self._newly_finished: list[str] = []
        # Arrival order of admitted requests: breaks ties between equal arrival times (victim choice).
        self._arrival_order: dict[str, int] = {}
        self._num_added = 0
        self._step_preempted: list[str] = []
        self._step_swapped_out: list[str] = []
        self._step_swapped_in: list[str] = []
        self._step_swap_out: list[tuple[int, int]] = []
        self._step_swap_in: list[tuple[int, int]] = []
        self._resume_growth = 0
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
            self._newly_finished.append(request.req_id)
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
        return bool(self.waiting or self.decoding or self.prefilling or self.swapped)

    # Policy hooks ----------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def pick_victim(self, candidates: list[Request]) -> Request:
        """The running request to preempt when KV runs out: the latest arrival (vLLM, Sarathi-Serve)."""
        order = self._arrival_order
        return max(candidates, key=lambda r: (r.arrival_time, order[r.req_id]))

    # Mechanics used by schedule() -------------------------------------------------------------------------------
    def _new_output(self) -> SchedulerOutput:
        finished, self._newly_finished = self._newly_finished, []
        return SchedulerOutput(num_scheduled_tokens={}, finished_req_ids=finished)

    def _admit(self, request: Request, now: float) -> None:
        """WAITING/PREEMPTED -> RUNNING (the caller has popped it from ``waiting`` and allocated its KV)."""
        request.status = RequestStatus.RUNNING
        if request.times.first_scheduled_time is None:
            request.times.first_scheduled_time = now
        self.prefilling.append(request)

    def preemption_kind(self, request: Request) -> str:
        """``"swap"`` or ``"recompute"`` for a victim, by ``preemption_mode`` (module docstring)."""
        mode = self.preemption_mode
        if mode == "recompute" or request.num_computed_tokens == 0:
            return "recompute"
        bm = self.block_manager
        if not bm.can_swap_out(request.req_id):
            return "recompute"
        if mode == "swap":
            return "swap"
        t_swap, t_rec = self.preemption_times(request)
        return "swap" if 2.0 * t_swap < t_rec else "recompute"

    def preemption_times(self, request: Request) -> tuple[float, float]:
        """``(T_swap one way, T_rec)`` for ``request`` now (inf where the model is missing)."""
        blocks = self.block_manager.num_blocks_of(request.req_id)
        t_swap = self.kv_transfer.swap_time_s(blocks) if self.kv_transfer is not None else float("inf")
        t_rec = recompute_time_s(self.cost_model, request.num_computed_tokens) if self.cost_model is not None \
            else float("inf")
        return t_swap, t_rec

    def _preempt(self, request: Request, now: float) -> str:
        """Preempt a running request by swap or recompute (``preemption_kind``); returns which."""
        assert request.status == RequestStatus.RUNNING, request
        kind = self.preemption_kind(request)
        (self.prefilling if request in self.prefilling else self.decoding).remove(request)
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.num_preemptions += 1
        self._step_preempted.append(request.req_id)
        if kind == "swap":
            self._step_swap_out += self.block_manager.swap_out(request.req_id)
            self._step_swapped_out.append(request.req_id)
            request.num_swaps += 1
            self.num_swaps += 1
            self.swapped.append(request)
        else:
            self.block_manager.free(request.req_id)
            if request.num_computed_tokens > request.recompute_until:
                request.recompute_until = request.num_computed_tokens
            request.num_computed_tokens = 0
            self.waiting.appendleft(request)
        return kind

    def _admit_swapped(self, request: Request) -> bool:
        """Whether a swapped request's blocks can come back now (a policy with a KV ledger reserves them here).

        Its blocks plus the one its next token may open must fit above the watermark: otherwise a resumed decode
        would be swapped straight back out to make room for itself.
        """
        bm = self.block_manager
        need = max(bm.num_swapped_blocks_of(request.req_id), bm.blocks_for(request.num_computed_tokens + 1))
        # Blocks the decodes resumed before it in this step will open for their next token.
        return bm.num_free_blocks - need - self._resume_growth >= bm.watermark_blocks

    def _resume_swapped(self, now: float) -> list[Request]:
        """Swap requests back in, FCFS, while their blocks fit and slots allow; returns the resumed ones.

        Never in a step that preempted (it would swap straight back out). A resumed request is RUNNING again
        with every counter as it was: a decode (only its last sampled token uncomputed) joins ``decoding``, a
        request swapped mid-prefill ``prefilling``. The caller may schedule the resumed decodes this step.
        """
        resumed: list[Request] = []
        swapped, bm = self.swapped, self.block_manager
        self._resume_growth = 0
        while swapped and not self._step_preempted and self.num_running < self.max_num_seqs:
            request = swapped[0]
            if not self._admit_swapped(request):
                break
            swapped.popleft()
            self._step_swap_in += bm.swap_in(request.req_id, use_watermark=False)
            self._step_swapped_in.append(request.req_id)
            # A request swapped mid-prefill may hold more blocks than its next token needs: that surplus is its
            # own, not room for the next one, so only growth counts.
            self._resume_growth += max(0, bm.blocks_for(request.num_computed_tokens + 1) - bm.num_blocks_of(request.req_id))
            request.status = RequestStatus.RUNNING
            if request.num_output_tokens and request.num_uncomputed_tokens == 1:
                self.decoding.append(request)
            else:
                self.prefilling.append(request)
            resumed.append(request)
        return resumed

    def _schedule_resumed(self, output: SchedulerOutput, now: float, limit: int) -> int:
        """Resume swapped requests and give the resumed decodes their token this step; returns how many ran."""
        resumed = self._resume_swapped(now)
        decodes = [r for r in resumed if r in self.decoding]
        return self._schedule_decodes(output, decodes, now, limit) if decodes and limit > 0 else 0

    def _grow(self, request: Request, num_tokens: int) -> bool:
        """Make room for ``request`` to hold ``num_tokens`` tokens (a decode's next block); False if impossible."""
        return self.block_manager.append_slot(request.req_id, num_tokens)

    def _preempt_until_slot(self, request: Request, now: float, scheduled: set[str] | dict[str, int]) -> bool:
        """Preempt victims until ``request`` can grow by one token; False if ``request`` itself was the victim.

        Victims come only from running requests not yet scheduled in this step, so a batch under construction is
        never invalidated.
        """
        target = request.num_computed_tokens + 1
        while not self._grow(request, target):
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
                    and not self._grow(request, ctx):
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
        if before < request.recompute_until:
            output.recompute_req_ids.append(request.req_id)
            output.num_recompute_tokens += min(before + num_new_tokens, request.recompute_until) - before
        if request.num_computed_tokens == request.num_prompt_tokens + request.num_output_tokens:
            output.prefill_done_req_ids.append(request.req_id)

    def _schedule_stall_free(self, now: float, token_budget: int, chunk_align: int) -> SchedulerOutput:
        """Sarathi-Serve's stall-free hybrid batch under a fixed token budget (algorithms.md section 4).

        1. every running decode gets its token (preempting the latest arrival when KV runs out), then swapped
           requests resume if no one was preempted;
        2. ongoing partial prefills (including recomputes) continue, FCFS, in chunks;
        3. new prompts are admitted FCFS while the budget, ``max_num_seqs`` and KV (whole prompt, watermark) allow.
        A chunk smaller than what remains is rounded down to a multiple of ``chunk_align``; a prompt's final
        remainder is not. Shared by ``sarathi`` and ``vllm`` with ``chunked_prefill``.
        """
        output = self._new_output()
        decodes = list(self.decoding)
        # NOTE(accelgen): decodes beyond the budget wait a step; with the default budgets (>= max_num_seqs) never.
        n = self._schedule_decodes(output, decodes, now, token_budget)
        if self.swapped:
            n += self._schedule_resumed(output, now, token_budget - n)
        partials = [r for r in self.prefilling if r.req_id not in output.num_scheduled_tokens]

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
        output.num_waiting = len(self.waiting) + len(self.swapped)
        # Preemptions made while building this step are reported with it.
        output.preempted_req_ids.extend(self._step_preempted)
        self._step_preempted = []
        if self._step_swapped_out or self._step_swapped_in:
            output.swapped_out_req_ids, self._step_swapped_out = self._step_swapped_out, []
            output.swapped_in_req_ids, self._step_swapped_in = self._step_swapped_in, []
            output.blocks_to_swap_out, self._step_swap_out = self._step_swap_out, []
            output.blocks_to_swap_in, self._step_swap_in = self._step_swap_in, []
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
                request = requests[req_id]
                if request.output_token_ids is None:
                    request.output_token_ids = []
                request.output_token_ids.append(token_id)
        for request in finished:
            request.status = RequestStatus.FINISHED_STOPPED
            request.times.finished_time = now
        # Prefills that emitted their token are decodes from now on.
        if output.prefill_done_req_ids:
            done = [requests[req_id] for req_id in output.prefill_done_req_ids]
            self.prefilling = [r for r in self.prefilling if r not in done]
            self.decoding.extend(r for r in done if r.status == RequestStatus.RUNNING)
        if finished:
            # Reported in the next step's finished_req_ids, so an executor can drop their state (as vLLM does).
            self._newly_finished.extend(r.req_id for r in finished)
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

