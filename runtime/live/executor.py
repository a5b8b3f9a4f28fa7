"""LiveExecutor: runs each step's batch through a real Llama forward pass and reports the wall time it took.

The engine, schedulers, metrics and output files are the simulator's; only the executor (and the clock, a
``WallClock`` chosen because ``wall_clock = True``) differ. Per step::

    drop the state of requests finished since the last step (output.finished_req_ids)
    copy swapped blocks: GPU -> CPU for blocks_to_swap_out, then CPU -> GPU for blocks_to_swap_in
    build the step's inputs (runtime.live.batch) from the block tables of the shared BlockManager
    one forward pass over every prefill chunk and decode; logits only for the rows that sample
    sample (greedy, or temperature / top-k), record the tokens, return them with the measured time

``step_time`` is wall time from entry to the sampled tokens on the host (on CUDA ``.tolist()`` synchronises), so
input preparation, copies and sampling are in it, as in a real server. ``swap_time`` is the measured copy time.
``recompute_time`` cannot be measured apart inside one forward; it is the step's compute time times the
recompute chunks' share of the step's tokens. The trace's output lengths are enforced by the scheduler (EOS is
not special), so live and simulated runs do the same work.

Everything that can fail for a reason outside the code (checkpoint, memory) fails in ``__init__``, before any
request runs: see ``runtime.live.device.plan_memory`` and ``runtime.live.weights``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from runtime.core.errors import ConfigError
from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.live.batch import build_step_batch
from runtime.live.device import MemoryPlan, plan_memory, resolve_device, resolve_dtype
from runtime.live.kv_cache import PagedKVCache
from runtime.live.model import LlamaForCausalLM, rope_tables
from runtime.live.tokens import TokenStore
from runtime.live.weights import check_checkpoint, init_random, load_checkpoint
from runtime.sim.specs import ModelSpec


def build_model(spec: ModelSpec, *, device: torch.device, dtype: torch.dtype, seed: int = 0,
                checkpoint: str | Path | None = None) -> LlamaForCausalLM:
    """The model on ``device`` in ``dtype``: seeded random weights, or a checkpoint's. Nothing on the host first."""
    files = check_checkpoint(checkpoint, spec) if checkpoint is not None else None
    with torch.device("meta"):
        model = LlamaForCausalLM(spec)
    model = model.to(dtype=dtype).to_empty(device=device)
    if spec.tie_word_embeddings:  # to_empty gives the tied pair two tensors again
        model.lm_head.weight = model.model.embed_tokens.weight
    if checkpoint is None:
        init_random(model, seed)
    else:
        load_checkpoint(model, checkpoint, files)
    return model.eval().requires_grad_(False)


class Sampler:
    """Greedy (``temperature == 0``) or softmax sampling at ``temperature``, optionally from the top ``top_k``."""

    def __init__(self, *, temperature: float = 0.0, top_k: int = 0, seed: int = 0, device: torch.device) -> None:
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ConfigError(f"runtime.sampling.temperature must be >= 0, got {temperature!r}")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ConfigError(f"runtime.sampling.top_k must be an integer >= 0, got {top_k!r}")
        self.temperature, self.top_k = float(temperature), int(top_k)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0.0:
            return logits.argmax(dim=-1)
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self.generator).squeeze(-1)


