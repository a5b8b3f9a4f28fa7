"""CacheOPT: mitigating KV-cache competition (algorithms.md section 7) on Sarathi-Serve's stall-free batches.

Each step (the KV components are ``heuristics.kv_competition``, each switchable in ``scheduler.cacheopt``):

1. proactive extension of running decodes close to their allocation (7.3);
2. every running decode gets its token; a decode beyond its allocation extends (pool, then reserve) and only if
   that fails a victim is preempted, by the victim order (7.4), by swap or recompute (7.5);
3. swapped requests resume (their allocation reserved again from the pool) if nobody was preempted;
4. partial prefills continue in chunks within the token budget ``τ`` (section 9, item 15: chunked prefill at
   Sarathi-Serve's ``token_budget``, ``auto`` by default);
5. waiting requests are admitted by TTFT slack, ties by tighter TBT SLO (7.2), each with its estimated demand
   ``A_r``, embedded if a host has room, else from the pool above the reserve.

Slack orders the waiting queue by the static key ``d_r − T̂({(m_r, 0)})`` (``d_r = a_r + S^ttft_r``, or the
next-token deadline ``τ_{r,g} + S^tbt_r`` of a request preempted after emitting tokens; ``m_r`` the tokens to
prefill): ``now`` is common to all, so the order holds while they wait. When the least-slack request's demand
does not fit the pool, later requests may still be admitted by embedding only, so a large request at the head
is not starved by smaller ones taking the pool [our design choice]; ``scan_limit`` bounds the scan. No request
is admitted in a step that preempted.
"""
from __future__ import annotations

import bisect

from heuristics.kv_competition import CacheOPTParams, KVCompetition
from heuristics.sarathi import auto_token_budget
from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput
from runtime.core.request import Request, RequestStatus


class CacheOPTScheduler(KVCompetition, BaseScheduler):
    def __init__(
        self,
        *,
        cacheopt: dict | None = None,
        token_budget: int | str = "auto",
        chunk_align: int = 32,
        max_budget: int = 8192,
        auto_decode_batch: int = 64,
        auto_decode_context: int = 2048,
        scan_limit: int = 64,
        **base,
    ) -> None:
        super().__init__(**base)
        if self.cost_model is None:
            raise ConfigError("scheduler=cacheopt needs a latency predictor (cost_model)")
        if chunk_align < 1:
            raise ConfigError(f"scheduler.chunk_align must be >= 1, got {chunk_align!r}")
        if scan_limit < 1:
            raise ConfigError(f"scheduler.scan_limit must be >= 1, got {scan_limit!r}")
        if token_budget == "auto":
            token_budget = auto_token_budget(self.cost_model, self.slo_classes, chunk_align=chunk_align,
                                             max_budget=max_budget, decode_batch=auto_decode_batch,
                                             decode_context=auto_decode_context)
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < chunk_align:
            raise ConfigError(f"scheduler.token_budget must be 'auto' or an integer >= chunk_align={chunk_align}, "
                              f"got {token_budget!r}")
        self.token_budget, self.chunk_align, self.scan_limit = token_budget, chunk_align, scan_limit
        self._queue: list[tuple[float, float, float, int, str]] = []
        self._queue_key: dict[str, tuple[float, float, float, int, str]] = {}
        self._seq = 0
        self._setup_kv(CacheOPTParams.from_config(cacheopt))

    # The waiting queue, by slack ---------------------------------------------------------------------------------
    def _key(self, request: Request) -> tuple[float, float, float, int, str]:
        deadline = request.token_times[-1] + request.tbt_slo_s if request.num_output_tokens \
            else request.arrival_time + request.ttft_slo_s
        self._seq += 1
        prefill = self.cost_model.predict([(request.num_uncomputed_tokens, 0)], ())
        return (deadline - prefill, request.tbt_slo_s, request.arrival_time, self._seq, request.req_id)

    def _enqueue(self, request: Request) -> None:
        key = self._queue_key[request.req_id] = self._key(request)
        bisect.insort(self._queue, key)

    def _remove_waiting(self, request: Request) -> None:
        key = self._queue_key.pop(request.req_id)
        del self._queue[bisect.bisect_left(self._queue, key)]
        self.waiting.remove(request)

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if request.status == RequestStatus.WAITING:
            self._enqueue(request)

    def _preempt(self, request: Request, now: float) -> str:
        kind = super()._preempt(request, now)
        if kind == "recompute":
            self._enqueue(request)
        return kind

    # The step ----------------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        output = self._new_output()
        budget = self.token_budget
        self._proactive_extend(now)
        n = self._schedule_decodes(output, list(self.decoding), now, budget)
        if self.swapped:
            n += self._schedule_resumed(output, now, budget - n)
        for request in [r for r in self.prefilling if r.req_id not in output.num_scheduled_tokens]:
            chunk = self._chunk_size(request.num_uncomputed_tokens, budget - n, self.chunk_align)
            if chunk <= 0:
                break
            self._add_chunk(output, request, chunk)
            n += chunk
        if not self._step_preempted:
            n = self._admit_waiting(output, now, n)
        assert n <= budget
        return self._finish_output(output)

    def _admit_waiting(self, output: SchedulerOutput, now: float, n: int) -> int:
        budget, requests = self.token_budget, self.requests
        pool_open = True
        admitted: list[Request] = []
        for scanned, key in enumerate(list(self._queue)):
            if scanned >= self.scan_limit or n >= budget or self.num_running + len(admitted) >= self.max_num_seqs:
                break
            request = requests[key[4]]
            chunk = self._chunk_size(request.num_uncomputed_tokens, budget - n, self.chunk_align)
            if chunk <= 0:
                break
            if not pool_open and not self.kv_params.reuse:
                break
            if not self._kv_admit(request, pool=pool_open):
                pool_open = False  # the head keeps its claim on the pool; later ones may only embed
                continue
            self._remove_waiting(request)
            self._admit(request, now)
            self._add_chunk(output, request, chunk)
            admitted.append(request)
            n += chunk
        return n
