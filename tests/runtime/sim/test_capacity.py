"""KV capacity: κ by hand, the memory budget, and models that do or do not fit."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runtime.core.errors import ConfigError
from runtime.sim.capacity import activation_bytes_per_gpu, kv_bytes_per_token, num_kv_blocks
from runtime.sim.specs import HardwareSpec, ModelSpec

CONF = Path(__file__).resolve().parents[3] / "conf"


def load(group: str, name: str):
    return instantiate(OmegaConf.load(CONF / group / f"{name}.yaml"))


def test_kappa_llama2_7b_by_hand() -> None:
    # 2 (K,V) · 32 layers · 32 KV heads · 128 dims · 2 bytes = 524_288 bytes per token.
    assert kv_bytes_per_token(load("model", "llama2_7b"), 1) == 524_288


def test_kappa_gqa_and_tp() -> None:
    # Llama-2-70B: 2 · 80 · 8 · 128 · 2 = 327_680; over TP 4: 81_920 per GPU.
    assert kv_bytes_per_token(load("model", "llama2_70b"), 4) == 81_920


def test_num_blocks_llama2_7b_a100_by_hand() -> None:
    model, hw = load("model", "llama2_7b"), load("hardware", "a100_80g")
    budget = 0.9 * 80 * 2**30
    weights = 6_738_415_616 * 2
    act = activation_bytes_per_gpu(model, 1, max_num_batched_tokens=8192, max_num_seqs=256)
    assert act == 8192 * (4 * 4096 + 3 * 11008) * 2 + 256 * 32000 * 4
    expected = math.floor((budget - weights - act) / (16 * 524_288))
    assert num_kv_blocks(model=model, hardware=hw) == expected
    assert 7000 < expected < 8000  # ~120k tokens of KV, as vLLM reports on an A100-80GB


def test_llama2_70b_on_one_a100_raises() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        num_kv_blocks(model=load("model", "llama2_70b"), hardware=load("hardware", "a100_80g"))


def test_llama2_70b_tp4_fits() -> None:
    assert num_kv_blocks(model=load("model", "llama2_70b"), hardware=load("hardware", "a100_80g_tp4")) > 10_000


def test_bad_kv_arguments_raise() -> None:
    model, hw = load("model", "llama2_7b"), load("hardware", "a100_80g")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        num_kv_blocks(model=model, hardware=hw, gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="block_size"):
        num_kv_blocks(model=model, hardware=hw, block_size=0)


@pytest.mark.parametrize("name", ["llama2_7b", "llama3_8b", "llama2_70b"])
def test_model_configs_match_their_parameter_count(name: str) -> None:
    m = load("model", name)
    embeddings = 2 * m.vocab_size * m.hidden_size  # untied input embedding and LM head
    assert m.num_layers * m.layer_params + embeddings == pytest.approx(m.num_params, rel=0.001)


def test_specs_reject_bad_fields() -> None:
    with pytest.raises(ConfigError, match="num_layers"):
        ModelSpec(name="x", num_layers=0, hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4,
                  intermediate_size=16, vocab_size=10, num_params=100)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        ModelSpec(name="x", num_layers=1, hidden_size=8, num_heads=3, num_kv_heads=2, head_dim=4,
                  intermediate_size=16, vocab_size=10, num_params=100)
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        HardwareSpec(name="x", gpu="a100", gpu_memory_gb=80, tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="hbm_bandwidth_gbps"):
        HardwareSpec(name="x", gpu="a100", gpu_memory_gb=80, hbm_bandwidth_gbps=-1.0)
