"""Device/dtype resolution and the memory plan, with the device's and host's free bytes injected."""
from __future__ import annotations

import pytest
import torch

from runtime.core.errors import ConfigError, DeviceMemoryError
from runtime.live import device as live_device
from runtime.live.device import GiB, plan_memory, resolve_device, resolve_dtype
from runtime.live.kv_cache import kv_bytes_per_block
from tests.runtime.live.helpers import LLAMA_15M, TINY

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def plan(spec=LLAMA_15M, **kwargs):
    kwargs.setdefault("device", CPU)
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("block_size", 16)
    kwargs.setdefault("num_blocks", 100)
    kwargs.setdefault("swap_space_gb", 0.0)
    kwargs.setdefault("available_bytes", 8 * GiB)
    kwargs.setdefault("host_bytes", 8 * GiB)
    return plan_memory(spec, **kwargs)


def test_fixed_plan_accounts_weights_kv_and_null_slot():
    p = plan(num_blocks=100, dtype=torch.bfloat16)
    block = kv_bytes_per_block(LLAMA_15M, 16, torch.bfloat16)
    assert block == 2 * 6 * 16 * 2 * 48 * 2
    assert p.weight_bytes == LLAMA_15M.expected_num_params * 2
    assert p.kv_bytes == 100 * block + block // 16  # + the null slot
    assert p.num_blocks == 100 and p.num_swap_blocks == 0 and p.headroom_bytes > 0
    assert "KV 100 blocks" in p.describe()


def test_model_that_does_not_fit():
    p = plan(available_bytes=10 * GiB)
    need = p.weight_bytes + p.headroom_bytes
    with pytest.raises(DeviceMemoryError, match=r"model llama_15m .* does not fit cpu"):
        plan(available_bytes=int(need / 0.9) - 1024)
    with pytest.raises(DeviceMemoryError, match="does not fit cuda"):
        plan(device=CUDA, dtype=torch.bfloat16, available_bytes=LLAMA_15M.expected_num_params)
    # Exactly enough for weights and activations, but then no KV block fits.
    with pytest.raises(DeviceMemoryError, match="KV cache of 1 blocks"):
        plan(available_bytes=int((need + 16) / 0.9), num_blocks=1)


