"""Our paged, mixed-batch forward pass against transformers' LlamaForCausalLM, logit by logit (CPU, float32).

Every step is one mixed batch: whole prefills, prefill chunks of sizes 1, 7, 16, 33 (not aligned to the block
size), and decodes of other sequences, all at once. Every row of every step -- each chunk position and each
decode -- is compared with HF's logits of the whole sequence at that position. The KV cache starts as NaN
(except the null slot), so reading a slot that no step wrote fails the test too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.kv_cache import BlockManager
from runtime.live.model import apply_rope, rope_tables
from tests.runtime.live.helpers import (FP32_REL_TOL, GQA_TIED, LLAMA_15M, TINY, TINY_THETA_EPS, PagedRunner, Seq,
                                        hf_logits, run_scenario, twin_pair)

SPECS = {"tiny": TINY, "tiny_theta_eps": TINY_THETA_EPS, "llama_15m": LLAMA_15M, "gqa_tied": GQA_TIED}
MAX_LEN = 80


@pytest.fixture(scope="module")
def sequences():
    """Teacher-forced token ids of up to 5 sequences, and HF's logits of each per spec (cached)."""
    rng = np.random.default_rng(7)
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(spec_name: str):
        spec = SPECS[spec_name]
        toks = {f"r{i}": rng_tokens[i] % spec.vocab_size for i in range(5)}
        if spec_name not in cache:
            _, hf = twin_pair(spec)
            ids = np.stack([toks[f"r{i}"] for i in range(5)])
            logits = hf_logits(hf, ids)  # one batch of equal lengths: no padding
            cache[spec_name] = {f"r{i}": logits[i] for i in range(5)}
        return toks, cache[spec_name]

    rng_tokens = [rng.integers(0, 1 << 30, size=MAX_LEN) for _ in range(5)]
    return get


def fixed_scenario(toks) -> list[Seq]:
    return [
        Seq("r0", toks["r0"], [37], num_decodes=6),                  # (a) whole prefill, then decodes
        Seq("r1", toks["r1"], [1, 7, 16, 33], num_decodes=3),        # (b) chunked 1/7/16/33 while others decode
        Seq("r2", toks["r2"], [10], num_decodes=8),                  # (c) decodes during r1's chunks
        Seq("r3", toks["r3"], [5, 15], num_decodes=3, start_step=2),  # joins later, chunked
        Seq("r4", toks["r4"], [1], num_decodes=4, start_step=1),      # one-token prompt
    ]


def run_fixed_scenario(sequences, spec_name: str, max_decode_gather: int = 1 << 21) -> BlockManager:
    """``fixed_scenario`` against HF, every row compared; tables grown step by step by a real BlockManager."""
    toks, refs = sequences(spec_name)
    model, _ = twin_pair(SPECS[spec_name])
    bm = BlockManager(num_blocks=64, block_size=16, watermark=0.0)
    seqs = fixed_scenario(toks)

    def allocate(seq, n):
        assert bm.allocate_slots(seq.req_id, n)
        seq.table = bm.block_table(seq.req_id)

    runner = PagedRunner(model, num_blocks=64, block_size=16, max_decode_gather=max_decode_gather)
    compared = run_scenario(runner, seqs, refs, FP32_REL_TOL, allocate=allocate)
    assert compared == sum(s.total for s in seqs)
    return bm


@pytest.mark.parametrize("spec_name, max_decode_gather", [
    ("tiny", 1 << 21), ("tiny", 1), ("tiny_theta_eps", 1 << 21), ("gqa_tied", 40), ("llama_15m", 1 << 21)])
def test_mixed_batch_matches_hf(sequences, spec_name, max_decode_gather):
    """Block tables grown step by step by the real BlockManager (interleaved ids across requests)."""
    bm = run_fixed_scenario(sequences, spec_name, max_decode_gather)
    # The scenario did mix: BlockManager interleaved the requests' blocks.
    assert any(t != list(range(t[0], t[0] + len(t))) for t in bm.tables.values())


@pytest.mark.parametrize("spec_name", ["llama_15m", "gqa_tied"])
def test_one_thread_vocab_blocked_lm_head_matches_hf(sequences, spec_name, monkeypatch):
    """On one CPU thread, steps sampling 4–12 rows take the vocabulary-blocked LM head: same logits as HF."""
    import runtime.live.model as model_module

    blocked_rows = []

    def counting(x, weight, block_rows):
        blocked_rows.append(x.shape[0])
        return vocab_blocked(x, weight, block_rows)

    vocab_blocked = model_module.vocab_blocked_linear
    monkeypatch.setattr(model_module, "vocab_blocked_linear", counting)
    monkeypatch.setattr(model_module, "LM_HEAD_BLOCK_BYTES", 4096)  # several blocks even for the tiny vocabulary
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_fixed_scenario(sequences, spec_name)
    finally:
        torch.set_num_threads(threads)
    assert blocked_rows and all(r in model_module.LM_HEAD_BLOCKED_ROWS for r in blocked_rows)


