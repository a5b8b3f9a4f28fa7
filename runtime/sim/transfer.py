"""KV swap transfers over PCIe: the latency model of preemption by swapping (algorithms.md section 7.5).

Moving ``b`` blocks of ``block_size`` tokens one way between GPU memory and pinned CPU memory takes

    T_swap(b) = latency_s + b · block_size · κ / (BW_pcie · efficiency)        (0 for b = 0)

with ``κ`` the KV bytes per token per GPU (``runtime.sim.capacity.kv_bytes_per_token``) and ``BW_pcie`` the
hardware's host-device bandwidth per direction (``hardware.pcie_bandwidth_gbps``). With tensor parallelism each
GPU moves its own shard over its own link, so the per-GPU ``κ`` and link give the time.

NOTE(transfer): ``efficiency`` (0.8) stands for the gap between the link rate and what pinned-memory DMA
reaches (about 25 of 32 GB/s on PCIe Gen4 x16); ``latency_s`` (1 ms) for the per-transfer cost of a paged cache's
swap, one copy call per layer for K and V (2·L launches) plus a stream synchronisation. Both are our design
choices, in ``conf/config.yaml`` under ``kv``; the swap-or-recompute crossover they imply is logged per run.
"""
from __future__ import annotations

import math
from runtime.core.errors import ConfigError
from runtime.sim.capacity import kv_bytes_per_token
from runtime.sim.specs import HardwareSpec, ModelSpec


class PCIeTransferModel:
    """``KVTransferModel`` for one replica: bytes per block over an effective bandwidth, plus a fixed latency.

    A plain class, not a dataclass: Hydra would turn a dataclass passed to ``instantiate`` into a config node.
    """

    __slots__ = ("block_bytes", "bandwidth_gbps", "efficiency", "latency_s")

    def __init__(self, *, block_bytes: float, bandwidth_gbps: float, efficiency: float = 0.8,
                 latency_s: float = 1e-3) -> None:
        self.block_bytes, self.bandwidth_gbps = block_bytes, bandwidth_gbps
        self.efficiency, self.latency_s = efficiency, latency_s
        for key in ("block_bytes", "bandwidth_gbps"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"kv swap model: {key} must be a positive number, got {value!r}")
        if not 0.0 < self.efficiency <= 1.0:
            raise ConfigError(f"kv.pcie_efficiency must be in (0, 1], got {self.efficiency!r}")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ConfigError(f"kv.swap_latency_s must be a finite number >= 0, got {self.latency_s!r}")

    @classmethod
    def for_replica(cls, *, model: ModelSpec, hardware: HardwareSpec, block_size: int, efficiency: float = 0.8,
                    latency_s: float = 1e-3) -> "PCIeTransferModel":
        return cls(block_bytes=block_size * kv_bytes_per_token(model, hardware.tensor_parallel_size),
                   bandwidth_gbps=hardware.pcie_bandwidth_gbps, efficiency=efficiency, latency_s=latency_s)

    def __repr__(self) -> str:
        return (f"PCIeTransferModel(block_bytes={self.block_bytes:g}, bandwidth_gbps={self.bandwidth_gbps:g}, "
                f"efficiency={self.efficiency:g}, latency_s={self.latency_s:g})")

    def swap_time_s(self, num_blocks: int) -> float:
        if num_blocks <= 0:
            return 0.0
        return self.latency_s + num_blocks * self.block_bytes / (self.bandwidth_gbps * 1e9 * self.efficiency)


def num_swap_blocks(*, model: ModelSpec, hardware: HardwareSpec, block_size: int, swap_space_gb: float) -> int:
    """CPU swap blocks per GPU: ``floor(swap_space_gb · 2^30 / (block_size · κ))`` (vLLM's ``swap_space``, GiB)."""
    if not (isinstance(swap_space_gb, (int, float)) and math.isfinite(swap_space_gb) and swap_space_gb >= 0):
        raise ConfigError(f"kv.swap_space_gb must be a number >= 0, got {swap_space_gb!r}")
    return int(swap_space_gb * 2**30 // (block_size * kv_bytes_per_token(model, hardware.tensor_parallel_size)))
