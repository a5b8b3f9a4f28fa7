"""AccelGen + CacheOPT: AccelGen's chunking, SLO prioritisation and packing with CacheOPT's KV management.

AccelGen (``heuristics.accelgen``) decides which prefill chunks and decodes form each step; CacheOPT's KV
components (``heuristics.kv_competition``) decide every KV question instead of AccelGen's: admission reserves the
estimated demand ``A_r`` (embedded or from the pool above the reserve) instead of the projected-KV guard, decodes
extend proactively and from the reserve, victims follow CacheOPT's order and are swapped or recomputed by
predicted latency. AccelGen's packing score sees CacheOPT's padded length ``L_r`` as the expected output. The
mean prefill budget ``P̄`` of the embedding rule is the running mean of AccelGen's per-step budget.
"""
from __future__ import annotations

from heuristics.accelgen import AccelGenScheduler
from heuristics.kv_competition import CacheOPTParams, KVCompetition
from runtime.core.request import Request, RequestStatus


class AccelGenCacheOPTScheduler(KVCompetition, AccelGenScheduler):
    projected_kv_guard = False

    def __init__(self, *, cacheopt: dict | None = None, **accelgen) -> None:
        super().__init__(**accelgen)
        self._setup_kv(CacheOPTParams.from_config(cacheopt))
        self._budget_sum, self._budget_steps = 0.0, 0

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        if request.status == RequestStatus.WAITING:
            self._estimate[request.req_id] = self._target[request.req_id]

    def _allocate_admission(self, request: Request) -> bool:
        return self._kv_admit(request)

    def _mean_prefill_budget(self) -> float:
        return self._budget_sum / self._budget_steps if self._budget_steps else float(self.token_budget)

    def schedule(self, now: float):
        self._proactive_extend(now)
        output = super().schedule(now)
        self._budget_sum += self.last_plan.budget_tokens
        self._budget_steps += 1
        return output