def test_vocab_blocked_linear_is_the_gemm_block_by_block():
    from runtime.live.model import lm_head_block_rows, vocab_blocked_linear

    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(7, 48, generator=gen), torch.randn(1000, 48, generator=gen)
    for rows in (64, 333, 1000, 4096):  # uneven last block, one block, a block past the end
        torch.testing.assert_close(vocab_blocked_linear(x, weight, rows), x @ weight.T, rtol=1e-5, atol=1e-5)
    assert vocab_blocked_linear(x.bfloat16(), weight.bfloat16(), 64).dtype == torch.float32
    assert lm_head_block_rows(288, 4) == 448          # llama_15m in fp32: 512 KiB of W_lm per block
    assert lm_head_block_rows(4096, 2) == 64           # never fewer than 64 rows


def test_tied_gqa_spec_and_twin_agree():
    """The GQA + tied variants really are tied in both models, and the norms under test are not all ones."""
    for spec in (LLAMA_15M, GQA_TIED):
        model, hf = twin_pair(spec)
        assert spec.num_kv_heads < spec.num_heads and spec.tie_word_embeddings
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert sum(p.numel() for p in model.parameters()) == spec.expected_num_params
        assert hf.config.num_key_value_heads == spec.num_kv_heads
        assert not torch.allclose(model.model.norm.weight, torch.ones(spec.hidden_size))


@st.composite
def schedules(draw):
    spec_name = draw(st.sampled_from(["tiny", "gqa_tied"]))
    block_size = draw(st.sampled_from([1, 8, 16]))
    plans = []
    for i in range(draw(st.integers(1, 5))):
        prompt = draw(st.integers(1, 60))
        cuts = sorted(draw(st.sets(st.integers(1, prompt - 1), max_size=4))) if prompt > 1 else []
        chunks = [int(c) for c in np.diff([0, *cuts, prompt])]
        plans.append((f"r{i}", chunks, draw(st.integers(0, 5)), draw(st.integers(0, 3))))
    blocks = sum(-(-(sum(c) + d) // block_size) for _, c, d, _ in plans)
    num_blocks = blocks + draw(st.integers(0, 8))
    order = draw(st.permutations(range(num_blocks)))
    max_decode_gather = draw(st.sampled_from([1, 40, 1 << 21]))
    return spec_name, block_size, plans, num_blocks, list(order), max_decode_gather


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(schedules())
def test_random_chunk_schedules_and_shuffled_tables(sequences, schedule):
    """Random chunk schedules, start steps and decode counts, with block tables cut from a shuffled list of
    block ids (non-contiguous, any order), block sizes 1/8/16 and decode groups split or not."""
    spec_name, block_size, plans, num_blocks, order, max_decode_gather = schedule
    toks, refs = sequences(spec_name)
    model, _ = twin_pair(SPECS[spec_name])
    seqs, free = [], list(order)
    for req_id, chunks, decodes, start in plans:
        seq = Seq(req_id, toks[req_id], chunks, decodes, start)
        need = -(-seq.total // block_size)
        seq.table, free = free[:need], free[need:]
        seqs.append(seq)
    runner = PagedRunner(model, num_blocks=num_blocks, block_size=block_size, max_decode_gather=max_decode_gather)
    assert run_scenario(runner, seqs, refs, FP32_REL_TOL) == sum(s.total for s in seqs)


def test_rope_tables_match_hf():
    """cos/sin tables and the rotation against HF's rotary embedding, for a non-default base."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from tests.runtime.live.helpers import hf_config

    spec = TINY_THETA_EPS
    cos, sin = rope_tables(spec, 64, torch.device("cpu"), torch.float32)
    rotary = LlamaRotaryEmbedding(config=hf_config(spec))
    x = torch.randn(1, 64, spec.head_dim, generator=torch.Generator().manual_seed(0))
    hf_cos, hf_sin = rotary(x, torch.arange(64)[None])
    torch.testing.assert_close(cos, hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, hf_sin[0], atol=1e-6, rtol=0)
    q = torch.randn(64, spec.num_heads, spec.head_dim, generator=torch.Generator().manual_seed(1))
    hf_q, _ = apply_rotary_pos_emb(q.transpose(0, 1)[None], q.transpose(0, 1)[None], hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q[0].transpose(0, 1), atol=1e-6, rtol=0)
