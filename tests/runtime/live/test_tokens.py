"""Synthetic prompts and the TokenStore: prompt ids depend only on (seed, request, position); outputs follow the
prompt at the positions they were sampled for, and nothing else."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.live.tokens import TokenStore, synthetic_prompt


@given(seed=st.integers(0, 2**31), req_id=st.text(min_size=1, max_size=12), length=st.integers(1, 300),
       vocab=st.sampled_from([2, 256, 32000, 128256]), cuts=st.sets(st.integers(1, 299), max_size=6))
def test_prompt_is_independent_of_chunking_and_in_vocab(seed, req_id, length, vocab, cuts):
    whole = synthetic_prompt(seed, req_id, 0, length, vocab)
    assert whole.dtype == np.int64 and whole.shape == (length,)
    assert whole.min() >= 0 and whole.max() < vocab
    bounds = [0, *sorted(c for c in cuts if c < length), length]
    chunks = [synthetic_prompt(seed, req_id, a, b, vocab) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_prompts_differ_across_requests_and_seeds_and_look_random():
    vocab = 256
    base = synthetic_prompt(0, "r0", 0, 200, vocab)
    for other in (synthetic_prompt(0, "r1", 0, 200, vocab), synthetic_prompt(1, "r0", 0, 200, vocab),
                  synthetic_prompt(0, "r0 ", 0, 200, vocab)):
        # Independent streams agree on ~1/256 of the positions; equal ones on all.
        assert (other == base).mean() < 0.05
    np.testing.assert_array_equal(base, synthetic_prompt(0, "r0", 0, 200, vocab))  # deterministic
    # Not a constant or a short cycle: most of the vocabulary shows up, neighbours differ.
    assert len(set(base.tolist())) > 100 and (np.diff(base) != 0).mean() > 0.9
    assert len(set(synthetic_prompt(0, "r0", 0, 10_000, 32000).tolist())) > 8000


def test_token_store_prompt_then_outputs():
    store = TokenStore(seed=5, vocab_size=100)
    prompt = synthetic_prompt(5, "a", 0, 12, 100)
    np.testing.assert_array_equal(store("a", 0, 12), prompt)
    store.append("a", 7, 12)  # the first output is sampled for position 12, the end of the prompt
    store.append("a", 99, 13)
    store.append("a", 0, 14)
    assert store.outputs("a") == [7, 99, 0] and len(store) == 1
    np.testing.assert_array_equal(store("a", 0, 15), np.concatenate([prompt, [7, 99, 0]]))
    np.testing.assert_array_equal(store("a", 3, 12), prompt[3:])  # prompt only
    np.testing.assert_array_equal(store("a", 10, 14), np.concatenate([prompt[10:], [7, 99]]))  # straddles
    np.testing.assert_array_equal(store("a", 13, 15), [99, 0])  # outputs only
    np.testing.assert_array_equal(store("a", 14, 15), [0])  # a decode's one token
    assert store("a", 0, 15).dtype == np.int64
    # Other requests are unaffected.
    np.testing.assert_array_equal(store("b", 0, 20), synthetic_prompt(5, "b", 0, 20, 100))
    store.drop("a")
    assert store.outputs("a") == [] and len(store) == 0
    np.testing.assert_array_equal(store("a", 0, 15), synthetic_prompt(5, "a", 0, 15, 100))
    store.append("a", 3, 20)  # after a drop, the request starts over (a new first-output position)
    assert store.outputs("a") == [3]


@pytest.mark.parametrize("position", [10, 11, 13, 100])
def test_output_appended_at_the_wrong_position_raises(position):
    store = TokenStore(seed=0, vocab_size=50)
    store.append("a", 1, 10)
    store.append("a", 2, 11)
    with pytest.raises(RuntimeError, match="expected 12"):
        store.append("a", 3, position)
    assert store.outputs("a") == [1, 2]


def test_asking_for_a_token_not_sampled_yet_raises():
    store = TokenStore(seed=0, vocab_size=50)
    store.append("a", 1, 10)
    store("a", 0, 11)
    with pytest.raises(RuntimeError, match="only 11 tokens exist"):
        store("a", 0, 12)
    with pytest.raises(RuntimeError):
        store("a", 11, 12)