def test_kv_cache_larger_than_memory():
    with pytest.raises(DeviceMemoryError,
                       match=r"KV cache of 10000000 blocks \(.* GiB\) does not fit cpu.*at most \d+ blocks fit"):
        plan(num_blocks=10_000_000)
    # The bound it names is right: that many fit, one more does not.
    p = plan(available_bytes=GiB, num_blocks=None, device=CUDA)
    plan(available_bytes=GiB, num_blocks=p.num_blocks, device=CUDA)
    with pytest.raises(DeviceMemoryError, match=rf"at most {p.num_blocks} blocks fit"):
        plan(available_bytes=GiB, num_blocks=p.num_blocks + 1, device=CUDA)


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_swap_space_larger_than_host(device):
    with pytest.raises(DeviceMemoryError, match=r"swap space of \d+ blocks .* does not fit host memory"):
        plan(device=device, swap_space_gb=4.0, host_bytes=2 * GiB)
    with pytest.raises(DeviceMemoryError, match="does not fit host memory"):
        plan(device=device, num_swap_blocks=10**7, host_bytes=2 * GiB)
    p = plan(device=device, swap_space_gb=0.5, host_bytes=2 * GiB)
    block = kv_bytes_per_block(LLAMA_15M, 16, torch.float32)
    assert p.num_swap_blocks == int(0.5 * GiB // block) and p.swap_bytes == p.num_swap_blocks * block


def test_swap_on_cpu_counts_the_cpu_kv_cache():
    """On the CPU, swap shares host memory with the weights and the KV cache."""
    p = plan(num_blocks=2000, host_bytes=8 * GiB, available_bytes=8 * GiB)
    used = p.weight_bytes + p.kv_bytes + p.headroom_bytes
    room = int(8 * GiB * 0.9) - used
    block = kv_bytes_per_block(LLAMA_15M, 16, torch.float32)
    plan(num_blocks=2000, num_swap_blocks=room // block)
    with pytest.raises(DeviceMemoryError, match="already planned"):
        plan(num_blocks=2000, num_swap_blocks=room // block + 1)
    plan(num_blocks=2000, num_swap_blocks=room // block + 1, device=CUDA)  # GPU KV is not host memory


def test_num_blocks_none_sizes_the_cache_within_budget():
    block = kv_bytes_per_block(LLAMA_15M, 16, torch.bfloat16)
    slot = block // 16
    # CUDA: whatever is left after weights and activations.
    p = plan(device=CUDA, dtype=torch.bfloat16, num_blocks=None, available_bytes=4 * GiB, memory_utilization=0.8)
    left = int(4 * GiB * 0.8) - p.weight_bytes - p.headroom_bytes
    assert p.kv_bytes <= left < p.kv_bytes + block
    assert p.kv_bytes == p.num_blocks * block + slot and p.available_bytes == int(4 * GiB * 0.8)
    # CPU: capped by cpu_kv_cache_gb, ...
    p = plan(num_blocks=None, dtype=torch.bfloat16, cpu_kv_cache_gb=0.25, available_bytes=64 * GiB)
    assert p.kv_bytes <= 0.25 * GiB < p.kv_bytes + block
    # ... and by what memory is left when that is less.
    small = plan(num_blocks=None, dtype=torch.bfloat16, cpu_kv_cache_gb=100.0, available_bytes=GiB)
    left = int(GiB * 0.9) - small.weight_bytes - small.headroom_bytes
    assert small.kv_bytes <= left < small.kv_bytes + block
    with pytest.raises(DeviceMemoryError, match="no room for a KV cache"):
        plan(num_blocks=None, cpu_kv_cache_gb=1e-9)


def test_smaller_dtype_halves_weights():
    assert plan(dtype=torch.bfloat16).weight_bytes * 2 == plan(dtype=torch.float32).weight_bytes
    assert plan(TINY, dtype=torch.bfloat16).kv_bytes * 2 == plan(TINY, dtype=torch.float32).kv_bytes


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_memory_utilization(bad):
    with pytest.raises(ConfigError, match="memory_utilization"):
        plan(memory_utilization=bad)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "4"])
def test_bad_swap_space(bad):
    with pytest.raises(ConfigError, match="swap_space_gb"):
        plan(swap_space_gb=bad)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU and resolve_device(None) == CPU
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="only cpu and cuda"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA and resolve_device("cuda:0") == torch.device("cuda:0")


def test_resolve_dtype():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    assert resolve_dtype("bf16", CPU) == torch.bfloat16 and resolve_dtype("float16", CUDA) == torch.float16
    assert resolve_dtype("fp32", CUDA) == torch.float32
    for bad in ("float64", "int8", "bfloat", "FP32"):
        with pytest.raises(ConfigError, match=rf"runtime\.dtype={bad!r}"):
            resolve_dtype(bad, CPU)


def test_available_bytes_come_from_the_host_when_not_injected(monkeypatch):
    monkeypatch.setattr(live_device, "host_available_bytes", lambda: 3 * GiB)
    p = plan_memory(TINY, device=CPU, dtype=torch.float32, block_size=16, num_blocks=10, swap_space_gb=0.0)
    assert p.available_bytes == int(3 * GiB * 0.9)
    monkeypatch.setattr(live_device, "host_available_bytes", lambda: 2**20)
    with pytest.raises(DeviceMemoryError, match="does not fit"):
        plan_memory(TINY, device=CPU, dtype=torch.float32, block_size=16, num_blocks=10, swap_space_gb=0.0)
    assert live_device.host_available_bytes() == 2**20
