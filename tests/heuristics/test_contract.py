"""The shared contract every scheduler meets, on the simulator, over random small workloads (hypothesis).

* the KV cache never holds more than its capacity, and every block is free at the end;
* every step computes at most the scheduler's token budget and at most max_num_seqs requests run;
* every request that arrives ends finished (with all its tokens) or rejected with a reason;
* the same workload and seed give identical per-request results;
* with swapping (vLLM's swap mode, CacheOPT's swap-or-recompute) the swap space never exceeds its capacity and no
  block, GPU or CPU, is ever owned twice; CacheOPT's reservation ledger keeps every request within its allocation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.metrics import requests_frame, summarise
from runtime.core.request import RequestStatus
from runtime.core.run_log import write_run_outputs
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import (create_block_manager, create_cost_model, create_kv_transfer, create_scheduler,
                            create_slo_classes, scheduler_names)

SCHEDULERS = scheduler_names()
# Every YAML as shipped, plus variants that stress chunking, tiny budgets (fewer tokens than running decodes) and
# per-step caps.
VARIANTS = [(name, {}) for name in SCHEDULERS] + [
    ("vllm", {"chunked_prefill": True, "max_num_batched_tokens": 64}),
    ("sarathi", {"token_budget": 8, "chunk_align": 4}),
    ("orca", {"max_num_batched_tokens": 300}),
    ("accelgen", {"dynamic_chunking": False, "token_budget": 64}),
    ("accelgen", {"slo_priority": False, "multi_resource": False}),
    ("accelgen", {"len_estimator": "oracle", "group_by": "ratio", "slo_semantics": "iteration", "demote_lost": False,
                  "preempt_victim": "latest_arrival"}),
    ("accelgen", {"max_budget": 40, "chunk_align": 8, "min_chunk": 16, "scan_limit": 1}),
    ("vllm", {"preemption_mode": "swap"}),
    ("sarathi", {"preemption_mode": "swap", "token_budget": 64}),
    ("accelgen", {"preemption_mode": "auto"}),
    ("cacheopt", {"cacheopt": {"predictor": "noisy", "padding_mode": "quantile", "reserved_blocks": 0}}),
    ("cacheopt", {"cacheopt": {"estimation": False, "victim_order": False, "proactive": False}}),
    ("cacheopt", {"cacheopt": {"predictor": "regressor", "reuse": False, "swap_or_recompute": False}}),
    ("accelgen_cacheopt", {"cacheopt": {"predictor": "oracle", "embed_margin_iters": 0}}),
]


class CheckingExecutor(SimExecutor):
    """A SimExecutor that checks the per-step contract before running the step."""

    def __init__(self, scheduler, block_manager):
        super().__init__(cost_model=create_cost_model(), kv_transfer=create_kv_transfer())
        self.scheduler, self.bm, self.steps = scheduler, block_manager, 0
        self.swapped_out_blocks: dict[str, int] = {}

    def execute(self, output):
        self.steps += 1
        assert output.num_scheduled_tokens, "empty step"
        assert self.bm.num_used_blocks <= self.bm.num_blocks
        assert self.bm.num_free_blocks + self.bm.num_used_blocks == self.bm.num_blocks
        self.bm.check_invariants()  # no block owned twice, GPU or CPU; swap space within capacity
        assert self.bm.num_free_cpu_blocks >= 0
        if hasattr(self.scheduler, "check_kv_invariants"):
            self.scheduler.check_kv_invariants()
        # A swapped request resumes with the KV it left with: same number of blocks, same counters.
        requests = self.scheduler.requests
        for req_id in output.swapped_out_req_ids:
            req = requests[req_id]
            self.swapped_out_blocks[req_id] = (self.bm.num_swapped_blocks_of(req_id), req.num_computed_tokens,
                                               req.num_output_tokens, list(req.token_times))
        for req_id in output.swapped_in_req_ids:
            req = requests[req_id]
            blocks, computed, outputs, times = self.swapped_out_blocks.pop(req_id)
            # Resumed decodes may run in the step that swaps them in (one more computed token, maybe one block).
            assert req.num_computed_tokens == computed + output.num_scheduled_tokens.get(req_id, 0)
            assert (req.num_output_tokens, req.token_times) == (outputs, times)
            assert self.bm.num_blocks_of(req_id) == max(blocks, self.bm.blocks_for(req.num_computed_tokens))
        assert {r.req_id for r in self.scheduler.swapped} == set(self.bm.swapped_tables)
        budget = self.scheduler.token_budget
        if budget is not None:
            assert sum(output.num_scheduled_tokens.values()) <= budget
        assert len(output.num_scheduled_tokens) <= self.scheduler.max_num_seqs
        assert len(self.scheduler.running) <= self.scheduler.max_num_seqs
        for req_id, n in output.num_scheduled_tokens.items():
            req = self.scheduler.requests[req_id]
            assert n >= 1 and req.num_computed_tokens <= req.num_tokens
            # Every computed token has a KV slot.
            assert self.bm.num_blocks_of(req_id) * self.bm.block_size >= req.num_computed_tokens
        assert len(output.prefill_chunks) + len(output.decode_context_lens) == len(output.num_scheduled_tokens)
        return super().execute(output)


def make_workload(seed: int, n: int, rate: float, max_prompt: int, max_output: int) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    prompts = rng.integers(1, max_prompt + 1, n)
    outputs = rng.integers(1, max_output + 1, n)
    classes = create_slo_classes()
    # A training split from the same distribution, for learnt output-length predictors (CacheOPT).
    train = np.random.default_rng([seed, 1])
    apps = train.integers(0, 2, 64)
    training = pd.DataFrame({"app": np.array(["chat", "summ"])[apps], "slo_class": np.array(["tight", "loose"])[apps],
                             "num_prompt_tokens": train.integers(1, max_prompt + 1, 64),
                             "num_output_tokens": train.integers(1, max_output + 1, 64)})
    return Workload(name="random", arrival_time=arrivals, num_prompt_tokens=prompts, num_output_tokens=outputs,
                    app_index=rng.integers(0, 2, n), apps=["chat", "summ"], app_slo_classes=["tight", "loose"],
                    slo_classes=classes, training=training)


def run_once(name, workload, num_blocks, max_num_seqs, max_model_len=512, num_swap_blocks=24, **overrides):
    # A small swap space, so that it fills up and swap-capable policies must fall back to recompute too.
    bm = create_block_manager(num_blocks=num_blocks, block_size=8, watermark=0.01, num_swap_blocks=num_swap_blocks)
    if name == "oracle":
        # Determinism is only promised without a solve time limit (a loaded CI machine could hit 50 ms).
        overrides.setdefault("time_limit_s", None)
    scheduler = create_scheduler(name, block_manager=bm, max_model_len=max_model_len, max_num_seqs=max_num_seqs, **overrides)
    if hasattr(scheduler, "calibrate"):
        scheduler.calibrate(workload.training_frame())
    executor = CheckingExecutor(scheduler, bm)
    result = Engine(scheduler=scheduler, executor=executor, workload=workload, clock=VirtualClock()).run()
    return result, bm, scheduler


@pytest.mark.parametrize("name, overrides", VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@settings(max_examples=25)
# Found by CI: a request swapped mid-prefill holds more blocks than its next token needs, and that surplus was
# once counted as room for the next swapped request (swap_in then failed).
@example(seed=0, n=17, rate=86.0, num_blocks=70, max_num_seqs=11, max_prompt=85, max_output=73)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40), rate=st.floats(0.5, 200.0),
       num_blocks=st.integers(70, 400), max_num_seqs=st.integers(1, 16),
       max_prompt=st.integers(1, 400), max_output=st.integers(1, 100))
def test_contract_on_random_workloads(name, overrides, seed, n, rate, num_blocks, max_num_seqs, max_prompt,
                                      max_output):
    workload = make_workload(seed, n, rate, max_prompt, max_output)
    result, bm, scheduler = run_once(name, workload, num_blocks, max_num_seqs, **overrides)
    assert len(result.requests) == n
    assert bm.num_used_blocks == 0, "blocks leaked"
    bm.check_invariants()
    assert not scheduler.has_unfinished_requests()
    for r in result.requests:
        assert r.is_finished
        if r.status == RequestStatus.FINISHED_REJECTED:
            assert r.rejection_reason
            assert r.num_prompt_tokens + r.max_tokens > 512 or not bm.can_fit_ever(r.num_prompt_tokens + r.max_tokens) \
                or "reserve" in r.rejection_reason \
                or (scheduler.whole_prefill_cap is not None and r.num_prompt_tokens + r.max_tokens > scheduler.whole_prefill_cap)
        else:
            assert r.num_output_tokens == r.max_tokens == len(r.token_times)
            assert r.token_times == sorted(r.token_times) and r.token_times[0] > r.arrival_time
    # Same inputs, same results: the written requests.parquet and iterations.parquet are byte-identical and
    # summary.json is identical.
    again, _, _ = run_once(name, make_workload(seed, n, rate, max_prompt, max_output), num_blocks, max_num_seqs,
                           **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        for label, res in (("a", result), ("b", again)):
            frame = requests_frame(res.requests)
            write_run_outputs(Path(tmp) / label, requests=frame, iterations=res.iterations.to_frame(),
                              summary=summarise(frame, res.requests))
        for file in ("requests.parquet", "iterations.parquet", "summary.json"):
            assert (Path(tmp) / "a" / file).read_bytes() == (Path(tmp) / "b" / file).read_bytes(), file


@pytest.mark.parametrize("name", SCHEDULERS)
def test_kv_pressure_forces_preemption_or_waiting_but_completes(name):
    # 40 long requests into a cache that holds only a few at a time.
    workload = make_workload(7, 40, 1000.0, 300, 200)
    result, bm, scheduler = run_once(name, workload, num_blocks=130, max_num_seqs=16)
    assert all(r.is_finished for r in result.requests)
    assert bm.num_used_blocks == 0
    assert sum(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests) >= 30
