"""LiveExecutor end to end: hand-built SchedulerOutputs over a real BlockManager, greedy tokens against HF's.

The executor draws its prompts itself (``synthetic_prompt``), so HF greedy-decodes the same ids from the same
weights (the executor's model re-drawn with the sensitive init of ``helpers.randomize``, then copied into HF).
Scenarios: a mixed run with a chunked prefill (1/7/16/16) beside decodes; a chunked vs a whole prefill of the
same request; a recompute preemption (blocks freed, prompt + outputs prefilled again, in chunks); a swap out and
in that brings the request back to different GPU blocks, whose old blocks meanwhile hold another request's KV.
The check (``helpers.assert_hf_greedy``) also requires HF's top-1/top-2 gaps to be far above float32 noise, so
an equal token is meaningful.
"""
from __future__ import annotations

import pytest

from tests.runtime.live.helpers import GQA_TIED, TINY, Driver, check_outputs, hf_twin, make_executor


@pytest.mark.parametrize("spec", [TINY, GQA_TIED], ids=lambda s: s.name)
def test_greedy_decoding_matches_hf(spec):
    ex = make_executor(spec)
    hf = hf_twin(ex.model)
    d = Driver(ex, {"a": 21, "b": 40, "c": 9})
    d.step({"a": 21, "b": 1, "c": 9})
    d.step({"b": 7}, ("a", "c"))
    d.step({"b": 16}, ("a", "c"))
    d.step({"b": 16}, ("a", "c"))  # b's last chunk: b samples its first token
    for _ in range(6):
        d.step(None, ("a", "b", "c"))
    for r in d.prompt_len:
        check_outputs(d, hf, r)
        assert ex.tokens.outputs(r) == d.outputs[r]
    assert [len(v) for v in d.outputs.values()] == [10, 7, 10]


def test_chunked_prefill_gives_the_whole_prefills_first_token():
    ex = make_executor(TINY)
    hf = hf_twin(ex.model)
    d = Driver(ex, {"x": 45, "y": 12})
    d.step({"x": 45, "y": 12})
    whole = d.outputs["x"][0]
    # x finishes; the same request id is prefilled again in chunks while y decodes.
    ex_tokens_before = ex.tokens.outputs("x")
    d.bm.free("x")
    d.computed["x"], d.outputs["x"] = 0, []
    d.step(None, ("y",), finished=("x",))
    assert ex.tokens.outputs("x") == [] and ex_tokens_before == [whole]
    for c in (1, 7, 16, 21):
        d.step({"x": c}, ("y",))
    assert d.outputs["x"] == [whole]
    check_outputs(d, hf, "x")
    check_outputs(d, hf, "y")


def test_recompute_preemption_continues_with_the_same_tokens():
    ex = make_executor(TINY)
    hf = hf_twin(ex.model)
    d = Driver(ex, {"p": 30, "o": 17})
    d.step({"p": 30, "o": 17})
    for _ in range(4):
        d.step(None, ("p", "o"))
    assert len(d.outputs["p"]) == 5
    old_table = list(d.bm.block_table("p"))
    d.preempt_recompute("p")
    # Another request takes p's blocks meanwhile, so p's recompute lands elsewhere.
    d.prompt_len["q"], d.computed["q"], d.outputs["q"] = 20, 0, []
    d.step({"q": 20}, ("o",))
    assert set(d.bm.block_table("q")) & set(old_table)
    # Recompute prompt + 5 outputs (35 tokens) in two chunks, the first ending inside a block.
    d.step({"p": 13}, ("o", "q"), recompute=("p",))
    d.step({"p": 22}, ("o", "q"), recompute=("p",))
    assert len(d.outputs["p"]) == 6
    for _ in range(4):
        d.step(None, ("p", "o", "q"))
    for r in ("p", "o", "q"):
        check_outputs(d, hf, r)


def test_swap_out_and_in_preserves_kv_on_different_blocks():
    ex = make_executor(TINY, num_blocks=32, block_size=8, num_swap_blocks=16)
    hf = hf_twin(ex.model)
    d = Driver(ex, {"s": 30, "o": 11, "f": 40})
    d.step({"s": 30, "o": 11})
    for _ in range(3):
        d.step(None, ("s", "o"))
    old = list(d.bm.block_table("s"))
    # Swap s out; in the same step f's prefill takes the freed blocks and overwrites them.
    d.step({"f": 40}, ("o",), swap_out=("s",))
    assert d.bm.is_swapped("s") and set(d.bm.block_table("f")) >= set(old)
    d.step(None, ("o", "f"))
    # Back in, to other blocks, and decoding in the same step.
    d.step(None, ("o", "f", "s"), swap_in=("s",))
    new = d.bm.block_table("s")
    assert len(new) == len(old) and not set(new) & set(old)
    for _ in range(3):
        d.step(None, ("o", "f", "s"))
    for r in ("s", "o", "f"):
        check_outputs(d, hf, r)
    assert len(d.outputs["s"]) == 8


def test_swap_out_and_in_in_one_step_reuses_the_freed_blocks():
    """One step swaps w out and u in, and u lands on the blocks w just left: the executor must copy w's blocks
    out before copying u's in (the order SchedulerOutput documents)."""
    ex = make_executor(TINY, num_blocks=16, block_size=8, num_swap_blocks=12)
    hf = hf_twin(ex.model)
    d = Driver(ex, {"u": 20, "w": 30, "o": 5})
    d.step({"u": 20, "w": 30, "o": 5})
    d.step(None, ("u", "w", "o"))
    d.step(None, ("w", "o"), swap_out=("u",))
    d.step(None, ("w", "o"))
    w_blocks = list(d.bm.block_table("w"))
    d.step(None, ("u", "o"), swap_out=("w",), swap_in=("u",))
    assert set(d.bm.block_table("u")) <= set(w_blocks), "the scenario needs u to land on w's old blocks"
    d.step(None, ("u", "o"))
    d.step(None, ("u", "o", "w"), swap_in=("w",))
    for _ in range(2):
        d.step(None, ("u", "o", "w"))
    for r in ("u", "w", "o"):
        check_outputs(d, hf, r)
