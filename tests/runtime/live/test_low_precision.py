"""bfloat16: the mixed-batch logits check and a LiveExecutor run (chunked prefill, decodes, swap out/in,
recompute) against HF in float32 holding the same (bf16-rounded) weights, with a looser tolerance.

On the CPU this runs in the default suite; the CUDA versions are marked ``gpu`` (``pytest -m gpu``) and skip
where no GPU is visible. bfloat16 keeps 8 bits of mantissa: on the CPU the worst row differs from float32 HF by
~1.5-1.8% of the logit scale (tiny and llama_15m, several seeds), so 5% is the bound; the bugs the float32 tests
catch (a mask, position, slot or norm wrong) move logits by tens of percent of the scale.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.core.kv_cache import BlockManager
from tests.runtime.live.helpers import (GQA_TIED, LLAMA_15M, TINY, Driver, PagedRunner, check_outputs, hf_logits,
                                        hf_twin, make_executor, make_model, run_scenario)
from tests.runtime.live.test_model_logits import fixed_scenario

BF16_REL_TOL = 0.05


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (torch.cuda.is_available() is False)")
    return torch.device("cuda")


def check_mixed_batch_bf16(spec, device: torch.device) -> None:
    model = make_model(spec, seed=1, device=device, dtype=torch.bfloat16)
    hf = hf_twin(model)  # float32 CPU copy of the rounded weights
    rng = np.random.default_rng(11)
    toks = {f"r{i}": rng.integers(0, spec.vocab_size, size=80) for i in range(5)}
    logits = hf_logits(hf, np.stack(list(toks.values())))
    refs = {r: logits[i] for i, r in enumerate(toks)}
    bm = BlockManager(num_blocks=64, block_size=16, watermark=0.0)

    def allocate(seq, n):
        assert bm.allocate_slots(seq.req_id, n)
        seq.table = bm.block_table(seq.req_id)

    runner = PagedRunner(model, num_blocks=64, block_size=16)
    assert runner.cache.k.dtype == torch.bfloat16 and runner.cache.k.device.type == device.type
    seqs = fixed_scenario(toks)
    assert run_scenario(runner, seqs, refs, BF16_REL_TOL, allocate=allocate) == sum(s.total for s in seqs)


def check_executor_bf16(spec, device: str) -> None:
    ex = make_executor(spec, num_blocks=48, block_size=8, num_swap_blocks=16, device=device, dtype="bfloat16")
    assert ex.dtype == torch.bfloat16 and ex.cache.k.device.type == device
    if device == "cuda":
        assert ex.cache.k_swap.is_pinned()
    hf = hf_twin(ex.model)
    d = Driver(ex, {"a": 21, "b": 40, "s": 30, "f": 40})
    d.step({"a": 21, "b": 1, "s": 30})
    d.step({"b": 7}, ("a", "s"))
    d.step({"b": 32}, ("a", "s"))
    d.step(None, ("a", "b", "s"))
    old = list(d.bm.block_table("s"))
    d.step({"f": 40}, ("a", "b"), swap_out=("s",))
    d.step(None, ("a", "b", "f"))
    d.step(None, ("a", "b", "f", "s"), swap_in=("s",))
    assert not set(d.bm.block_table("s")) & set(old)
    d.preempt_recompute("a")
    d.step({"a": d.num_tokens("a")}, ("b", "f", "s"), recompute=("a",))
    for _ in range(3):
        d.step(None, ("a", "b", "f", "s"))
    for r in d.prompt_len:
        check_outputs(d, hf, r, rel_tol=BF16_REL_TOL)


def test_bfloat16_mixed_batch_on_cpu():
    check_mixed_batch_bf16(TINY, torch.device("cpu"))


def test_bfloat16_executor_on_cpu():
    check_executor_bf16(TINY, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [TINY, GQA_TIED, LLAMA_15M], ids=lambda s: s.name)
def test_bfloat16_mixed_batch_on_cuda(spec):
    check_mixed_batch_bf16(spec, needs_cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [TINY, LLAMA_15M], ids=lambda s: s.name)
def test_bfloat16_executor_on_cuda(spec):
    needs_cuda()
    check_executor_bf16(spec, "cuda")


@pytest.mark.gpu
def test_float32_mixed_batch_on_cuda_is_tight():
    """In float32 the CUDA path must match HF as closely as the CPU one (TF32 matmuls off)."""
    from tests.runtime.live.helpers import FP32_REL_TOL

    device = needs_cuda()
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = make_model(GQA_TIED, seed=2, device=device)
        hf = hf_twin(model)
        rng = np.random.default_rng(12)
        toks = {f"r{i}": rng.integers(0, GQA_TIED.vocab_size, size=80) for i in range(5)}
        logits = hf_logits(hf, np.stack(list(toks.values())))
        refs = {r: logits[i] for i, r in enumerate(toks)}
        seqs = fixed_scenario(toks)
        free = list(np.random.default_rng(0).permutation(64))
        for s in seqs:
            need = -(-s.total // 16)
            s.table, free = [int(b) for b in free[:need]], free[need:]
        run_scenario(PagedRunner(model, num_blocks=64, block_size=16), seqs, refs, 10 * FP32_REL_TOL)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
