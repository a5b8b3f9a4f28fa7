"""Device and dtype resolution, and the memory plan checked before anything is allocated.

``device: auto`` is ``cuda`` when a GPU is visible, else ``cpu``; ``dtype: auto`` is bfloat16 on CUDA and float32
on CPU (CPU bf16 GEMMs are slow without AMX). The plan, in bytes, on the device that holds the model::

    weights  = num_params · element_size
    kv       = (num_blocks · block_size + 1) · 2 · L · H_kv · d_h · element_size      (+1: the null slot)
    headroom = activations of the largest step (runtime.sim.capacity's estimate, in this dtype)
    weights + headroom          ≤ available                  else DeviceMemoryError("model does not fit")
    weights + headroom + kv     ≤ available                  else DeviceMemoryError("KV cache does not fit")
    swap (host)                 ≤ host available − (weights + kv + headroom if the device is the CPU)

``available`` is ``torch.cuda.mem_get_info`` free bytes × ``memory_utilization`` on CUDA, and ``MemAvailable``
from ``/proc/meminfo`` × ``memory_utilization`` on CPU. With ``kv.num_blocks: null`` the KV cache takes what is
left on CUDA, and ``cpu_kv_cache_gb`` on CPU (vLLM's ``VLLM_CPU_KVCACHE_SPACE``): a CPU has no natural bound.
"""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass

import torch

from runtime.core.errors import ConfigError, DeviceMemoryError
from runtime.live.kv_cache import kv_bytes_per_block
from runtime.sim.capacity import activation_bytes_per_gpu
from runtime.sim.specs import ModelSpec

GiB = 2**30
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"runtime.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name!r} but CUDA is not available on this machine (use auto or cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"runtime.device={name!r}: only cpu and cuda are supported")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"runtime.dtype={name!r}: expected auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[name]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the records of profiles and benchmarks."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_available_bytes() -> int:
    """MemAvailable (what can be allocated without swapping), falling back to free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    device: torch.device
    dtype: torch.dtype
    num_blocks: int
    num_swap_blocks: int
    weight_bytes: int
    kv_bytes: int
    swap_bytes: int
    headroom_bytes: int
    available_bytes: int

    def describe(self) -> str:
        return (f"{self.device} {str(self.dtype).removeprefix('torch.')}: weights {self.weight_bytes / GiB:.2f} GiB, "
                f"KV {self.num_blocks} blocks = {self.kv_bytes / GiB:.2f} GiB, activations {self.headroom_bytes / GiB:.2f} GiB, "
                f"swap {self.num_swap_blocks} blocks = {self.swap_bytes / GiB:.2f} GiB (host), "
                f"available {self.available_bytes / GiB:.2f} GiB")


def plan_memory(spec: ModelSpec, *, device: torch.device, dtype: torch.dtype, block_size: int,
                num_blocks: int | None, swap_space_gb: float, num_swap_blocks: int | None = None,
                memory_utilization: float = 0.9, cpu_kv_cache_gb: float = 1.0,
                max_num_batched_tokens: int = 8192, max_num_seqs: int = 256,
                available_bytes: int | None = None, host_bytes: int | None = None) -> MemoryPlan:
    """Check that everything fits and size the KV cache; raises ``DeviceMemoryError`` naming what does not fit."""
    if not 0.0 < memory_utilization <= 1.0:
        raise ConfigError(f"runtime.memory_utilization must be in (0, 1], got {memory_utilization!r}")
    element = torch.empty((), dtype=dtype).element_size()
    weights = spec.expected_num_params * element
    headroom = int(activation_bytes_per_gpu(spec, 1, max_num_batched_tokens=max_num_batched_tokens,
                                            max_num_seqs=max_num_seqs) * element / spec.dtype_bytes)
    raw = device_available_bytes(device) if available_bytes is None else available_bytes
    available = int(raw * memory_utilization)
    name = f"{spec.name} ({spec.expected_num_params / 1e6:,.1f}M parameters)"
    if weights + headroom > available:
        raise DeviceMemoryError(
            f"model {name} does not fit {device}: weights {weights / GiB:.2f} GiB in {str(dtype).removeprefix('torch.')} "
            f"+ activations {headroom / GiB:.2f} GiB > {available / GiB:.2f} GiB available "
            f"({memory_utilization:.2f} x {raw / GiB:.2f} GiB free); use a smaller model, runtime.dtype=bfloat16, "
            "or a larger device")
    block_bytes = kv_bytes_per_block(spec, block_size, dtype)
    slot_bytes = block_bytes // block_size
    if num_blocks is None:
        budget = available - weights - headroom if device.type == "cuda" else min(cpu_kv_cache_gb * GiB,
                                                                                  available - weights - headroom)
        num_blocks = int((budget - slot_bytes) // block_bytes)
        if num_blocks < 1:
            raise DeviceMemoryError(f"no room for a KV cache on {device}: {budget / GiB:.3f} GiB left after weights "
                                    f"and activations, a block needs {block_bytes / 2**20:.2f} MiB")
    kv = num_blocks * block_bytes + slot_bytes
    if weights + headroom + kv > available:
        raise DeviceMemoryError(
            f"KV cache of {num_blocks} blocks ({kv / GiB:.2f} GiB) does not fit {device}: "
            f"{available / GiB:.2f} GiB available, weights and activations take {(weights + headroom) / GiB:.2f} GiB; "
            f"at most {max(0, (available - weights - headroom - slot_bytes) // block_bytes)} blocks fit (kv.num_blocks)")
    if num_swap_blocks is None:
        if not (isinstance(swap_space_gb, (int, float)) and math.isfinite(swap_space_gb) and swap_space_gb >= 0):
            raise ConfigError(f"kv.swap_space_gb must be a number >= 0, got {swap_space_gb!r}")
        num_swap_blocks = int(swap_space_gb * GiB // block_bytes)
    swap = num_swap_blocks * block_bytes
    host = int((host_available_bytes() if host_bytes is None else host_bytes) * memory_utilization)
    host_used = weights + headroom + kv if device.type == "cpu" else 0
    if swap and host_used + swap > host:
        raise DeviceMemoryError(
            f"swap space of {num_swap_blocks} blocks ({swap / GiB:.2f} GiB) does not fit host memory: "
            f"{host / GiB:.2f} GiB available, {host_used / GiB:.2f} GiB already planned; lower kv.swap_space_gb")
    return MemoryPlan(device, dtype, num_blocks, num_swap_blocks, weights, kv, swap, headroom,
                      available if device.type == "cuda" else host)
