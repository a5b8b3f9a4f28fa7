"""Shared pieces of the live-runtime tests: specs, a Hugging Face twin of our model, and a paged step driver.

The reference is transformers' ``LlamaForCausalLM`` (eager attention, float32, CPU) holding exactly our weights
(``load_state_dict(strict=True)``: the parameter names are the same). Weights are re-drawn so the test is
sensitive: the default init (``N(0, 0.02²)``) makes every attention row nearly uniform, which would hide a wrong
mask, position or RoPE. Here matrices are ``N(0, 1/fan_in)`` (queries and keys ×1.5 for sharper attention),
embeddings ``N(0, 1)`` and every RMSNorm weight ``1 + 0.3·N(0, 1)``, so norms, masks and positions all matter.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml

from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput
from runtime.live.batch import StepBatch, build_step_batch
from runtime.live.executor import LiveExecutor
from runtime.live.kv_cache import PagedKVCache
from runtime.live.model import LlamaForCausalLM, rope_tables
from runtime.live.tokens import synthetic_prompt
from runtime.sim.specs import ModelSpec
from tests.conftest import CONF_DIR

# Max |ours - HF| allowed, as a fraction of the largest |logit| of the reference (float32 on CPU; the
# implementation agrees to ~1e-7 of it). A wrong mask, position, norm or KV slot moves logits by O(1) of it.
FP32_REL_TOL = 1e-4


def load_spec(config: str, /, **changes) -> ModelSpec:
    cfg = yaml.safe_load((CONF_DIR / "model" / f"{config}.yaml").read_text())
    cfg.pop("_target_")
    spec = ModelSpec(**cfg)
    if changes:
        spec = dataclasses.replace(spec, **changes)
        spec = dataclasses.replace(spec, num_params=spec.expected_num_params)
    return spec


TINY = load_spec("tiny")
# tiny with a small RoPE base and a large epsilon, so a wrong rope_theta or rms_norm_eps shows in the logits.
TINY_THETA_EPS = load_spec("tiny", name="tiny_theta_eps", rope_theta=1000.0, rms_norm_eps=1e-2)
LLAMA_15M = load_spec("llama_15m")
# llama_15m's features (3:1 grouped-query attention, tied embeddings) at a size the property tests can afford,
# with H·d_h = 144 != d = 96, so q/o projections are not square.
GQA_TIED = load_spec("llama_15m", name="gqa_tied_small", num_layers=2, hidden_size=96, num_heads=6, num_kv_heads=2,
                     head_dim=24, intermediate_size=160, vocab_size=384)


def hf_config(spec: ModelSpec):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta, max_position_embeddings=spec.max_model_len,
        tie_word_embeddings=spec.tie_word_embeddings, attention_bias=False, mlp_bias=False,
        attn_implementation="eager",
    )


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Sensitive weights (see the module docstring), drawn on the CPU in float32 and cast to the model's."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # a tied pair once
        shape = tuple(param.shape)
        if name.endswith("norm.weight"):
            value = 1.0 + 0.3 * torch.randn(shape, generator=gen)
        elif name.endswith("embed_tokens.weight"):
            value = torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen) * shape[1] ** -0.5
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                value *= 1.5
        param.copy_(value.to(dtype=param.dtype, device=param.device))


def make_model(spec: ModelSpec, seed: int = 0, *, device="cpu", dtype=torch.float32) -> LlamaForCausalLM:
    model = LlamaForCausalLM(spec)
    randomize(model, seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def hf_twin(model: LlamaForCausalLM):
    """transformers' LlamaForCausalLM on the CPU in float32 with ``model``'s weights (upcast if need be)."""
    from transformers import LlamaForCausalLM as HFLlama

    hf = HFLlama(hf_config(model.spec))
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    if model.spec.tie_word_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return hf.eval().requires_grad_(False)


@torch.no_grad()
def hf_logits(hf, ids) -> torch.Tensor:
    """Logits of every position of whole sequences: ids [n] -> [n, V], or [B, n] -> [B, n, V] (float32)."""
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.int64)
    if ids.ndim == 1:
        return hf(input_ids=ids[None]).logits[0].float()
    return hf(input_ids=ids).logits.float()


def assert_hf_greedy(hf, prompt, outputs, *, min_gap: float = 1e-4) -> None:
    """``outputs`` are HF's greedy continuation of ``prompt``: one teacher-forced forward over prompt + outputs,
    whose argmax at every position from the prompt's last one on must be the next output (by induction the
    same as decoding token by token). Each top-1/top-2 gap must exceed ``min_gap`` (float32 noise is ~1e-6), or
    the reference is too close to a tie to mean anything."""
    ids = [int(t) for t in prompt] + [int(t) for t in outputs]
    logits = hf_logits(hf, ids[:-1])[len(prompt) - 1:]
    top = torch.topk(logits, 2, dim=-1).values
    gap = float((top[:, 0] - top[:, 1]).min())
    assert gap > min_gap, f"ill-conditioned reference: top-1/top-2 gap {gap:.2g}; pick another seed"
    assert logits.argmax(-1).tolist() == [int(t) for t in outputs]


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, rel_tol: float, what: str = "") -> None:
    scale = float(ref.abs().max())
    err = float((ours.float().cpu() - ref).abs().max())
    assert err <= rel_tol * scale, f"{what}: max |ours - HF| = {err:.3g} > {rel_tol} x logit scale {scale:.3g}"


class PagedRunner:
    """Our model over its own PagedKVCache, stepped with hand-made SchedulerOutputs and block tables."""

    def __init__(self, model: LlamaForCausalLM, *, num_blocks: int, block_size: int, max_decode_gather: int = 1 << 21,
                 poison: bool = True) -> None:
        p = next(model.parameters())
        self.model, self.spec, self.device, self.dtype = model, model.spec, p.device, p.dtype
        self.block_size, self.max_decode_gather = block_size, max_decode_gather
        self.cache = PagedKVCache(self.spec, num_blocks=num_blocks, block_size=block_size, num_swap_blocks=0,
                                  device=self.device, dtype=self.dtype)
        if poison:
            # Every slot but the null one NaN: a read of a slot no step has written poisons the logits.
            null = self.cache.null_slot
            self.cache.k[:, :null] = float("nan")
            self.cache.v[:, :null] = float("nan")
        self.cos, self.sin = rope_tables(self.spec, self.spec.max_model_len + 1, self.device, self.dtype)

    @torch.inference_mode()
    def step(self, output: SchedulerOutput, tables, tokens) -> tuple[StepBatch, torch.Tensor]:
        """The step's batch and the logits of every row [T, V] (float32)."""
        batch = build_step_batch(output, tables, block_size=self.block_size, null_slot=self.cache.null_slot,
                                 tokens=tokens, cos_table=self.cos, sin_table=self.sin, device=self.device,
                                 max_decode_gather=self.max_decode_gather)
        return batch, self.model.logits(self.model.hidden_states(batch, self.cache))


