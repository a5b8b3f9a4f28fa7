"""Model-shape and hardware specs: the numbers the cost model, the KV capacity and the roofline read.

Both are frozen value objects built by Hydra from ``conf/model/*.yaml`` and ``conf/hardware/*.yaml``
(``_target_: runtime.sim.specs.ModelSpec`` / ``HardwareSpec``). ``__post_init__`` rejects impossible values
with a ``ConfigError`` naming the field, so a typo in a YAML fails at instantiation, not deep inside a run.

Derived quantities used elsewhere (``L`` layers, ``H`` query heads, ``H_kv`` KV heads, ``d_h`` head dim,
``d`` hidden, ``I`` MLP width, ``TP`` tensor-parallel degree):

    weights per GPU      = num_params · dtype_bytes / TP
    KV bytes/token/GPU κ = 2 · L · H_kv · d_h · dtype_bytes / TP          (algorithms.md section 1)
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from runtime.core.errors import ConfigError


def _require_positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Transformer shape of a decoder-only (Llama-style, gated-MLP) model, full model (not per shard)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_params: int
    dtype_bytes: int = 2
    max_model_len: int = 4096
    # Read only by the live runtime (runtime/live): rotary base, RMSNorm epsilon, and whether the LM head shares
    # the embedding matrix (HF config.json names).
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        _require_positive(self, tuple(f.name for f in fields(self) if f.name not in ("name", "tie_word_embeddings")))
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"ModelSpec.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        for name in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "max_model_len"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ConfigError(f"ModelSpec.{name} must be an integer, got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelSpec.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} (GQA groups)"
            )

    @property
    def expected_num_params(self) -> int:
        """Parameters of the Llama architecture with these shapes: embeddings, layers (+2 norms each), final
        norm, and the LM head unless it is tied to the embeddings."""
        d, v = self.hidden_size, self.vocab_size
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * (self.layer_params + 2 * d) + d + head

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: Q,O (d·H·d_h each), K,V (d·H_kv·d_h each), gated MLP (3·d·I)."""
        d, attn = self.hidden_size, self.head_dim
        return 2 * d * self.num_heads * attn + 2 * d * self.num_kv_heads * attn + 3 * d * self.intermediate_size


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One replica: ``tensor_parallel_size`` identical GPUs. Rates are per GPU, public datasheet numbers."""

    name: str
    gpu: str  # "a100" | "h100" | ...: selects the operator-profile folder
    gpu_memory_gb: float  # HBM per GPU in GiB (2**30 bytes): the "80GB" of an A100-80GB is 80 GiB
    tensor_parallel_size: int = 1
    peak_tflops: float = 312.0  # dense BF16, per GPU
    hbm_bandwidth_gbps: float = 2039.0  # GB/s per GPU
    pcie_bandwidth_gbps: float = 32.0  # GB/s host<->device, one direction

    def __post_init__(self) -> None:
        if not self.gpu:
            raise ConfigError("HardwareSpec.gpu must be a non-empty GPU family name such as 'a100'")
        _require_positive(
            self,
            ("gpu_memory_gb", "tensor_parallel_size", "peak_tflops", "hbm_bandwidth_gbps", "pcie_bandwidth_gbps"),
        )
        if int(self.tensor_parallel_size) != self.tensor_parallel_size:
            raise ConfigError(f"HardwareSpec.tensor_parallel_size must be an integer, got {self.tensor_parallel_size!r}")

    @property
    def gpu_memory_bytes(self) -> float:
        return self.gpu_memory_gb * 2**30
