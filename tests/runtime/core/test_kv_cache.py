from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.core.errors import ConfigError
from runtime.core.kv_cache import BlockManager


def test_blocks_for_rounds_up():
    bm = BlockManager(num_blocks=8, block_size=16)
    assert [bm.blocks_for(n) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]


def test_allocate_append_free_exact_accounting():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.allocate_slots("a", 5)  # 2 blocks
    assert bm.num_blocks_of("a") == 2 and bm.num_free_blocks == 2
    assert bm.append_slot("a", 8)  # still 2 blocks
    assert bm.num_blocks_of("a") == 2
    assert bm.append_slot("a", 9)  # crosses a boundary
    assert bm.num_blocks_of("a") == 3 and bm.num_free_blocks == 1
    assert not bm.allocate_slots("b", 8)  # needs 2, one free: nothing allocated
    assert bm.num_blocks_of("b") == 0 and bm.num_free_blocks == 1
    assert bm.free("a") == 3
    assert bm.num_free_blocks == 4 and bm.num_used_blocks == 0


def test_watermark_applies_to_admission_only():
    bm = BlockManager(num_blocks=100, block_size=16, watermark=0.1)
    assert bm.watermark_blocks == 10
    assert not bm.allocate_slots("a", 91 * 16, use_watermark=True)
    assert bm.allocate_slots("a", 90 * 16, use_watermark=True)
    assert bm.allocate_slots("a", 100 * 16)  # a running request may eat into the watermark
    assert bm.num_free_blocks == 0
    assert not bm.append_slot("a", 100 * 16 + 1)


def test_can_fit_ever_respects_watermark():
    bm = BlockManager(num_blocks=10, block_size=16, watermark=0.1)
    assert bm.can_fit_ever(9 * 16)
    assert not bm.can_fit_ever(9 * 16 + 1)


@pytest.mark.parametrize("kwargs, key", [({"num_blocks": 0}, "num_blocks"), ({"num_blocks": 4, "block_size": 0}, "block_size"),
                                         ({"num_blocks": 4, "watermark": 1.0}, "watermark")])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        BlockManager(**kwargs)


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate/append/free sequences keep the accounting exact."""

    def __init__(self):
        super().__init__()
        self.bm = BlockManager(num_blocks=32, block_size=4, watermark=0.05)
        self.tokens: dict[str, int] = {}

    @rule(req=st.sampled_from("abcdef"), n=st.integers(1, 60), wm=st.booleans())
    def allocate(self, req, n, wm):
        before = self.bm.num_free_blocks
        held = self.bm.num_blocks_of(req)
        total = max(n, self.tokens.get(req, 0))
        ok = self.bm.allocate_slots(req, total, use_watermark=wm)
        if ok:
            self.tokens[req] = total
            assert self.bm.num_blocks_of(req) == max(held, self.bm.blocks_for(total))
        else:
            assert self.bm.num_free_blocks == before and self.bm.num_blocks_of(req) == held

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def append(self, data):
        req = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.bm.append_slot(req, self.tokens[req] + 1):
            self.tokens[req] += 1

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        req = data.draw(st.sampled_from(sorted(self.tokens)))
        self.bm.free(req)
        del self.tokens[req]

    @invariant()
    def accounting(self):
        bm = self.bm
        assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
        assert bm.num_used_blocks == sum(bm.num_blocks_of(r) for r in self.tokens)
        for req, n in self.tokens.items():
            assert bm.num_blocks_of(req) * bm.block_size >= n
        bm.check_invariants()


TestBlockManagerMachine = BlockManagerMachine.TestCase