def rows_by_position(output: SchedulerOutput, batch: StepBatch) -> dict[tuple[str, int], int]:
    """(req_id, position) -> row of the step, from the documented layout; checks the batch's bookkeeping too."""
    rows: dict[tuple[str, int], int] = {}
    assert len(batch.prefills) == len(output.prefill_req_ids)
    sampled = {r: (int(i), p) for r, i, p in zip(batch.sample_req_ids, batch.sample_indices.tolist(),
                                                  batch.sample_positions)}
    assert len(sampled) == len(batch.sample_req_ids), "a request samples twice in one step"
    assert set(sampled) == set(output.sampling_req_ids)
    for seg, req_id, (c, q) in zip(batch.prefills, output.prefill_req_ids, output.prefill_chunks):
        assert seg.end - seg.start == c
        for j in range(c):
            rows[(req_id, q + j)] = seg.start + j
        if req_id in output.prefill_done_req_ids:
            assert sampled[req_id] == (seg.end - 1, q + c)
    for req_id, ctx in zip(output.decode_req_ids, output.decode_context_lens):
        row, pos = sampled[req_id]
        assert pos == ctx
        rows[(req_id, ctx - 1)] = row
    assert sorted(rows.values()) == list(range(batch.num_tokens)), "rows missing or duplicated"
    return rows


