"""PagedKVCache: swap copies move whole blocks of every layer's K and V, exactly; the null slot stays zero."""
from __future__ import annotations

import pytest
import torch

from runtime.live.kv_cache import PagedKVCache, kv_bytes_per_block
from tests.runtime.live.helpers import GQA_TIED, LLAMA_15M, TINY


def blocks(cache: torch.Tensor, block_size: int, ids) -> torch.Tensor:
    """[L, len(ids), block_size, H_kv, d_h] copy of the given blocks of a flat slot tensor."""
    return torch.stack([cache[:, b * block_size:(b + 1) * block_size] for b in ids], 1).clone()


def filled_cache(spec, *, num_blocks=12, block_size=4, num_swap_blocks=6, dtype=torch.float32) -> PagedKVCache:
    cache = PagedKVCache(spec, num_blocks=num_blocks, block_size=block_size, num_swap_blocks=num_swap_blocks,
                         device=torch.device("cpu"), dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    null = cache.null_slot
    cache.k[:, :null] = torch.randn(cache.k[:, :null].shape, generator=gen).to(dtype)
    cache.v[:, :null] = torch.randn(cache.v[:, :null].shape, generator=gen).to(dtype)
    cache.k_swap.fill_(float("nan"))
    cache.v_swap.fill_(float("nan"))
    return cache


def test_layout():
    cache = filled_cache(TINY, num_blocks=12, block_size=4)
    assert cache.k.shape == (TINY.num_layers, 12 * 4 + 1, TINY.num_kv_heads, TINY.head_dim) == cache.v.shape
    assert cache.k_swap.shape == (TINY.num_layers, 6 * 4, TINY.num_kv_heads, TINY.head_dim)
    assert cache.null_slot == 48
    k, v = cache.layer(1)
    assert k.data_ptr() == cache.k[1].data_ptr() and v.data_ptr() == cache.v[1].data_ptr()
    assert kv_bytes_per_block(TINY, 4, torch.float32) == (cache.k[:, :4].numel() + cache.v[:, :4].numel()) * 4
    assert kv_bytes_per_block(LLAMA_15M, 16, torch.bfloat16) == 2 * 6 * 16 * 2 * 48 * 2


def test_null_slot_is_zero_from_the_start():
    cache = PagedKVCache(TINY, num_blocks=5, block_size=3, num_swap_blocks=0, device=torch.device("cpu"),
                         dtype=torch.float32)
    assert torch.count_nonzero(cache.k[:, cache.null_slot]) == 0
    assert torch.count_nonzero(cache.v[:, cache.null_slot]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_out_then_in_round_trips_blocks_exactly(dtype):
    bs = 4
    cache = filled_cache(TINY, block_size=bs, dtype=dtype)
    before_k, before_v = cache.k.clone(), cache.v.clone()
    out_pairs = [(7, 2), (1, 0), (10, 5)]  # (GPU, CPU), unordered on both sides
    cache.swap_out(out_pairs)
    torch.testing.assert_close(cache.k, before_k, rtol=0, atol=0)  # swap-out leaves the GPU side alone
    for g, c in out_pairs:
        for swap, before in ((cache.k_swap, before_k), (cache.v_swap, before_v)):
            torch.testing.assert_close(blocks(swap, bs, [c]), blocks(before, bs, [g]), rtol=0, atol=0)
    untouched = [1, 3, 4]
    assert torch.isnan(blocks(cache.k_swap, bs, untouched)).all()
    assert torch.isnan(blocks(cache.v_swap, bs, untouched)).all()
    # The freed GPU blocks get other data; the request comes back to different blocks.
    cache.k[:, :cache.null_slot] = -1.0
    cache.v[:, :cache.null_slot] = -2.0
    in_pairs = [(2, 3), (0, 11), (5, 0)]  # (CPU, GPU)
    cache.swap_in(in_pairs)
    for (g_old, _), (_, g_new) in zip(out_pairs, in_pairs):
        torch.testing.assert_close(blocks(cache.k, bs, [g_new]), blocks(before_k, bs, [g_old]), rtol=0, atol=0)
        torch.testing.assert_close(blocks(cache.v, bs, [g_new]), blocks(before_v, bs, [g_old]), rtol=0, atol=0)
    others = [b for b in range(cache.num_blocks) if b not in (3, 11, 0)]
    assert (blocks(cache.k, bs, others) == -1.0).all() and (blocks(cache.v, bs, others) == -2.0).all()
    assert torch.count_nonzero(cache.k[:, cache.null_slot]) == 0
    assert torch.count_nonzero(cache.v[:, cache.null_slot]) == 0


def test_swap_into_the_last_block_leaves_the_null_slot_zero():
    bs = 3
    cache = filled_cache(GQA_TIED, num_blocks=4, block_size=bs, num_swap_blocks=2)
    last = cache.num_blocks - 1
    cache.swap_out([(0, 1), (last, 0)])
    cache.swap_in([(1, last), (0, 0)])
    assert torch.count_nonzero(cache.k[:, cache.null_slot]) == 0
    assert torch.count_nonzero(cache.v[:, cache.null_slot]) == 0


def test_empty_pair_lists_are_no_ops():
    cache = filled_cache(TINY)
    k, ks = cache.k.clone(), cache.k_swap.clone()
    cache.swap_out([])
    cache.swap_in([])
    assert torch.equal(cache.k, k) and torch.equal(cache.k_swap.isnan(), ks.isnan())
