"""Timing one composition on the live executor, the way ``accelgen-profile`` and the speed probe do.

``Profiler`` owns a ``LiveExecutor`` and a ``BlockManager`` big enough for every composition it will run; ``run``
gives each request of a ``Composition`` (``runtime.live.compositions``) a block table, runs
``LiveExecutor.execute`` (the call a live run makes each step) and frees the blocks. Its ``step_time`` (wall time
from entry to sampled tokens on the host: input preparation, the forward, sampling) is exactly what
``iterations.parquet`` logs as ``duration_s``. The KV cache is filled with N(0, 1) values once: never-written slots
would otherwise hold whatever the allocator gave (zero pages or, worse, denormals); the null slot stays zero.

``time_settled`` runs a composition untimed first (at least ``settle`` runs and ``settle_s`` seconds, at most
``MAX_SETTLE_RUNS``), then once timed. In serving, consecutive steps are alike, and on this CPU a step right after a
different one is slower for several steps (llama_15m, 2 threads: a single decode takes 5.4 ms right after a
2048-token prefill, or after 32 decodes, then 5.0, 4.5, 4.2, ... and 3.6 ms from about the 7th step on), which
would bias every small batch upwards by up to 50%.
"""
from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, open_dict

from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput
from runtime.live.compositions import Composition

MAX_SETTLE_RUNS = 32


class Profiler:
    """A ``LiveExecutor`` with a ``BlockManager`` big enough for every one of ``comps``, and the timing loop."""

    def __init__(self, cfg: DictConfig, model, comps: list[Composition]) -> None:
        from runtime.cli import instantiate_node, live_memory_plan

        num_tokens = max(c.kv_tokens + 16 * c.num_seqs for c in comps)
        block_size = int(cfg.kv.block_size)
        cfg = cfg.copy()
        with open_dict(cfg):
            # Room for the largest composition, with a block of slack per request; no swap space.
            cfg.kv.num_blocks = int(-(-num_tokens // block_size) + 1024)
            cfg.kv.num_blocks_scale = 1.0
            cfg.kv.swap_blocks = 0
        num_blocks, swap_blocks, plan = live_memory_plan(cfg, model)
        self.block_manager = BlockManager(num_blocks=num_blocks, block_size=block_size, watermark=0.0,
                                          num_swap_blocks=swap_blocks)
        self.executor = instantiate_node(cfg.runtime, model=model, block_manager=self.block_manager, memory_plan=plan)
        cache = self.executor.cache
        gen = torch.Generator(device=cache.k.device).manual_seed(int(cfg.seed))
        for tensor in (cache.k, cache.v):  # realistic values in every slot a decode may read; null slot zero
            tensor.normal_(generator=gen)
            tensor[:, cache.null_slot].zero_()

    def run(self, comp: Composition) -> float:
        bm, ex = self.block_manager, self.executor
        scheduled: dict[str, int] = {}
        prefill_ids, done, decode_ids = [], [], []
        for i, ((c, q), final) in enumerate(zip(comp.chunks, comp.final)):
            rid = f"__profile_p{i}"
            prefill_ids.append(rid)
            if final:
                done.append(rid)
            scheduled[rid] = c
            bm.allocate_slots(rid, q + c)
        for i, ctx in enumerate(comp.decodes):
            rid = f"__profile_d{i}"
            decode_ids.append(rid)
            scheduled[rid] = 1
            bm.allocate_slots(rid, ctx)
        if any(not bm.has(rid) or bm.num_new_blocks(rid, 1) for rid in scheduled):
            raise RuntimeError(f"profile block manager too small for {comp.label()}")
        output = SchedulerOutput(num_scheduled_tokens=scheduled, prefill_chunks=list(comp.chunks),
                                 prefill_req_ids=prefill_ids, prefill_done_req_ids=done,
                                 decode_context_lens=list(comp.decodes), decode_req_ids=decode_ids,
                                 num_used_blocks=bm.num_used_blocks)
        try:
            return ex.execute(output).step_time
        finally:
            for rid in scheduled:
                ex.tokens.drop(rid)
                bm.free(rid)


def time_settled(profiler: Profiler, comp: Composition, settle: int, settle_s: float) -> float:
    """One timed run of ``comp`` after untimed runs of the same batch (at least ``settle`` runs and ``settle_s``
    seconds, at most ``MAX_SETTLE_RUNS``): in serving, consecutive steps are alike (module docstring)."""
    start, n = time.perf_counter(), 0
    while n < settle or (n < MAX_SETTLE_RUNS and time.perf_counter() - start < settle_s):
        profiler.run(comp)
        n += 1
    return profiler.run(comp)
