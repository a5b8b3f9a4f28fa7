"""CacheOPT's reservation ledger (heuristics/kv_ledger.py): accounting identities, the reserve floor, extensions.

    committed = Σ_r (A_r − b_r),  uncommitted = M − committed,  pool_room = uncommitted − reserved_blocks
    admission needs blocks ≤ pool_room; embedding commits nothing; extensions may go down to uncommitted = 0
"""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from heuristics.kv_ledger import KVLedger
from runtime.core.errors import ConfigError


def expected_committed(ledger: KVLedger) -> int:
    return sum(a - ledger.borrowed.get(r, 0) for r, a in ledger.alloc.items())


# Admission and the reserve floor ---------------------------------------------------------------------------------
def test_admit_takes_only_the_pool_above_the_reserve():
    ledger = KVLedger(num_blocks=40, reserved_blocks=8)
    assert ledger.pool_room == 32 and ledger.uncommitted == 40
    assert ledger.admit("a", 20)
    assert (ledger.committed, ledger.uncommitted, ledger.pool_room) == (20, 20, 12)
    # 13 blocks are uncommitted-but-reserved short: refused, and nothing changes.
    assert not ledger.admit("b", 13)
    assert not ledger.has("b") and ledger.committed == 20
    # Exactly the pool: admitted, the uncommitted blocks are now exactly the reserve.
    assert ledger.admit("b", 12)
    assert ledger.uncommitted == ledger.reserved_blocks == 8 and ledger.pool_room == 0
    assert not ledger.admit("c", 1)
    ledger.check_invariants()


def test_embedding_commits_nothing_and_works_with_an_empty_pool():
    ledger = KVLedger(num_blocks=40, reserved_blocks=8)
    assert ledger.admit("host", 32)
    assert ledger.pool_room == 0
    ledger.embed("guest", "host", 10)
    assert ledger.committed == 32 and ledger.uncommitted == 8  # the reserve is untouched
    assert ledger.is_guest("guest") and not ledger.is_guest("host")
    assert ledger.lent["host"] == 10 and ledger.own_blocks("host") == 22 and ledger.own_blocks("guest") == 10
    assert ledger.guests["host"] == ["guest"] and ledger.host_of["guest"] == "host"
    assert ledger.num_embedded == 1
    ledger.check_invariants({"host": 22, "guest": 10})
    with pytest.raises(AssertionError):
        ledger.check_invariants({"host": 23})  # the host may not hold the tail it lent


def test_guest_release_returns_the_lent_tail_without_touching_committed():
    ledger = KVLedger(num_blocks=40, reserved_blocks=0)
    assert ledger.admit("host", 30)
    ledger.embed("g1", "host", 5)
    ledger.embed("g2", "host", 7)
    assert ledger.own_blocks("host") == 18 and ledger.committed == 30
    assert ledger.release("g1") == []
    assert ledger.committed == 30 and ledger.lent["host"] == 7 and ledger.own_blocks("host") == 23
    assert ledger.guests["host"] == ["g2"]
    ledger.check_invariants()


def test_host_release_turns_guests_into_roots_without_raising_committed():
    ledger = KVLedger(num_blocks=64, reserved_blocks=4)
    assert ledger.admit("host", 30)
    assert ledger.admit("other", 10)
    ledger.embed("g1", "host", 5)
    ledger.embed("g2", "host", 7)
    assert ledger.extend("g2", 3) == 3  # a guest's extension is committed in its own name
    before = ledger.committed
    assert before == 30 + 10 + 3
    orphans = ledger.release("host")
    assert sorted(orphans) == ["g1", "g2"]
    # The host's 30 go, its guests' 12 borrowed blocks come back in their own names: committed only falls.
    assert ledger.committed == before - 30 + 12 <= before
    assert not ledger.is_guest("g1") and not ledger.is_guest("g2")
    assert "host" not in ledger.guests and "host" not in ledger.lent
    assert ledger.alloc == {"other": 10, "g1": 5, "g2": 10}
    assert ledger.own_blocks("g1") == 5 and ledger.own_blocks("g2") == 10
    assert ledger.committed == expected_committed(ledger)
    ledger.check_invariants()
    # Releasing a former guest now gives back everything it holds.
    ledger.release("g2")
    assert ledger.committed == 15
    ledger.check_invariants()


# Extensions ------------------------------------------------------------------------------------------------------
def test_extend_grants_want_from_the_pool_without_touching_the_reserve():
    ledger = KVLedger(num_blocks=40, reserved_blocks=8)
    assert ledger.admit("a", 10)
    assert ledger.extend("a", 5) == 5
    assert ledger.alloc["a"] == 15 and ledger.committed == 15
    assert (ledger.num_extensions, ledger.num_reserve_extensions, ledger.reserve_blocks_used) == (1, 0, 0)


