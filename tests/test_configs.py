"""Every option of every config group composes and instantiates (a renamed class or a stale key fails here)."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from runtime.cli import build
from tests.conftest import CONF_DIR, SHARED_DATA, compose_config

GROUPS = ["scheduler", "workload", "model", "hardware", "cost_model", "slo", "runtime", "task", "logger", "experiment"]
TRACE_WORKLOADS = {"azure_conv", "azure_code"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options_build(option):
    parts = build(compose_config([f"scheduler={option}", "workload.num_requests=5"]))
    assert parts["scheduler"].token_budget is None or parts["scheduler"].token_budget > 0


@pytest.mark.parametrize("option", options("workload"))
def test_workload_options_build(option):
    if option in TRACE_WORKLOADS and not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data")
    overrides = [f"workload={option}"]
    overrides.append("workload.max_requests=20" if option in TRACE_WORKLOADS else "workload.num_requests=20")
    parts = build(compose_config(overrides))
    assert len(parts["workload"]) == 20


@pytest.mark.parametrize("option", options("cost_model"))
def test_cost_model_options_instantiate(option):
    if option.startswith("llama2_70b"):
        overrides = ["model=llama2_70b", "hardware=a100_80g_tp4"]
    elif option.startswith("llama3_8b"):
        overrides = ["model=llama3_8b"]
    elif "h100" in option:
        overrides = ["hardware=h100_80g"]
    else:
        overrides = []
    cm = instantiate(compose_config([*overrides, f"cost_model={option}"]).cost_model)
    assert cm.predict([(512, 0)], [1024] * 8) > cm.predict([], [1024] * 8) > 0


@pytest.mark.parametrize("model, hardware", [("llama2_7b", "a100_80g"), ("llama2_7b", "h100_80g"),
                                             ("llama3_8b", "a100_80g"), ("llama2_70b", "a100_80g_tp4")])
def test_model_hardware_pairs_build(model, hardware):
    parts = build(compose_config([f"model={model}", f"hardware={hardware}", "workload.num_requests=5"]))
    assert parts["block_manager"].num_blocks > 0
    assert set(parts["slo_classes"]) == {"tight", "medium", "loose"}


@pytest.mark.parametrize("option", options("slo"))
def test_slo_options_resolve(option):
    parts = build(compose_config([f"slo={option}", "workload.num_requests=5"]))
    assert all(c.tbt_slo_s > 0 and c.ttft_slo_s > 0 for c in parts["slo_classes"].values())


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_build(option):
    cfg = compose_config([f"experiment={option}"])
    if "azure" in str(cfg.workload.get("name", "")) and not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data")
    parts = build(cfg)
    assert len(parts["workload"]) > 0 and parts["block_manager"].num_blocks > 0


@pytest.mark.parametrize("option", options("ablation"))
def test_ablation_variants_build_with_their_own_names(option):
    cfg = compose_config([f"ablation={option}", "workload.num_requests=5"])
    parts = build(cfg)
    assert parts["scheduler"].name == cfg.scheduler.name
    names = {compose_config([f"ablation={o}"]).scheduler.name for o in options("ablation")}
    assert len(names) == len(options("ablation")), "two variants would share a row in the comparison table"


def _sweep_values(option: str) -> list[tuple[str, str]]:
    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF_DIR / "experiment" / f"{option}.yaml").get("hydra", {}).get("sweeper", {})
    return [(key, value.strip()) for key, values in (params.get("params") or {}).items()
            for value in str(values).split(",")]


@pytest.mark.parametrize("key, value", [kv for o in options("experiment") for kv in _sweep_values(o)] or [("", "")])
def test_every_value_an_experiment_sweeps_builds(key, value):
    if not key:
        pytest.skip("no experiment sweeps")
    for option in options("experiment"):
        if (key, value) in _sweep_values(option):
            parts = build(compose_config([f"experiment={option}", f"{key}={value}", "workload.num_requests=5"]))
            assert len(parts["workload"]) == 5