class LiveExecutor:
    wall_clock = True

    def __init__(
        self,
        *,
        model: ModelSpec,
        block_manager: BlockManager,
        device: str = "auto",
        dtype: str = "auto",
        checkpoint: str | None = None,
        seed: int = 0,
        sampling: dict | None = None,
        threads: int | None = None,
        warmup_steps: int = 2,
        max_decode_gather: int = 1 << 21,
        memory_utilization: float = 0.9,
        cpu_kv_cache_gb: float = 1.0,
        memory_plan: MemoryPlan | None = None,
        kv_transfer=None,
        cost_model=None,
    ) -> None:
        del kv_transfer, cost_model  # the simulator's; the live runtime measures both
        if threads is not None:
            if not (isinstance(threads, int) and threads >= 1):
                raise ConfigError(f"runtime.threads must be an integer >= 1 or null, got {threads!r}")
            torch.set_num_threads(threads)
        self.spec = model
        self.block_manager = block_manager
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if memory_plan is None:
            memory_plan = plan_memory(model, device=self.device, dtype=self.dtype, block_size=block_manager.block_size,
                                      num_blocks=block_manager.num_blocks, swap_space_gb=0.0,
                                      num_swap_blocks=block_manager.num_swap_blocks,
                                      memory_utilization=memory_utilization, cpu_kv_cache_gb=cpu_kv_cache_gb)
        elif (memory_plan.num_blocks, memory_plan.num_swap_blocks) != (block_manager.num_blocks,
                                                                      block_manager.num_swap_blocks):
            raise ConfigError(f"memory plan ({memory_plan.num_blocks} blocks, {memory_plan.num_swap_blocks} swap) "
                              f"disagrees with the block manager ({block_manager.num_blocks}, "
                              f"{block_manager.num_swap_blocks})")
        self.memory_plan = memory_plan
        self.model = build_model(model, device=self.device, dtype=self.dtype, seed=seed, checkpoint=checkpoint)
        self.cache = PagedKVCache(model, num_blocks=block_manager.num_blocks, block_size=block_manager.block_size,
                                  num_swap_blocks=block_manager.num_swap_blocks, device=self.device, dtype=self.dtype)
        self.cos, self.sin = rope_tables(model, model.max_model_len + 1, self.device, self.dtype)
        sampling = dict(sampling or {})
        unknown = set(sampling) - {"temperature", "top_k"}
        if unknown:
            raise ConfigError(f"runtime.sampling: unknown keys {sorted(unknown)} (temperature, top_k)")
        self.sampler = Sampler(**sampling, seed=seed, device=self.device)
        self.tokens = TokenStore(seed=seed, vocab_size=model.vocab_size)
        self.max_decode_gather = int(max_decode_gather)
        self.num_steps = 0
        self._warmup(int(warmup_steps))

    @property
    def description(self) -> str:
        return f"{self.spec.name} on {self.memory_plan.describe()}"

    def _warmup(self, steps: int) -> None:
        """A few throw-away forwards on scratch blocks, so the first timed step pays no one-off costs."""
        bm = self.block_manager
        blocks = min(bm.num_blocks, 4)
        tokens = min(blocks * bm.block_size, 64, self.spec.max_model_len)
        if steps <= 0 or tokens < 2:
            return
        # Scratch requests on blocks no one owns yet: their contents are overwritten before any request reads them.
        tables = {"__warmup_a": list(range(blocks)), "__warmup_b": list(range(blocks))}
        prefill = SchedulerOutput(num_scheduled_tokens={"__warmup_a": tokens}, prefill_chunks=[(tokens, 0)],
                                  prefill_req_ids=["__warmup_a"], prefill_done_req_ids=["__warmup_a"])
        mixed = SchedulerOutput(num_scheduled_tokens={"__warmup_a": tokens // 2, "__warmup_b": 1},
                                prefill_chunks=[(tokens // 2, tokens // 2)], prefill_req_ids=["__warmup_a"],
                                decode_context_lens=[tokens // 2], decode_req_ids=["__warmup_b"])
        scratch = TokenStore(seed=0, vocab_size=self.spec.vocab_size)
        for i in range(steps):
            self._forward(prefill if i % 2 == 0 else mixed, tables, scratch)
        self._sync()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _forward(self, output: SchedulerOutput, tables, tokens: TokenStore) -> tuple[list[str], list[int], list[int]]:
        batch = build_step_batch(output, tables, block_size=self.block_manager.block_size,
                                 null_slot=self.cache.null_slot, tokens=tokens, cos_table=self.cos,
                                 sin_table=self.sin, device=self.device, max_decode_gather=self.max_decode_gather)
        logits = self.model(batch, self.cache)
        sampled = self.sampler(logits).tolist() if batch.sample_req_ids else []
        return batch.sample_req_ids, sampled, batch.sample_positions

    def execute(self, output: SchedulerOutput) -> StepResult:
        start = time.perf_counter()
        for req_id in output.finished_req_ids:
            self.tokens.drop(req_id)
        swap_time = 0.0
        if output.blocks_to_swap_out or output.blocks_to_swap_in:
            self.cache.swap_out(output.blocks_to_swap_out)
            self.cache.swap_in(output.blocks_to_swap_in)
            self._sync()
            swap_time = time.perf_counter() - start
        req_ids, sampled, positions = self._forward(output, self.block_manager.tables, self.tokens)
        for req_id, token_id, position in zip(req_ids, sampled, positions):
            self.tokens.append(req_id, token_id, position)
        step_time = time.perf_counter() - start
        recompute_time = 0.0
        if output.num_recompute_tokens:
            total = output.total_num_scheduled_tokens
            recompute_time = (step_time - swap_time) * output.num_recompute_tokens / max(total, 1)
        self.num_steps += 1
        return StepResult(sampled_token_ids=dict(zip(req_ids, sampled)), step_time=step_time, swap_time=swap_time,
                          recompute_time=recompute_time)
