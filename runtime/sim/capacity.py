"""KV-cache capacity: how many paged blocks fit on each GPU of a replica (algorithms.md section 1).

Bytes of KV cache per token per GPU (K and V, every layer, this GPU's share of the KV heads)::

    κ = 2 · L · H_kv · d_h · dtype_bytes / TP

Number of blocks of ``b`` tokens, as vLLM sizes its cache after a profiling run::

    M = floor((u · mem_GPU − weights_per_GPU − activations) / (b · κ))

``weights_per_GPU = num_params · dtype_bytes / TP``.

NOTE(capacity): the activation estimate stands in for vLLM's profiling-run peak, which is reached in the
MLP of the largest allowed batch. With ``N = max_num_batched_tokens`` tokens, one layer holds at once the
residual stream and the normed input (``2·d``), the QKV or attention output (``≤ 2·d``), and the gated-MLP
gate+up output plus the activated product (``3·I/TP``), all in ``dtype_bytes``; the sampler adds fp32 logits
for ``max_num_seqs`` rows of the vocabulary::

    activations = N · (4·d + 3·I/TP) · dtype_bytes + max_num_seqs · vocab / TP · 4

For Llama-2-7B with N = 8192 that is 0.84 GB, close to the ~1 GB vLLM reports for its profiling peak. It
ignores the CUDA context and the allocator's fragmentation, which ``u`` (0.9 by default) is there to absorb.
"""
from __future__ import annotations

import math

from runtime.core.errors import ConfigError
from runtime.sim.specs import HardwareSpec, ModelSpec


def kv_bytes_per_token(model: ModelSpec, tp: int = 1) -> float:
    """κ = 2·L·H_kv·d_h·dtype_bytes/TP: KV bytes one token occupies on each GPU of the replica."""
    if tp < 1 or model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ConfigError(
            f"tensor_parallel_size={tp} must divide num_kv_heads={model.num_kv_heads} or be a multiple of it"
        )
    # NOTE(capacity): when TP > H_kv the KV heads are replicated, so each GPU keeps at least one head.
    kv_heads_per_gpu = max(model.num_kv_heads / tp, 1)
    return 2 * model.num_layers * kv_heads_per_gpu * model.head_dim * model.dtype_bytes


def weight_bytes_per_gpu(model: ModelSpec, tp: int = 1) -> float:
    return model.num_params * model.dtype_bytes / tp


def activation_bytes_per_gpu(model: ModelSpec, tp: int, *, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak activation memory of the profiling run (see the module docstring for the formula)."""
    per_token = (4 * model.hidden_size + 3 * model.intermediate_size / tp) * model.dtype_bytes
    logits = max_num_seqs * model.vocab_size / tp * 4  # fp32 logits of the sampled rows
    return max_num_batched_tokens * per_token + logits


def num_kv_blocks(
    *,
    model: ModelSpec,
    hardware: HardwareSpec,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
) -> int:
    """M = floor((u·mem_GPU − weights_per_GPU − activations) / (block_size·κ)); ConfigError if M < 1."""
    if block_size < 1:
        raise ConfigError(f"kv.block_size must be >= 1, got {block_size}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"kv.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if max_num_batched_tokens < 1 or max_num_seqs < 1:
        raise ConfigError(
            f"max_num_batched_tokens={max_num_batched_tokens} and max_num_seqs={max_num_seqs} must be >= 1"
        )
    tp = hardware.tensor_parallel_size
    budget = gpu_memory_utilization * hardware.gpu_memory_bytes
    weights = weight_bytes_per_gpu(model, tp)
    activations = activation_bytes_per_gpu(
        model, tp, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
    )
    free = budget - weights - activations
    block_bytes = block_size * kv_bytes_per_token(model, tp)
    num_blocks = math.floor(free / block_bytes) if free > 0 else 0
    if num_blocks < 1:
        raise ConfigError(
            f"model {model.name!r} does not fit on hardware {hardware.name!r}: "
            f"{gpu_memory_utilization:.2f} x {hardware.gpu_memory_bytes / 1e9:.1f} GB = {budget / 1e9:.1f} GB per GPU, "
            f"but weights take {weights / 1e9:.1f} GB (TP={tp}) and activations {activations / 1e9:.2f} GB, "
            f"leaving no room for one KV block of {block_bytes / 1e6:.1f} MB; raise tensor_parallel_size"
        )
    return num_blocks
