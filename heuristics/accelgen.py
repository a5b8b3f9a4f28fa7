"""AccelGen: SLO-guaranteed dynamic chunking, iteration-level SLO prioritisation, multi-resource batching.

algorithms.md section 5. The latency predictor ``T̂`` is injected (``cost_model``: the cost model in simulation, a
fitted profile on the live runtime); a predictor with ``predict_from_sums`` is evaluated in O(1) per query,
any other ``CostModel`` through ``predict``.

**Deadlines, slack, caps** (gap semantics, the default). For a decode ``d_r = τ_{r,g_r} + S^tbt_r`` (its last
token time plus its TBT SLO); for a waiting or partial prefill ``d_r = a_r + S^ttft_r`` (a preempted request
that has emitted tokens keeps its next-token deadline ``τ_{r,g_r} + S^tbt_r``). Slack
``σ_r = d_r − now − ℓ_r``, with ``ℓ_r = 0`` for a decode and, for a prefill of ``m`` remaining tokens,

    ℓ_r = ⌊m / P_k⌋ · T̂({(P_k, 0)}) + T̂({(m mod P_k, 0)}),   P_k = max aligned c : T̂({(c, 0)}) ≤ cap_k

the time of its remaining prompt chunked at its own cap with no co-running decodes (a lower bound: it only
orders candidates, and it is static while the request waits, so the waiting queue stays sorted without a
per-step re-sort). Caps: ``cap_r = (1 − margin)·(d_r − now)`` for a decode, ``(1 − margin)·S^tbt_r`` for a prefill
chunk (``bound_prefill_iterations``). A decode whose gap is already lost (``cap_r`` below the decode-only time
``T̂(D)``) falls back to ``(1 − margin)·S^tbt_r`` [our design choice]: its gap fails whatever we do, and
honouring it would starve every prefill. ``slo_semantics: iteration`` uses ``(1 − margin)·S^tbt_r`` for all.

**Component 1, dynamic chunking.** All running decodes ``D`` ride (in slack order, up to the budget); the
batch cap is ``C = min_{r∈D} cap_r``. Each prefill candidate ``r`` joins with the largest chunk

    c_r = max { c ∈ {m_r} ∪ chunk_align·ℕ, c ≤ m_r, c ≥ min_chunk unless c = m_r :
                T̂(B ∪ {(c, q_r)}) ≤ min(C, cap_r),  N(B) + c ≤ max_budget }

found by bisection (``T̂`` is non-decreasing in ``c``), and ``C ← min(C, cap_r)``; so ``T̂(B) ≤ C`` holds for
every batch that has a prefill chunk, and the step's token budget ``P`` (``last_plan.budget_tokens``: the
largest fresh chunk that still fits ``C`` after the decodes) shrinks when a tight request joins and grows when
only loose ones remain. Off: a fixed ``token_budget`` (Sarathi-Serve's ``auto`` rule) and no time cap.

**Component 2, prioritisation.** Candidates (partial prefills and the waiting queue) in order of
``(σ_r, S^tbt_r, a_r)``. The least-slack candidate's group (``group_by: class``, or ``ratio``: ``S^tbt``
within a factor ``group_ratio``) is the anchor; a candidate is eligible if it is in the anchor group, urgent
(``σ_r < urgent_frac·S^ttft_r``) or its cap is at least ``min(C, cap_anchor)`` (a request as loose as the batch
cannot shrink its budget; with no decodes ``C = ∞`` and the anchor's cap is the batch's). Urgent candidates go
first in slack order. Only the first ``scan_limit`` eligible candidates are considered. Without dynamic
chunking there is no cap to protect, so every candidate is eligible. Off: FCFS (partials, then the queue as
Sarathi-Serve keeps it), every candidate eligible, none urgent.

``demote_lost`` [our design choice]: a prefill candidate with ``σ_r < 0`` cannot meet its TTFT any more, so it
goes after every feasible one (still served, oldest first). Strict slack order would serve the most hopeless
request first, and under overload that lateness cascades to every request behind it (the earliest-deadline-first
domino effect). Measured on the default mixed workload, 1000 requests (``accelgen scheduler=accelgen
scheduler.demote_lost=true|false workload.arrival.rate=4|5``): SLO attainment 0.91 vs 0.50 at 4 req/s and 0.81 vs
0.22 at 5 req/s, mean JCT 18.3 vs 19.3 s and 30.1 vs 38.7 s; the price is the lost requests' tail (p99 TTFT 81 vs
18 s at 4 req/s).

**Component 3, multi-resource batching.** Non-urgent eligible candidates are taken greedily by

    score_r = w_comp · (d_comp(r)/P_rem)·(P_rem/P) + w_kv · (d_kv(r)/F_rem)·(F_rem/F)
    d_comp(r) = min(m_r, P_rem),   d_kv(r) = blocks(p_r + ô_r) − held_r,   F = free blocks − kv_headroom·M

as specified (algorithms.md §5: the demand normalised by what is left, weighted by how much is left). The
normalisation cancels: ``score_r = w_comp·d_comp(r)/P + w_kv·d_kv(r)/F`` with ``P, F`` fixed for the step, so
the rule prefers the largest combined demand (a long prompt while compute is idle, a long expected output for
KV), and what is left enters only through ``d_comp = min(m_r, P_rem)`` and the admission checks below. Ties:
smaller slack, then partial prefills, so started prompts finish.
Admission is guarded by the projected KV ``Σ_{r∈running∪new} blocks(p_r + max(g_r + 1, ô_r)) ≤ (1 −
kv_headroom)·M`` (``ô`` from ``len_estimator``); with ``ô = o`` it removes KV-caused preemption. A request that
fails the guard or the allocation is skipped, not a barrier (both only tighten as the step fills, so such a
request is dropped from the step's candidates at once: a full cache costs one pass). Off: first-fit in candidate
order, whole-prompt allocation with the watermark only, the first failure stops admission (Sarathi-Serve).

A new request's whole prompt (plus outputs to recompute) is allocated at admission, as in vLLM, so a partial
prefill never waits for KV. No new request is admitted in a step that preempted (re-admitting would thrash).
Preemption is recompute; the victim (``preempt_victim: auto``: ``largest_slack`` with ``slo_priority``, else
Sarathi-Serve's ``latest_arrival``) is the unscheduled running request with the largest slack, ties by most KV
held. If a step would be empty (no decodes, and no eligible candidate fits its
cap), the first candidate in slack order whose chunk fits its own cap runs alone; if none does (an SLO tighter
than any chunk), the least-slack one runs one ``min_chunk`` chunk (``last_plan.forced``) rather than stalling.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass

from heuristics.length_estimators import make_length_estimator
from heuristics.sarathi import auto_token_budget
from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput
from runtime.core.request import Request, RequestStatus

_INF = math.inf


@dataclass(slots=True)
class StepPlan:
    """What the last ``schedule`` decided, for tests, notebooks and the iteration log."""

    cap_s: float = _INF            # C: the tightest cap of the batch (inf: uncapped)
    budget_tokens: int = 0         # P: the largest fresh prefill chunk that fit C after the decodes
    predicted_s: float = 0.0       # T̂ of the scheduled batch
    num_candidates: int = 0        # eligible prefill candidates considered
    forced: bool = False           # no batch met the caps; one minimal chunk ran


class _BatchTime:
    """``T̂`` of the batch under construction, with one tentative chunk added (O(1) with ``predict_from_sums``)."""

    __slots__ = ("model", "fast", "chunks", "ctx", "num_prefill", "work", "num_decodes", "sum_ctx", "num_seqs")

    def __init__(self, model, decode_ctx: list[int]) -> None:
        self.model = model
        self.fast = getattr(model, "predict_from_sums", None)
        self.chunks: list[tuple[int, int]] = []
        self.ctx = decode_ctx
        self.num_prefill, self.work = 0, 0.0
        self.num_decodes, self.sum_ctx = len(decode_ctx), sum(decode_ctx)
        self.num_seqs = self.num_decodes

    def with_chunk(self, c: int, q: int) -> float:
        if self.fast is not None:
            return self.fast(num_prefill_tokens=self.num_prefill + c, prefill_attn_work=self.work + c * (q + 0.5 * c),
                             num_decodes=self.num_decodes, sum_decode_ctx=self.sum_ctx,
                             num_seqs=self.num_seqs + (c > 0))
        return self.model.predict(self.chunks + [(c, q)] if c else self.chunks, self.ctx)

    def add(self, c: int, q: int) -> None:
        self.chunks.append((c, q))
        self.num_prefill += c
        self.work += c * (q + 0.5 * c)
        self.num_seqs += 1


class AccelGenScheduler(BaseScheduler):
    #: Admission checks the projected KV of running plus new requests (off when a KV ledger decides instead).
    projected_kv_guard = True

    def __init__(
        self,
        *,
        dynamic_chunking: bool = True,
        slo_priority: bool = True,
        multi_resource: bool = True,
        margin: float = 0.05,
        chunk_align: int = 32,
        min_chunk: int = 32,
        max_budget: int = 8192,
        token_budget: int | str = "auto",
        auto_decode_batch: int = 64,
        auto_decode_context: int = 2048,
        group_by: str = "class",
        group_ratio: float = 2.0,
        urgent_frac: float = 0.25,
        w_comp: float = 1.0,
        w_kv: float = 1.0,
        kv_headroom: float = 0.05,
        len_estimator: str = "class_median",
        len_prior_tokens: int = 256,
        len_min_samples: int = 8,
        len_window: int = 1000,
        scan_limit: int = 64,
        demote_lost: bool = True,
        preempt_victim: str = "auto",
        slo_semantics: str = "gap",
        bound_prefill_iterations: bool = True,
        **base,
    ) -> None:
        super().__init__(**base)
        if self.cost_model is None:
            raise ConfigError("scheduler=accelgen needs a latency predictor (cost_model)")
        checks = [
            (0.0 <= margin < 1.0, f"scheduler.margin must be in [0, 1), got {margin!r}"),
            (chunk_align >= 1, f"scheduler.chunk_align must be >= 1, got {chunk_align!r}"),
            (min_chunk >= 1, f"scheduler.min_chunk must be >= 1, got {min_chunk!r}"),
            (max_budget >= max(chunk_align, min_chunk),
             f"scheduler.max_budget={max_budget} must be >= chunk_align and min_chunk"),
            (group_by in ("class", "ratio"), f"scheduler.group_by must be 'class' or 'ratio', got {group_by!r}"),
            (group_ratio >= 1.0, f"scheduler.group_ratio must be >= 1, got {group_ratio!r}"),
            (urgent_frac >= 0.0, f"scheduler.urgent_frac must be >= 0, got {urgent_frac!r}"),
            (w_comp >= 0.0 and w_kv >= 0.0, f"scheduler.w_comp and w_kv must be >= 0, got {w_comp!r}, {w_kv!r}"),
            (0.0 <= kv_headroom < 1.0, f"scheduler.kv_headroom must be in [0, 1), got {kv_headroom!r}"),
            (scan_limit >= 1, f"scheduler.scan_limit must be >= 1, got {scan_limit!r}"),
            (preempt_victim in ("auto", "largest_slack", "latest_arrival"),
             f"scheduler.preempt_victim must be 'auto', 'largest_slack' or 'latest_arrival', got {preempt_victim!r}"),
            (slo_semantics in ("gap", "iteration"),
             f"scheduler.slo_semantics must be 'gap' or 'iteration', got {slo_semantics!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.dynamic_chunking, self.slo_priority, self.multi_resource = dynamic_chunking, slo_priority, multi_resource
        self.margin, self.chunk_align, self.min_chunk, self.max_budget = margin, chunk_align, min_chunk, max_budget
        self.group_by, self.group_ratio, self.urgent_frac = group_by, group_ratio, urgent_frac
        self.w_comp, self.w_kv, self.kv_headroom, self.scan_limit = w_comp, w_kv, kv_headroom, scan_limit
        self.preempt_victim, self.slo_semantics = preempt_victim, slo_semantics
        self.demote_lost = demote_lost
        self.bound_prefill_iterations = bound_prefill_iterations
        self.length_estimator = make_length_estimator(len_estimator, prior_tokens=len_prior_tokens,
                                                      min_samples=len_min_samples, window=len_window)
        if dynamic_chunking:
            self.token_budget = max_budget
        else:
            if token_budget == "auto":
                token_budget = auto_token_budget(self.cost_model, self.slo_classes, chunk_align=chunk_align,
                                                 max_budget=max_budget, decode_batch=auto_decode_batch,
                                                 decode_context=auto_decode_context)
            if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < chunk_align:
                raise ConfigError(f"scheduler.token_budget must be 'auto' or an integer >= chunk_align={chunk_align}, "
                                  f"got {token_budget!r}")
            self.token_budget = token_budget
        self.last_plan = StepPlan()
        self._now = 0.0
        self._estimate: dict[str, int] = {}
        # Waiting requests sorted by (d_r − ℓ_r, S^tbt_r, a_r, seq): static while they wait.
        self._queue: list[tuple[float, float, float, int, str]] = []
        self._queue_key: dict[str, tuple[float, float, float, int, str]] = {}
        self._seq = 0
        self._class_chunk: dict[float, tuple[int, float]] = {}
        self._step_slack: dict[str, float] = {}

    # Deadlines and slack ---------------------------------------------------------------------------------------
    def _prefill_cap(self, request: Request) -> float:
        return (1.0 - self.margin) * request.tbt_slo_s if self.bound_prefill_iterations else _INF

    def _deadline(self, request: Request) -> float:
        if request.num_output_tokens:
            return request.token_times[-1] + request.tbt_slo_s
        return request.arrival_time + request.ttft_slo_s

    def _chunk_at_cap(self, cap: float) -> tuple[int, float]:
        """``(P_k, T̂({(P_k, 0)}))``: the largest aligned chunk that runs alone within ``cap`` (cached per cap)."""
        hit = self._class_chunk.get(cap)
        if hit is None:
            predict = self.cost_model.predict
            align = self.chunk_align
            lo, hi = 1, self.max_budget // align
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if predict([(mid * align, 0)], ()) <= cap:
                    lo = mid
                else:
                    hi = mid - 1
            hit = self._class_chunk[cap] = (lo * align, predict([(lo * align, 0)], ()))
        return hit

    def _prefill_time(self, request: Request) -> float:
        """``ℓ_r``: the remaining prompt chunked at r's own cap, without co-running decodes."""
        remaining = request.num_tokens - request.num_computed_tokens
        chunk, chunk_time = self._chunk_at_cap(self._prefill_cap(request))
        full, rest = divmod(remaining, chunk)
        return full * chunk_time + (self.cost_model.predict([(rest, 0)], ()) if rest else 0.0)

    def _prefill_key(self, request: Request, seq: int) -> tuple[float, float, float, int, str]:
        return (self._deadline(request) - self._prefill_time(request), request.tbt_slo_s, request.arrival_time,
                seq, request.req_id)

    def slack(self, request: Request, now: float) -> float:
        """``σ_r`` at ``now``."""
        if request.status == RequestStatus.RUNNING and request.num_computed_tokens == request.num_tokens - 1 \
                and request.num_output_tokens:
            return self._deadline(request) - now
        return self._deadline(request) - self._prefill_time(request) - now

    # Queue bookkeeping -------------------------------------------------------------------------------------------
    def _enqueue(self, request: Request) -> None:
        self._seq += 1
        key = self._prefill_key(request, self._seq)
        self._queue_key[request.req_id] = key
        bisect.insort(self._queue, key)

    def _dequeue(self, request: Request) -> None:
        key = self._queue_key.pop(request.req_id)
        del self._queue[bisect.bisect_left(self._queue, key)]
        self.waiting.remove(request)

    def _remove_waiting(self, request: Request) -> None:
        self._dequeue(request)

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if request.status == RequestStatus.WAITING:
            self._estimate[request.req_id] = self.length_estimator.estimate(request)
            self._enqueue(request)

    def _preempt(self, request: Request, now: float) -> str:
        kind = super()._preempt(request, now)
        if kind == "recompute":
            self._enqueue(request)
        return kind

    def pick_victim(self, candidates: list[Request]) -> Request:
        if self.preempt_victim == "latest_arrival" or (self.preempt_victim == "auto" and not self.slo_priority):
            return super().pick_victim(candidates)
        tables, now = self.block_manager.tables, self._now
        return max(candidates, key=lambda r: (self.slack(r, now), len(tables.get(r.req_id, ()))))

    def update_from_output(self, output, result, now):
        finished = super().update_from_output(output, result, now)
        for request in finished:
            self.length_estimator.observe(request)
            self._estimate.pop(request.req_id, None)
        return finished

    # The step ----------------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        self._now = now
        output = self._new_output()
        plan = self.last_plan = StepPlan()
        # A snapshot: preemption removes requests from self.decoding while the decodes are scheduled.
        decodes = sorted(self.decoding, key=lambda r: r.token_times[-1] + r.tbt_slo_s) if self.slo_priority \
            else list(self.decoding)
        n = self._schedule_decodes(output, decodes, now, self.token_budget)
        if self.swapped:
            self._schedule_resumed(output, now, self.token_budget - n)
        batch = _BatchTime(self.cost_model, output.decode_context_lens)
        cap = self._decode_cap(batch, now) if self.dynamic_chunking else _INF
        admit_new = not self._step_preempted and self.num_running < self.max_num_seqs
        candidates = self._candidates(now, cap, admit_new)
        plan.num_candidates = sum(map(len, candidates))
        budget_left = self.token_budget - batch.num_decodes
        plan.budget_tokens = self._fit(batch, budget_left, 0, budget_left, cap, fresh=True) \
            if self.dynamic_chunking else budget_left
        cap = self._add_prefills(output, batch, cap, budget_left, admit_new, candidates, now)
        if not output.num_scheduled_tokens:
            self._force_progress(output, batch, now)
        plan.cap_s = cap
        plan.predicted_s = batch.with_chunk(0, 0)
        if cap != _INF:
            output.step_cap_s = cap
        # The guarantee (module docstring): a step with a prefill chunk meets its tightest member's cap.
        assert plan.forced or not output.prefill_chunks or plan.predicted_s <= cap * (1 + 1e-9), (plan, output)
        return self._finish_output(output)

    def _decode_cap(self, batch: _BatchTime, now: float) -> float:
        """``C``: the tightest cap among the step's decodes (∞ if none constrains)."""
        if not batch.num_decodes:
            return _INF
        margin = 1.0 - self.margin
        decode_time = batch.with_chunk(0, 0)
        iteration = self.slo_semantics == "iteration"
        cap = _INF
        for r in self._step_decodes:
            r_cap = margin * (r.tbt_slo_s if iteration else r.token_times[-1] + r.tbt_slo_s - now)
            if r_cap < decode_time:
                # The gap is lost already: keep only the iteration-time bound, and not even that if the decodes
                # alone break it (no batch containing r can meet it; honouring it would only starve prefills).
                r_cap = margin * r.tbt_slo_s
                if r_cap < decode_time:
                    continue
            if r_cap < cap:
                cap = r_cap
        return cap

    def _add_prefills(self, output: SchedulerOutput, batch: _BatchTime, cap: float, budget_left: int,
                      admit_new: bool, candidates: tuple[list[Request], list[Request], list[Request]],
                      now: float) -> float:
        """Add prefill chunks in priority order (urgent, then packed, then lost); returns the final cap ``C``.

        Without dynamic chunking, chunks and stops follow Sarathi-Serve exactly: a chunk is the budget left
        (aligned) or the whole remainder; when none fits, partials stop, and a new prompt that does not fit stops
        admission.
        """
        dynamic, guard = self.dynamic_chunking, self.multi_resource
        bm = self.block_manager
        limit_blocks = (1.0 - self.kv_headroom) * bm.num_blocks
        projected_guard = guard and self.projected_kv_guard
        projected = self._projected_blocks() if projected_guard and admit_new else 0
        urgent, rest, lost = (list(reversed(c)) for c in candidates)  # stacks: pop() gives the next
        scoring = guard and len(rest) > 1
        if scoring:
            rest.reverse()
        p_total = max(self.last_plan.budget_tokens, 1)
        f_total = bm.num_free_blocks - self.kv_headroom * bm.num_blocks
        stop_partials = False
        while True:
            if urgent:
                request = urgent.pop()
            elif rest:
                if scoring:
                    request = self._best_packed(rest, batch, budget_left, cap, p_total, f_total,
                                                projected_left=limit_blocks - projected
                                                if bm.num_used_blocks and projected_guard else _INF)
                    if request is None:  # nothing left that could be admitted: on to the lost ones
                        rest.clear()
                        continue
                    rest.remove(request)
                else:
                    request = rest.pop()
            elif lost:
                request = lost.pop()
            else:
                break
            is_partial = request.status == RequestStatus.RUNNING
            if is_partial:
                if stop_partials:
                    continue
            else:
                if not admit_new or self.num_running >= self.max_num_seqs:
                    continue
                need = self._projected_of(request)
                if projected_guard and projected + need > limit_blocks and bm.num_used_blocks:
                    continue
            remaining = request.num_uncomputed_tokens
            if dynamic:
                r_cap = min(cap, self._prefill_cap(request))
                c = self._fit(batch, remaining, request.num_computed_tokens, budget_left, r_cap, fresh=False)
                if c == 0:
                    continue
            else:
                r_cap = _INF
                c = self._chunk_size(remaining, budget_left, self.chunk_align)
                if c <= 0:
                    if is_partial:
                        stop_partials = True
                    else:
                        admit_new = False
                    continue
            if not is_partial:
                if not self._allocate_admission(request):
                    if not guard:
                        admit_new = False  # first fit (Sarathi-Serve): the first prompt that does not fit stops admission
                    continue
                projected += need
                self._dequeue(request)
                self._admit(request, now)
            self._add_chunk(output, request, c)
            batch.add(c, request.num_computed_tokens - c)
            budget_left -= c
            if r_cap < cap:
                cap = r_cap
            if budget_left <= 0:
                break
            if dynamic and (budget_left < self.min_chunk or batch.with_chunk(self.min_chunk, 0) > cap):
                # No aligned chunk fits any more; only a whole remainder shorter than min_chunk still might.
                small = self.min_chunk
                urgent, rest, lost = ([r for r in c if r.num_uncomputed_tokens < small] for c in (urgent, rest, lost))
                if not (urgent or rest or lost):
                    break
        assert budget_left >= 0
        return cap

    def _candidates(self, now: float, cap: float, admit_new: bool) -> tuple[list[Request], list[Request], list[Request]]:
        """``(urgent, rest, lost)``: eligible prefill candidates, each list in slack order.

        Without ``slo_priority``: FCFS (partials, then the queue as Sarathi-Serve keeps it), all in ``rest``.
        With ``demote_lost``, candidates whose TTFT deadline is already out of reach (``σ_r < 0``) come last. Since
        the queue's keys are static and ``now`` only grows, they are exactly its prefix with key below ``now``,
        found by bisection, so an overloaded queue is not rescanned every step. Leaves each candidate's slack in
        ``self._step_slack`` for the packing score's tie-break.
        """
        requests, limit = self.requests, self.scan_limit
        partials = [r for r in self.prefilling if r.status == RequestStatus.RUNNING]
        self._step_slack = slack = {}
        if not self.slo_priority:
            # FCFS. With first-fit admission the scan stops at the first misfit, so it needs no limit (as in
            # Sarathi-Serve); the packing score looks at the first scan_limit only.
            queued = (list(itertools.islice(self.waiting, limit)) if self.multi_resource else list(self.waiting)) \
                if admit_new else []
            for r in queued:
                slack[r.req_id] = 0.0
            for r in partials:
                slack[r.req_id] = 0.0
            return [], partials + queued, []
        queue = self._queue if admit_new else []
        lost_keys: list[tuple] = []
        keyed = sorted(self._prefill_key(r, 0) for r in partials)
        if self.demote_lost:
            split = bisect.bisect_left(keyed, (now,))
            lost_keys, keyed = keyed[:split], keyed[split:]
            first = bisect.bisect_left(queue, (now,))
            lost_keys += queue[:min(first, limit)]
            queue = itertools.islice(queue, first, None)
        if queue:
            # Partials sort before queued requests on equal keys (seq 0 < any queue seq): started prompts finish.
            keyed = heapq.merge(keyed, queue)
        urgent: list[Request] = []
        rest: list[Request] = []
        anchor = None
        margin, urgent_frac = 1.0 - self.margin, self.urgent_frac
        # Without dynamic chunking there is no cap to protect, so grouping would only leave budget unused.
        everyone = not self.dynamic_chunking or not self.bound_prefill_iterations
        for key in keyed:
            r = requests[key[4]]
            sigma = key[0] - now
            if anchor is None:
                anchor = r
                by_class = self.group_by == "class"
                low, high = anchor.tbt_slo_s / self.group_ratio, anchor.tbt_slo_s * self.group_ratio
                # A request at least as loose as the anchor (or as C) cannot shrink the batch's budget.
                floor = min(cap, margin * anchor.tbt_slo_s)
            if sigma < urgent_frac * r.ttft_slo_s:
                urgent.append(r)
            elif everyone or margin * r.tbt_slo_s >= floor or (
                    r.slo_class == anchor.slo_class if by_class else low <= r.tbt_slo_s <= high):
                rest.append(r)
            else:
                continue
            slack[r.req_id] = sigma
            if len(urgent) + len(rest) >= limit:
                break
        lost = [requests[key[4]] for key in lost_keys]
        for key in lost_keys:
            slack[key[4]] = key[0] - now
        return urgent, rest, lost

    def _fit(self, batch: _BatchTime, remaining: int, q: int, budget_left: int, cap: float, *, fresh: bool) -> int:
        """The largest chunk (≤ ``remaining``: whole remainder or aligned, ≥ ``min_chunk``) within ``cap``.

        ``fresh``: size the step's budget instead (no remainder rule, ``remaining`` is the token room).
        """
        top = remaining if remaining <= budget_left else budget_left
        if top <= 0:
            return 0
        if not fresh and top == remaining and (cap == _INF or batch.with_chunk(top, q) <= cap):
            return top
        align = self.chunk_align
        hi = (top - 1) // align if (top == remaining and not fresh) else top // align
        lo = -(-self.min_chunk // align)  # the smallest aligned chunk allowed
        if lo > hi:
            return 0
        if cap != _INF:
            if batch.with_chunk(lo * align, q) > cap:
                return 0
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if batch.with_chunk(mid * align, q) <= cap:
                    lo = mid
                else:
                    hi = mid - 1
        else:
            lo = hi
        return lo * align

    def _allocate_admission(self, request: Request) -> bool:
        """KV for a new request's tokens at admission: the whole prompt (plus outputs to recompute), watermark kept."""
        return self.block_manager.allocate_slots(request.req_id, request.num_tokens, use_watermark=True)

    def _projected_of(self, request: Request) -> int:
        total = request.num_prompt_tokens + max(request.num_output_tokens + 1, self._estimate[request.req_id])
        return -(-total // self.block_manager.block_size)

    def _projected_blocks(self) -> int:
        """Σ over running requests of ``blocks(p_r + max(g_r + 1, ô_r))``."""
        est, size = self._estimate, self.block_manager.block_size
        total = 0
        for group in (self.decoding, self.prefilling):
            for r in group:
                g1 = r.num_output_tokens + 1
                e = est[r.req_id]
                total += -(-(r.num_prompt_tokens + (g1 if g1 > e else e)) // size)
        return total

    def _best_packed(self, rest: list[Request], batch: _BatchTime, budget_left: int, cap: float, p_total: int,
                     f_total: float, projected_left: float) -> Request | None:
        """argmax of the packing score (module docstring); ties: smaller slack, then partial prefills.

        New requests that cannot be admitted any more in this step (the projected-KV guard or the free blocks;
        both only tighten as the step fills) are dropped from ``rest`` first, so a full cache costs one pass.
        """
        p_rem = self._fit(batch, budget_left, 0, budget_left, cap, fresh=True) if self.dynamic_chunking \
            else budget_left
        bm = self.block_manager
        size = bm.block_size
        free = bm.num_free_blocks
        admissible = free - bm.watermark_blocks
        f_rem = free - self.kv_headroom * bm.num_blocks
        w_comp = self.w_comp / p_total if p_total > 0 else 0.0
        w_kv = self.w_kv / f_total if f_total > 0 and f_rem > 0 else 0.0
        tables, slack = bm.tables, self._step_slack
        running = RequestStatus.RUNNING
        best, best_key, dropped = None, None, []
        for r in rest:
            d_kv = self._projected_of(r)
            is_partial = r.status == running
            if is_partial:
                d_kv -= len(tables[r.req_id])
            else:
                if d_kv > projected_left or -(-r.num_tokens // size) > admissible:
                    dropped.append(r)
                    continue
            remaining = r.num_uncomputed_tokens
            d_comp = remaining if remaining < p_rem else p_rem
            key = (w_comp * d_comp + w_kv * d_kv, -slack[r.req_id], is_partial)
            if best_key is None or key > best_key:
                best, best_key = r, key
        for r in dropped:
            rest.remove(r)
        return best

    def _force_progress(self, output: SchedulerOutput, batch: _BatchTime, now: float) -> None:
        """Nothing was scheduled (no decodes; no candidate fitted its cap, or grouping left none eligible).

        The first candidate in slack order (FCFS without ``slo_priority``) whose chunk fits its own cap runs; if
        none does, the least-slack one runs a single ``min_chunk`` chunk, so an impossible SLO costs attainment
        but never stalls the engine.
        """
        partials = sorted((r for r in self.prefilling if r.status == RequestStatus.RUNNING),
                          key=lambda r: self._prefill_key(r, 0))
        queued = [self.requests[k[4]] for k in self._queue] if self.slo_priority else list(self.waiting)
        chosen = None
        for last_resort in (False, True):
            for request in partials + queued:
                remaining = request.num_uncomputed_tokens
                if last_resort:
                    c = min(remaining, self.min_chunk, self.token_budget)
                else:
                    cap = self._prefill_cap(request) if self.dynamic_chunking else _INF
                    c = self._fit(batch, remaining, request.num_computed_tokens, self.token_budget, cap, fresh=False)
                    if c == 0:
                        continue
                if request.status != RequestStatus.RUNNING:
                    if self.num_running >= self.max_num_seqs or not self._allocate_admission(request):
                        continue
                    self._dequeue(request)
                    self._admit(request, now)
                chosen = (request, c)
                break
            if chosen is not None:
                break
        if chosen is not None:
            request, c = chosen
            self._add_chunk(output, request, c)
            batch.add(c, request.num_computed_tokens - c)
            self.last_plan.forced = last_resort
