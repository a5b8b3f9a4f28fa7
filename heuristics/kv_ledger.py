"""CacheOPT's reservation ledger: who has been promised which share of the KV cache (algorithms.md 7.2–7.3).

The ``BlockManager`` is the *physical* ledger (which block ids each request holds, written as tokens appear);
this is the *reserved* one, in blocks. Every admitted request ``r`` has an allocation ``A_r`` (its estimated
demand ``blocks(p_r + L_r)``, plus extensions). A request admitted by *embedding* borrows ``b_r`` of those
blocks from a host ``h``'s reserved but unwritten tail (``lent_h = Σ_{guests} b_g``); the rest of ``A_r`` and
every root's allocation are *committed* against the cache::

    committed   = Σ_r (A_r − b_r)             (b_r = 0 for a request that borrows nothing)
    uncommitted = M − committed
    admission and embedding keep uncommitted ≥ reserved_blocks (the global reserve's floor)
    extensions may take uncommitted down to 0 (the reserve is for them only)

Own room: a request may hold ``A_r − lent_r`` blocks (hosts keep the tail they lent free). The scheduler keeps
``held_r ≤ A_r − lent_r`` for every ``r``, so ``Σ held ≤ committed ≤ M`` and a physical allocation backed by the
ledger always finds its blocks.

When a host needs a lent block back, algorithms.md 7.2 moves the guest to a free block, else to a reserve block,
else preempts it. In a paged cache blocks are interchangeable, so "the guest moves to a free block" and "the host
extends into a free block" cost the same one free block; the ledger does the latter (``extend``), and a guest is
preempted only when not even one block is uncommitted. When a host finishes or is preempted, its guests' borrowed
blocks become their own committed ones (they were inside the host's committed allocation, so ``committed`` only
falls).
"""
from __future__ import annotations

from runtime.core.errors import ConfigError


class KVLedger:
    __slots__ = ("num_blocks", "reserved_blocks", "alloc", "borrowed", "host_of", "guests", "lent", "committed",
                 "num_embedded", "num_extensions", "num_reserve_extensions", "reserve_blocks_used")

    def __init__(self, *, num_blocks: int, reserved_blocks: int = 0) -> None:
        if not isinstance(reserved_blocks, int) or not 0 <= reserved_blocks < num_blocks:
            raise ConfigError(f"scheduler.reserved_blocks must be an integer in [0, {num_blocks}) (the cache has "
                              f"{num_blocks} blocks), got {reserved_blocks!r}")
        self.num_blocks = num_blocks
        self.reserved_blocks = reserved_blocks
        self.alloc: dict[str, int] = {}
        self.borrowed: dict[str, int] = {}
        self.host_of: dict[str, str] = {}
        self.guests: dict[str, list[str]] = {}
        self.lent: dict[str, int] = {}
        self.committed = 0
        # Counters for the run summary.
        self.num_embedded = 0
        self.num_extensions = 0
        self.num_reserve_extensions = 0
        self.reserve_blocks_used = 0

    # Queries ------------------------------------------------------------------------------------------------------
    @property
    def uncommitted(self) -> int:
        return self.num_blocks - self.committed

    @property
    def pool_room(self) -> int:
        """Blocks admission may commit: the uncommitted ones above the reserve's floor."""
        return self.num_blocks - self.committed - self.reserved_blocks

    def has(self, req_id: str) -> bool:
        return req_id in self.alloc

    def own_blocks(self, req_id: str) -> int:
        """``A_r − lent_r``: the blocks ``req_id`` itself may hold."""
        return self.alloc[req_id] - self.lent.get(req_id, 0)

    def is_guest(self, req_id: str) -> bool:
        return req_id in self.host_of

    # Mutations ----------------------------------------------------------------------------------------------------
    def admit(self, req_id: str, blocks: int) -> bool:
        """Commit ``blocks`` from the pool above the reserve; False (nothing changes) if they are not there."""
        assert req_id not in self.alloc, req_id
        if blocks > self.pool_room:
            return False
        self.alloc[req_id] = blocks
        self.committed += blocks
        return True

    def embed(self, req_id: str, host: str, blocks: int) -> None:
        """Admit ``req_id`` inside ``host``'s unwritten tail (the caller checked that it fits)."""
        assert req_id not in self.alloc and host in self.alloc and host not in self.host_of, (req_id, host)
        self.alloc[req_id] = blocks
        self.borrowed[req_id] = blocks
        self.host_of[req_id] = host
        self.guests.setdefault(host, []).append(req_id)
        self.lent[host] = self.lent.get(host, 0) + blocks
        self.num_embedded += 1

    def extend(self, req_id: str, want: int, need: int = 1) -> int:
        """Grow ``A_r`` by up to ``want`` blocks from the pool, then the reserve; at least ``need`` or nothing.

        Returns the blocks granted.
        """
        available = self.uncommitted
        grant = want if want <= available else available
        if grant < need or grant <= 0:
            return 0
        below_floor = max(0, grant - max(0, self.pool_room))
        self.alloc[req_id] += grant
        self.committed += grant
        self.num_extensions += 1
        if below_floor:
            self.num_reserve_extensions += 1
            self.reserve_blocks_used += below_floor
        return grant

    def release(self, req_id: str) -> list[str]:
        """Forget ``req_id`` (finished, preempted or swapped out); returns its guests, now roots."""
        blocks = self.alloc.pop(req_id)
        borrowed = self.borrowed.pop(req_id, 0)
        self.committed -= blocks - borrowed
        host = self.host_of.pop(req_id, None)
        if host is not None:
            self.lent[host] -= borrowed
            self.guests[host].remove(req_id)
        orphans = self.guests.pop(req_id, [])
        self.lent.pop(req_id, None)
        for guest in orphans:
            # Its borrowed blocks were inside the released allocation: they are now committed in its own name.
            self.committed += self.borrowed.pop(guest)
            del self.host_of[guest]
        return orphans

    def check_invariants(self, held: dict[str, int] | None = None) -> None:
        """Accounting identities; with ``held`` (blocks per request), the physical bound ``held ≤ own room``."""
        assert self.committed == sum(a - self.borrowed.get(r, 0) for r, a in self.alloc.items()), "committed drifted"
        assert 0 <= self.committed <= self.num_blocks, (self.committed, self.num_blocks)
        for host, guests in self.guests.items():
            assert self.lent.get(host, 0) == sum(self.borrowed[g] for g in guests), host
            assert all(self.host_of[g] == host for g in guests), host
        for guest, host in self.host_of.items():
            assert host in self.alloc and host not in self.host_of, (guest, host)
        if held is not None:
            for req_id, blocks in held.items():
                assert blocks <= self.own_blocks(req_id), (req_id, blocks, self.alloc[req_id], self.lent.get(req_id))
