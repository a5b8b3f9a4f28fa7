"""Paged KV-cache accounting (vLLM's PagedAttention block manager), shared by the simulator and the live runtime.

The cache has ``num_blocks`` blocks of ``block_size`` tokens. A request holding ``n`` tokens of KV needs
``ceil(n / block_size)`` blocks. The manager hands out block ids from a free list and keeps each request's block
table, so the live runtime can turn tables into slot mappings. It only *reports* what fits; which request to
preempt when nothing fits is the scheduler's decision.

Invariant (checked by property tests): ``num_free_blocks + num_used_blocks == num_blocks``.

Admission of new prompts keeps ``watermark_blocks = floor(watermark * num_blocks)`` blocks free, so running
requests can grow a little before anyone has to be preempted (vLLM v0's watermark).

**Swap space.** ``num_swap_blocks`` CPU blocks (``kv.swap_space_gb``) hold the KV of requests preempted by
swapping. ``swap_out`` moves a request's whole table to CPU blocks and frees its GPU blocks; ``swap_in`` moves it
back to (possibly different) GPU blocks. Both return the ``(src, dst)`` block pairs an executor copies, and the
table keeps its length, so a swapped request resumes with exactly the KV it had. Invariants (property tests):
``num_free_cpu_blocks + Σ swapped tables == num_swap_blocks``; no block id, GPU or CPU, is in two tables; a
request is never on the GPU and on the CPU at once.
"""
from __future__ import annotations

import math

from runtime.core.errors import ConfigError


