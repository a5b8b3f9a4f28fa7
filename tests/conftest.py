"""Shared factories and settings for the test suite."""
from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

os.environ.setdefault("WANDB_MODE", "disabled")

settings.register_profile("ci", max_examples=40, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None)
# The long fuzz run (README, "Fuzzing"): HYPOTHESIS_PROFILE=long pytest tests/test_fuzz_*.py (FUZZ_EXAMPLES: count).
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), deadline=None,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@contextmanager
def load_bench(name: str):
    """``bench/<name>.py`` imported as module ``name``, registered in ``sys.modules`` while in use (so its
    dataclasses resolve and worker processes can unpickle its functions)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def create_requests(num_requests: int = 10, *, num_prompt_tokens=64, max_tokens=16, arrival_gap: float = 0.0,
                    ttft_slo_s: float = 10.0, tbt_slo_s: float = 1.0, slo_class: str = "tight"):
    """Requests r0..r{n-1}; lengths may be ints or sequences (one per request)."""
    from runtime.core.request import Request

    prompts = np.broadcast_to(np.asarray(num_prompt_tokens), (num_requests,))
    outputs = np.broadcast_to(np.asarray(max_tokens), (num_requests,))
    return [
        Request(f"r{i}", arrival_time=i * arrival_gap, num_prompt_tokens=int(prompts[i]), max_tokens=int(outputs[i]),
                slo_class=slo_class, ttft_slo_s=ttft_slo_s, tbt_slo_s=tbt_slo_s)
        for i in range(num_requests)
    ]


def create_block_manager(num_blocks: int = 64, block_size: int = 16, watermark: float = 0.0, num_swap_blocks: int = 0):
    from runtime.core.kv_cache import BlockManager

    return BlockManager(num_blocks=num_blocks, block_size=block_size, watermark=watermark,
                        num_swap_blocks=num_swap_blocks)


def create_kv_transfer(block_bytes: float = 16 * 2**19, bandwidth_gbps: float = 32.0, latency_s: float = 1e-3):
    """Swap transfers for Llama-2-7B-sized blocks (16 tokens x 0.5 MiB) over PCIe Gen4."""
    from runtime.sim.transfer import PCIeTransferModel

    return PCIeTransferModel(block_bytes=block_bytes, bandwidth_gbps=bandwidth_gbps, latency_s=latency_s)


def create_cost_model():
    """A small hand-set linear model (seconds): 5 ms per step plus per-token and attention terms."""
    from runtime.sim.cost_model import LinearCostModel

    return LinearCostModel(beta0=0.005, beta1=1e-4, beta2=1e-8, beta3=1e-7, beta4=1e-5)


def create_slo_classes():
    from runtime.core.request import SLOClass

    return {"tight": SLOClass("tight", ttft_slo_s=1.0, tbt_slo_s=0.05),
            "loose": SLOClass("loose", ttft_slo_s=10.0, tbt_slo_s=0.5)}


def compose_config(overrides: list[str] | None = None, *, return_hydra_config: bool = False):
    """The real root config with overrides (no Hydra run directory; progress bars off)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=["progress=false", *(overrides or [])],
                       return_hydra_config=return_hydra_config)


def create_scheduler(name: str, *, block_manager=None, cost_model=None, slo_classes=None, max_model_len: int = 4096,
                     kv_transfer=None, **overrides):
    """A scheduler composed from its real YAML under conf/scheduler, with keyword overrides."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / "scheduler" / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    from hydra.errors import InstantiationException

    try:
        return instantiate(
            cfg,
            block_manager=block_manager or create_block_manager(),
            cost_model=cost_model or create_cost_model(),
            slo_classes=slo_classes or create_slo_classes(),
            max_model_len=max_model_len,
            kv_transfer=kv_transfer or create_kv_transfer(),
        )
    except InstantiationException as error:  # surface the scheduler's own error, as the CLI does
        raise error.__cause__ from None


def scheduler_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "scheduler").glob("*.yaml"))


@pytest.fixture
def tiny_cfg():
    return compose_config(["workload.num_requests=40"])