@dataclass
class Seq:
    """A sequence of a scenario: teacher-forced tokens, its prompt's chunk schedule, then ``num_decodes`` decodes."""

    req_id: str
    tokens: np.ndarray  # at least prompt_len + num_decodes long
    chunks: list[int]
    num_decodes: int
    start_step: int = 0
    table: list[int] = field(default_factory=list)
    computed: int = 0
    next_chunk: int = 0

    @property
    def prompt_len(self) -> int:
        return int(sum(self.chunks))

    @property
    def total(self) -> int:
        return self.prompt_len + self.num_decodes

    @property
    def finished(self) -> bool:
        return self.computed >= self.total


def run_scenario(runner: PagedRunner, seqs: list[Seq], refs: dict[str, torch.Tensor], rel_tol: float, *,
                 allocate=None) -> int:
    """Steps every sequence through its schedule in shared mixed batches, comparing every row with ``refs``
    (HF full-sequence logits per request). ``allocate(seq, num_tokens)`` grows a table; default: tables fixed.
    Returns the number of rows compared."""
    tokens = {s.req_id: s.tokens for s in seqs}
    source = lambda req_id, start, end: tokens[req_id][start:end]  # noqa: E731
    step, compared = 0, 0
    while not all(s.finished for s in seqs):
        out = SchedulerOutput(num_scheduled_tokens={})
        for s in seqs:
            if step < s.start_step or s.finished:
                continue
            if s.next_chunk < len(s.chunks):
                c = s.chunks[s.next_chunk]
                out.prefill_chunks.append((c, s.computed))
                out.prefill_req_ids.append(s.req_id)
                if s.next_chunk == len(s.chunks) - 1:
                    out.prefill_done_req_ids.append(s.req_id)
            else:
                c = 1
                out.decode_context_lens.append(s.computed + 1)
                out.decode_req_ids.append(s.req_id)
            out.num_scheduled_tokens[s.req_id] = c
            if allocate is not None:
                allocate(s, s.computed + c)
        step += 1
        if not out.num_scheduled_tokens:
            continue
        tables = {s.req_id: s.table for s in seqs}
        batch, logits = runner.step(out, tables, source)
        rows = rows_by_position(out, batch)
        ids, pos = batch.input_ids.tolist(), batch.positions.tolist()
        for (req_id, p), row in rows.items():
            assert (ids[row], pos[row]) == (int(tokens[req_id][p]), p), f"row {row}: wrong token or position"
        keys = sorted(rows)
        ours = logits[[rows[k] for k in keys]]
        ref = torch.stack([refs[r][p] for r, p in keys])
        assert_logits_close(ours, ref, rel_tol, f"step {step - 1} {out}")
        compared += len(keys)
        for s in seqs:
            c = out.num_scheduled_tokens.get(s.req_id)
            if c is not None:
                s.computed += c
                if s.next_chunk < len(s.chunks):
                    s.next_chunk += 1
    return compared


@functools.lru_cache(maxsize=None)
def twin_pair(spec: ModelSpec, seed: int = 0):
    """(our float32 CPU model, its HF twin), built once per spec."""
    model = make_model(spec, seed)
    return model, hf_twin(model)


# LiveExecutor driving ------------------------------------------------------------------------------------------

EXECUTOR_SEED = 3


