"""vLLM (SOSP'23), v0 scheduler: FCFS, prefill-first, whole prompts, preemption of the latest arrival.

Each step either prefills newly admitted prompts (whole, up to ``max_num_batched_tokens``) or, when nothing can
be admitted, decodes every running request, preempting the latest-arrived one whenever a decode needs a KV
block that is not there (algorithms.md section 4). Admission is strictly FCFS: the first waiting request that
does not fit blocks the ones behind it. ``chunked_prefill: true`` switches to vLLM's chunked-prefill mode, which
is Sarathi-Serve's stall-free batching with ``τ = max_num_batched_tokens``. ``preemption_mode``: ``recompute``
(the default) or ``swap`` (vLLM's swap mode: victims' KV goes to CPU swap space and they come back before any new
prompt is admitted; with the swap space full the victim recomputes).
"""
from __future__ import annotations

from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput


class VLLMScheduler(BaseScheduler):
    def __init__(
        self,
        *,
        max_num_batched_tokens: int | None = None,
        chunked_prefill: bool = False,
        chunk_align: int = 1,
        **base,
    ) -> None:
        super().__init__(**base)
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 512 if chunked_prefill else max(self.max_model_len, 2048)
        if max_num_batched_tokens < 1:
            raise ConfigError(f"scheduler.max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        if chunk_align < 1:
            raise ConfigError(f"scheduler.chunk_align must be >= 1, got {chunk_align}")
        if chunked_prefill and max_num_batched_tokens < chunk_align:
            raise ConfigError(f"scheduler.max_num_batched_tokens={max_num_batched_tokens} must be >= "
                              f"scheduler.chunk_align={chunk_align}: every chunk would round down to zero")
        if not chunked_prefill and max_num_batched_tokens < self.max_num_seqs:
            # As vLLM: a decode step of max_num_seqs requests must fit the per-step token cap.
            raise ConfigError(f"scheduler.max_num_batched_tokens={max_num_batched_tokens} must be >= "
                              f"scheduler.max_num_seqs={self.max_num_seqs}")
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.chunks_prompts = chunked_prefill
        self.chunk_align = chunk_align
        self.token_budget = max_num_batched_tokens
        if not chunked_prefill:
            self.whole_prefill_cap = max_num_batched_tokens

    def schedule(self, now: float) -> SchedulerOutput:
        if self.chunked_prefill:
            return self._schedule_stall_free(now, self.max_num_batched_tokens, self.chunk_align)
        output = self._new_output()

        # First, admit WAITING requests FCFS, whole prompts, prefill-only step; as vLLM v0, not while swapped
        # requests wait to come back (they go first).
        num_tokens = 0
        waiting = self.waiting
        while waiting and not self.swapped:
            request = waiting[0]
            need = request.num_uncomputed_tokens
            if num_tokens + need > self.max_num_batched_tokens or self.num_running + 1 > self.max_num_seqs:
                break
            if not self.block_manager.allocate_slots(request.req_id, request.num_tokens, use_watermark=True):
                break  # head-of-line blocking, as in vLLM v0
            waiting.popleft()
            self._admit(request, now)
            self._add_chunk(output, request, need)
            num_tokens += need
        if num_tokens:
            return self._finish_output(output)

        # Otherwise, decode every running request, then swap requests back in (they decode this step too).
        n = self._schedule_decodes(output, list(self.decoding), now, self.max_num_seqs)
        if self.swapped:
            # With nothing running the head always fits: admission guaranteed blocks(p + o) <= M - watermark.
            self._schedule_resumed(output, now, self.max_num_seqs - n)
        return self._finish_output(output)
