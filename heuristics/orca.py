"""Orca (OSDI'22): iteration-level scheduling with whole prefills and KV reserved for the maximum length.

Each step runs every running request's decode together with the whole prompts of newly admitted requests
(no chunking). A request is admitted FCFS only if KV for ``max_model_len`` tokens can be reserved for it, so a
running request never needs another block and nothing is ever preempted (algorithms.md section 4).
"""
from __future__ import annotations

from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput


class OrcaScheduler(BaseScheduler):
    preempts = False
    chunks_prompts = False

    def __init__(self, *, max_num_batched_tokens: int | None = None, **base) -> None:
        super().__init__(**base)
        bm = self.block_manager
        if bm.blocks_for(self.max_model_len) > bm.num_blocks:
            raise ConfigError(
                f"orca reserves max_model_len={self.max_model_len} tokens ({bm.blocks_for(self.max_model_len)} blocks) "
                f"per request, but kv.num_blocks={bm.num_blocks}"
            )
        self.max_num_batched_tokens = max_num_batched_tokens
        self.token_budget = max_num_batched_tokens
        self.whole_prefill_cap = max_num_batched_tokens

    def schedule(self, now: float) -> SchedulerOutput:
        output = self._new_output()
        # Reserved KV covers every decode, so no preemption can be needed.
        num_tokens = self._schedule_decodes(output, list(self.decoding), now, self.max_num_seqs)

        # Next, admit WAITING requests with their whole prompts.
        cap = self.max_num_batched_tokens
        waiting = self.waiting
        while waiting and self.num_running < self.max_num_seqs:
            request = waiting[0]
            need = request.num_uncomputed_tokens
            if cap is not None and num_tokens + need > cap:
                break
            if not self.block_manager.allocate_slots(request.req_id, self.max_model_len):
                break
            waiting.popleft()
            self._admit(request, now)
            self._add_chunk(output, request, need)
            num_tokens += need
        assert not output.preempted_req_ids, "orca never preempts"
        return self._finish_output(output)