class BlockManager:
    """Block tables and a free list. Plain Python; every operation is O(blocks touched)."""

    __slots__ = ("num_blocks", "block_size", "watermark", "watermark_blocks", "_free", "_tables", "num_swap_blocks",
                 "_cpu_free", "_swapped")

    def __init__(self, *, num_blocks: int, block_size: int = 16, watermark: float = 0.01,
                 num_swap_blocks: int = 0) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ConfigError(f"kv.num_blocks must be a positive integer, got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"kv.block_size must be a positive integer, got {block_size!r}")
        if not 0.0 <= watermark < 1.0:
            raise ConfigError(f"kv.watermark must be in [0, 1), got {watermark!r}")
        if isinstance(num_swap_blocks, bool) or not isinstance(num_swap_blocks, int) or num_swap_blocks < 0:
            raise ConfigError(f"kv.swap_blocks must be an integer >= 0, got {num_swap_blocks!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark = watermark
        self.watermark_blocks = int(watermark * num_blocks)  # floor, as vLLM v0
        # Pop from the end: the lowest ids are handed out first, which keeps runs reproducible and tables readable.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}
        self.num_swap_blocks = num_swap_blocks
        self._cpu_free: list[int] = list(range(num_swap_blocks - 1, -1, -1))
        self._swapped: dict[str, list[int]] = {}

    # Queries ----------------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that ``num_tokens`` tokens of KV occupy."""
        return -(-num_tokens // self.block_size)

    def num_blocks_of(self, req_id: str) -> int:
        table = self._tables.get(req_id)
        return len(table) if table is not None else 0

    @property
    def tables(self) -> dict[str, list[int]]:
        """Every request's block table (read-only by contract: the live runtime builds slot mappings from it)."""
        return self._tables

    def block_table(self, req_id: str) -> list[int]:
        return self._tables.get(req_id, [])

    def has(self, req_id: str) -> bool:
        return req_id in self._tables

    def num_new_blocks(self, req_id: str, num_total_tokens: int) -> int:
        """Blocks ``req_id`` still lacks to hold ``num_total_tokens`` tokens."""
        return max(0, self.blocks_for(num_total_tokens) - self.num_blocks_of(req_id))

    def can_fit_ever(self, num_total_tokens: int) -> bool:
        """Whether a request of this many tokens could be admitted into an otherwise empty cache."""
        return self.blocks_for(num_total_tokens) <= self.num_blocks - self.watermark_blocks

    def can_allocate(self, num_new_blocks: int, *, use_watermark: bool = True) -> bool:
        reserve = self.watermark_blocks if use_watermark else 0
        return len(self._free) - num_new_blocks >= reserve

    @property
    def num_free_cpu_blocks(self) -> int:
        return len(self._cpu_free)

    def is_swapped(self, req_id: str) -> bool:
        return req_id in self._swapped

    def num_swapped_blocks_of(self, req_id: str) -> int:
        table = self._swapped.get(req_id)
        return len(table) if table is not None else 0

    @property
    def swapped_tables(self) -> dict[str, list[int]]:
        """CPU block tables of swapped requests (read-only by contract)."""
        return self._swapped

    def can_swap_out(self, req_id: str) -> bool:
        held = self.num_blocks_of(req_id)
        return 0 < held <= len(self._cpu_free)

    def can_swap_in(self, req_id: str, *, use_watermark: bool = True) -> bool:
        reserve = self.watermark_blocks if use_watermark else 0
        return len(self._free) - self.num_swapped_blocks_of(req_id) >= reserve

    # Mutations --------------------------------------------------------------------------------------------------
    def allocate_slots(self, req_id: str, num_total_tokens: int, *, use_watermark: bool = False) -> bool:
        """Grow ``req_id``'s table to hold ``num_total_tokens`` tokens.

        Returns False and allocates nothing when the blocks are not there (the caller decides what to preempt).
        New prompts pass ``use_watermark=True``; running requests growing by a token do not.
        """
        table = self._tables.get(req_id)
        held = len(table) if table is not None else 0
        need = -(-num_total_tokens // self.block_size) - held
        if need <= 0:
            if table is None:
                self._tables[req_id] = []
            return True
        free = self._free
        if len(free) - need < (self.watermark_blocks if use_watermark else 0):
            return False
        if table is None:
            table = self._tables[req_id] = []
        # Same order as popping one by one (lowest ids first), in two C-level list operations.
        table.extend(free[:-need - 1:-1])
        del free[-need:]
        return True

    def append_slot(self, req_id: str, num_total_tokens: int) -> bool:
        """Fast path of ``allocate_slots`` for a decode: at most one new block, no watermark."""
        table = self._tables[req_id]
        if len(table) * self.block_size >= num_total_tokens:
            return True
        if not self._free:
            return False
        table.append(self._free.pop())
        return True

    def free(self, req_id: str) -> int:
        """Release every block of ``req_id``, GPU and swapped (no-op if none); returns how many GPU blocks were freed."""
        cpu_table = self._swapped.pop(req_id, None)
        if cpu_table:
            self._cpu_free.extend(reversed(cpu_table))
        table = self._tables.pop(req_id, None)
        if not table:
            return 0
        # Reversed so the lowest ids come back out first, as at start-up.
        self._free.extend(reversed(table))
        return len(table)

    def swap_out(self, req_id: str) -> list[tuple[int, int]]:
        """Move ``req_id``'s blocks to CPU swap space; returns the (GPU, CPU) pairs to copy.

        Raises ``ValueError`` if the request holds no GPU blocks or the swap space cannot take them all (callers
        check ``can_swap_out`` and recompute instead, so a full swap space never loses a request).
        """
        table = self._tables.get(req_id)
        if not table or len(table) > len(self._cpu_free):
            raise ValueError(f"cannot swap out {req_id!r}: holds {len(table or ())} blocks, "
                             f"{len(self._cpu_free)} CPU blocks free")
        cpu = self._cpu_free
        dst = cpu[:-len(table) - 1:-1]
        del cpu[-len(table):]
        pairs = list(zip(table, dst))
        del self._tables[req_id]
        self._free.extend(reversed(table))
        self._swapped[req_id] = dst
        return pairs

    def swap_in(self, req_id: str, *, use_watermark: bool = True) -> list[tuple[int, int]]:
        """Move ``req_id``'s blocks back from CPU to free GPU blocks; returns the (CPU, GPU) pairs to copy.

        Raises ``ValueError`` if it is not swapped or the GPU blocks are not there (check ``can_swap_in``).
        """
        cpu_table = self._swapped.get(req_id)
        if cpu_table is None or not self.can_swap_in(req_id, use_watermark=use_watermark):
            raise ValueError(f"cannot swap in {req_id!r}: swapped={cpu_table is not None}, "
                             f"{len(self._free)} GPU blocks free")
        free = self._free
        n = len(cpu_table)
        gpu = free[:-n - 1:-1]
        del free[-n:]
        del self._swapped[req_id]
        self._cpu_free.extend(reversed(cpu_table))
        self._tables[req_id] = gpu
        return list(zip(cpu_table, gpu))

    def check_invariants(self) -> None:
        held = [b for table in self._tables.values() for b in table]
        assert len(held) == len(set(held)), "a block is in two tables"
        assert not set(held) & set(self._free), "a block is both free and held"
        assert len(held) + len(self._free) == self.num_blocks, "blocks leaked or duplicated"
        cpu_held = [b for table in self._swapped.values() for b in table]
        assert len(cpu_held) == len(set(cpu_held)), "a CPU block is in two swapped tables"
        assert not set(cpu_held) & set(self._cpu_free), "a CPU block is both free and held"
        assert len(cpu_held) + len(self._cpu_free) == self.num_swap_blocks, "CPU blocks leaked or duplicated"
        assert not set(self._tables) & set(self._swapped), "a request is on the GPU and swapped out at once"