class Driver:
    """Plays a scheduler: allocates blocks, builds each SchedulerOutput, feeds the executor, keeps the outputs."""

    def __init__(self, ex: LiveExecutor, prompts: dict[str, int]) -> None:
        self.ex, self.bm = ex, ex.block_manager
        self.prompt_len = dict(prompts)
        self.computed = {r: 0 for r in prompts}
        self.outputs: dict[str, list[int]] = {r: [] for r in prompts}

    def num_tokens(self, req_id: str) -> int:
        return self.prompt_len[req_id] + len(self.outputs[req_id])

    def step(self, prefill: dict[str, int] | None = None, decode: tuple[str, ...] = (), *, recompute=(),
             swap_out=(), swap_in=(), finished=()) -> dict[str, int]:
        out = SchedulerOutput(num_scheduled_tokens={}, finished_req_ids=list(finished))
        for r in swap_out:
            out.blocks_to_swap_out += self.bm.swap_out(r)
            out.swapped_out_req_ids.append(r)
            out.preempted_req_ids.append(r)
        for r in swap_in:
            out.blocks_to_swap_in += self.bm.swap_in(r, use_watermark=False)
            out.swapped_in_req_ids.append(r)
        for r, c in (prefill or {}).items():
            q = self.computed[r]
            assert q + c <= self.num_tokens(r)
            assert self.bm.allocate_slots(r, q + c)
            out.prefill_chunks.append((c, q))
            out.prefill_req_ids.append(r)
            out.num_scheduled_tokens[r] = c
            if q + c == self.num_tokens(r):
                out.prefill_done_req_ids.append(r)
            if r in recompute:
                out.recompute_req_ids.append(r)
                out.num_recompute_tokens += c
        for r in decode:
            ctx = self.computed[r] + 1
            assert ctx == self.num_tokens(r), f"{r} is not decoding"
            assert self.bm.append_slot(r, ctx)
            out.decode_context_lens.append(ctx)
            out.decode_req_ids.append(r)
            out.num_scheduled_tokens[r] = 1
        self.bm.check_invariants()
        result = self.ex.execute(out)
        assert set(result.sampled_token_ids) == set(out.sampling_req_ids)
        assert result.step_time >= 0.0
        for r, c in out.num_scheduled_tokens.items():
            self.computed[r] += c
        for r, t in result.sampled_token_ids.items():
            assert 0 <= t < self.ex.spec.vocab_size
            self.outputs[r].append(t)
        return result.sampled_token_ids

    def preempt_recompute(self, req_id: str) -> None:
        self.bm.free(req_id)
        self.computed[req_id] = 0


def make_executor(spec, *, num_blocks=64, block_size=8, num_swap_blocks=0, seed=EXECUTOR_SEED, **kwargs):
    bm = BlockManager(num_blocks=num_blocks, block_size=block_size, watermark=0.0, num_swap_blocks=num_swap_blocks)
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("dtype", "float32")
    ex = LiveExecutor(model=spec, block_manager=bm, seed=seed, warmup_steps=2, **kwargs)
    randomize(ex.model, seed)
    return ex


def check_outputs(d: Driver, hf, req_id: str, rel_tol: float | None = None) -> None:
    """The outputs so far are HF's greedy decoding of the request's synthetic prompt (``rel_tol``: within that
    fraction of the logit scale of HF's best token at every position, for low-precision runs)."""
    prompt = synthetic_prompt(d.ex.tokens.seed, req_id, 0, d.prompt_len[req_id], d.ex.spec.vocab_size)
    assert d.outputs[req_id], req_id
    if rel_tol is None:
        assert_hf_greedy(hf, prompt, d.outputs[req_id])
    else:
        assert_near_greedy(hf, prompt, d.outputs[req_id], rel_tol)


def assert_near_greedy(hf, prompt, outputs, rel_tol: float) -> None:
    """For low-precision runs: each output is within ``rel_tol`` x logit scale of HF's (float32) best logit at its
    position, given the same prefix (teacher-forced on ``outputs``)."""
    ids = [int(t) for t in prompt] + [int(t) for t in outputs]
    logits = hf_logits(hf, ids[:-1])[len(prompt) - 1:]
    chosen = logits[torch.arange(len(outputs)), torch.as_tensor([int(t) for t in outputs])]
    shortfall = float((logits.max(-1).values - chosen).max())
    scale = float(logits.abs().max())
    assert shortfall <= rel_tol * scale, f"a token {shortfall:.3g} below HF's best (scale {scale:.3g})"