def test_extend_may_take_the_reserve_and_counts_what_it_took():
    ledger = KVLedger(num_blocks=40, reserved_blocks=8)
    assert ledger.admit("a", 30)  # pool_room 2, uncommitted 10
    assert ledger.extend("a", 5) == 5  # 2 from the pool, 3 from below the floor
    assert ledger.committed == 35 and ledger.uncommitted == 5 and ledger.pool_room == -3
    assert (ledger.num_extensions, ledger.num_reserve_extensions, ledger.reserve_blocks_used) == (1, 1, 3)
    assert ledger.extend("a", 2) == 2  # entirely from the reserve
    assert (ledger.num_extensions, ledger.num_reserve_extensions, ledger.reserve_blocks_used) == (2, 2, 5)
    # Admission is closed while the reserve is being used.
    assert not ledger.admit("b", 1)
    ledger.check_invariants()


def test_extend_grants_a_partial_amount_of_at_least_need_or_nothing():
    ledger = KVLedger(num_blocks=20, reserved_blocks=2)
    assert ledger.admit("a", 17)  # uncommitted 3
    assert ledger.extend("a", 10, 4) == 0  # 3 < need: nothing
    assert ledger.alloc["a"] == 17 and ledger.num_extensions == 0
    assert ledger.extend("a", 10, 2) == 3  # partial: everything left, >= need
    assert ledger.alloc["a"] == 20 and ledger.uncommitted == 0
    assert ledger.extend("a", 1, 1) == 0  # the cache is fully committed
    assert ledger.extend("a", 0, 0) == 0  # a zero grant is no extension
    assert ledger.num_extensions == 1
    ledger.check_invariants()


@pytest.mark.parametrize("reserved", [-1, 10, 11, 1.5, None])
def test_reserve_out_of_range_is_a_config_error(reserved):
    with pytest.raises(ConfigError, match="reserved_blocks"):
        KVLedger(num_blocks=10, reserved_blocks=reserved)


# Random sequences ------------------------------------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    """admit/embed/extend/release in random order keep every identity; admission never dips into the reserve."""

    M, RESERVE = 48, 6

    def __init__(self):
        super().__init__()
        self.ledger = KVLedger(num_blocks=self.M, reserved_blocks=self.RESERVE)
        self.next_id = 0
        self.reserve_used = 0

    def _new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    @rule(blocks=st.integers(1, 30))
    def admit(self, blocks):
        ledger = self.ledger
        room, before = ledger.pool_room, ledger.committed
        ok = ledger.admit(self._new_id(), blocks)
        assert ok == (blocks <= room)
        assert ledger.committed == before + (blocks if ok else 0)
        if ok:
            assert ledger.uncommitted >= ledger.reserved_blocks

    @precondition(lambda self: any(h not in self.ledger.host_of for h in self.ledger.alloc))
    @rule(data=st.data())
    def embed(self, data):
        ledger = self.ledger
        hosts = sorted(h for h in ledger.alloc if h not in ledger.host_of and ledger.own_blocks(h) > 0)
        if not hosts:
            return
        host = data.draw(st.sampled_from(hosts))
        blocks = data.draw(st.integers(1, ledger.own_blocks(host)))
        before, own = ledger.committed, ledger.own_blocks(host)
        ledger.embed(self._new_id(), host, blocks)
        assert ledger.committed == before
        assert ledger.own_blocks(host) == own - blocks

    @precondition(lambda self: self.ledger.alloc)
    @rule(data=st.data(), want=st.integers(0, 12), need=st.integers(0, 12))
    def extend(self, data, want, need):
        ledger = self.ledger
        req = data.draw(st.sampled_from(sorted(ledger.alloc)))
        available, room = ledger.uncommitted, ledger.pool_room
        alloc, used = ledger.alloc[req], ledger.reserve_blocks_used
        grant = ledger.extend(req, want, need)
        expected = min(want, available)
        if expected < need or expected <= 0:
            assert grant == 0
        else:
            assert grant == expected >= need
        assert ledger.alloc[req] == alloc + grant
        assert ledger.reserve_blocks_used - used == max(0, grant - max(0, room))
        assert ledger.uncommitted >= 0

    @precondition(lambda self: self.ledger.alloc)
    @rule(data=st.data())
    def release(self, data):
        ledger = self.ledger
        req = data.draw(st.sampled_from(sorted(ledger.alloc)))
        before = ledger.committed
        guests = list(ledger.guests.get(req, ()))
        orphans = ledger.release(req)
        assert sorted(orphans) == sorted(guests)
        assert ledger.committed <= before
        for g in orphans:
            assert not ledger.is_guest(g) and ledger.has(g)
        assert not ledger.has(req)

    @invariant()
    def identities(self):
        ledger = self.ledger
        assert ledger.committed == expected_committed(ledger)
        assert 0 <= ledger.committed <= ledger.num_blocks
        assert ledger.uncommitted == ledger.num_blocks - ledger.committed
        assert ledger.pool_room == ledger.uncommitted - ledger.reserved_blocks
        for host, lent in ledger.lent.items():
            assert 0 <= lent <= ledger.alloc[host]
        assert ledger.num_reserve_extensions <= ledger.num_extensions
        ledger.check_invariants()


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
