"""The live runtime's paged KV cache: the tensors behind ``runtime.core.kv_cache.BlockManager``'s block ids.

Per layer, K and V are flat slot arrays ``[num_blocks · block_size + 1, H_kv, d_h]``: block ``b`` holds slots
``b·block_size .. (b+1)·block_size − 1``, so token ``p`` of a request with block table ``t`` lives at slot
``t[p // block_size]·block_size + p % block_size``. The extra last slot is the *null slot*: always zero, never
written; padded positions of batched decode attention point at it, so masked-out keys never carry garbage
(``0 · NaN`` would poison a softmax row). The CPU swap space has the same layout without the null slot;
``swap_out``/``swap_in`` copy whole blocks for the (GPU, CPU) / (CPU, GPU) pairs the scheduler's
``SchedulerOutput`` carries. Memory is ``torch.empty``: nothing is read before the model writes it.
"""
from __future__ import annotations

import torch

from runtime.sim.specs import ModelSpec


def kv_bytes_per_block(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    """K and V of ``block_size`` tokens in every layer."""
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    def __init__(self, spec: ModelSpec, *, num_blocks: int, block_size: int, num_swap_blocks: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.num_blocks, self.block_size, self.num_swap_blocks = num_blocks, block_size, num_swap_blocks
        self.device = device
        shape = (spec.num_layers, num_blocks * block_size + 1, spec.num_kv_heads, spec.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.null_slot = num_blocks * block_size
        self.k[:, self.null_slot].zero_()
        self.v[:, self.null_slot].zero_()
        swap_shape = (spec.num_layers, num_swap_blocks * block_size, spec.num_kv_heads, spec.head_dim)
        # Pinned host memory lets the copies run at full PCIe speed on CUDA.
        pin = device.type == "cuda"
        self.k_swap = torch.empty(swap_shape, dtype=dtype, pin_memory=pin)
        self.v_swap = torch.empty(swap_shape, dtype=dtype, pin_memory=pin)

    def layer(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[idx], self.v[idx]

    def _blocks(self, cache: torch.Tensor, count: int) -> torch.Tensor:
        """``[L, count, block_size, H_kv, d_h]`` view of the first ``count`` blocks."""
        layers, _, heads, dim = cache.shape
        return cache[:, :count * self.block_size].view(layers, count, self.block_size, heads, dim)

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Copy GPU blocks to CPU swap blocks, for (GPU, CPU) pairs."""
        if not pairs:
            return
        gpu = torch.tensor([g for g, _ in pairs], device=self.device)
        cpu = torch.tensor([c for _, c in pairs])
        for cache, swap in ((self.k, self.k_swap), (self.v, self.v_swap)):
            moved = self._blocks(cache, self.num_blocks).index_select(1, gpu).to("cpu")
            self._blocks(swap, self.num_swap_blocks).index_copy_(1, cpu, moved)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Copy CPU swap blocks back to GPU blocks, for (CPU, GPU) pairs."""
        if not pairs:
            return
        cpu = torch.tensor([c for c, _ in pairs])
        gpu = torch.tensor([g for _, g in pairs], device=self.device)
        for cache, swap in ((self.k, self.k_swap), (self.v, self.v_swap)):
            moved = self._blocks(swap, self.num_swap_blocks).index_select(1, cpu).to(self.device, non_blocking=True)
            self._blocks(cache, self.num_blocks).index_copy_(1, gpu, moved)
