"""runtime.config_schema: unknown keys, wrong types and out-of-range values fail first, naming the key."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from runtime.cli import build, fill_paths
from runtime.config_schema import validate_config
from runtime.core.base_scheduler import BaseScheduler
from runtime.core.errors import ConfigError
from tests.conftest import CONF_DIR, compose_config


def check(overrides: list[str]) -> None:
    cfg = compose_config(overrides)
    fill_paths(cfg)
    validate_config(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["+foo=1"], r"^foo: unknown key for the root config; allowed: .*kv"),
    (["+kv.blok_size=3"], r"^kv\.blok_size: unknown key for `kv`; did you mean block_size\?"),
    (["+scheduler.toke_budget=1"],
     r"^scheduler\.toke_budget: unknown key for heuristics\.sarathi\.SarathiScheduler; did you mean token_budget\? "
     r"allowed: .*max_num_seqs.*preemption_mode"),
    (["scheduler=oracle", "+scheduler.toke_budget=1"],
     r"^scheduler\.toke_budget: unknown key .*OracleScheduler.*c_done"),
    (["scheduler=oracle", "+scheduler.fallback.toke_budget=1"],
     r"^scheduler\.fallback\.toke_budget: unknown key for heuristics\.accelgen\.AccelGenScheduler"),
    (["+workload.arrival.rat=3"],
     r"^workload\.arrival\.rat: unknown key .*did you mean rate\? allowed: cv, process, rate"),
    (["scheduler=cacheopt", "+scheduler.cacheopt.reus=false"], r"^scheduler\.cacheopt\.reus: .*did you mean reuse\?"),
    (["+model.num_layer=2"],
     r"^model\.num_layer: unknown key for runtime\.sim\.specs\.ModelSpec; did you mean num_layers"),
    (["+results.moed=stream"], r"^results\.moed: unknown key for `results`; did you mean mode\? "
                               r"allowed: batch_size, iteration_every, mode"),
    (["+cluster.num_replica=2"], r"^cluster\.num_replica: unknown key for `cluster`; did you mean num_replicas\?"),
    (["cluster=slo_aware", "+cluster.router.reference_chnk=64"],
     r"^cluster\.router\.reference_chnk: unknown key for runtime\.cluster\.router\.SLOAwareRouter; "
     r"did you mean reference_chunk\?"),
])
def test_unknown_key_is_named_with_the_allowed_ones(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(overrides)


def test_unknown_key_in_a_scheduler_yaml(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "scheduler" / "typo.yaml").write_text(
        "_target_: heuristics.sarathi.SarathiScheduler\nname: typo\ntoke_budget: 512\n")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="config", overrides=["scheduler=typo"])
    with pytest.raises(ConfigError, match=r"^scheduler\.toke_budget: unknown key .*did you mean token_budget\?"):
        validate_config(cfg, conf_dir=conf)


@pytest.mark.parametrize("overrides, message", [
    (["kv.block_size=abc"], r"^kv\.block_size: expected int, got 'abc' \(str\)"),
    (["seed=1.5"], r"^seed: expected int, got 1\.5 \(float\)"),
    (["seed=true"], r"^seed: expected int, got True \(bool\)"),
    (["resume=maybe"], r"^resume: expected bool, got 'maybe'"),
    (["model.num_layers=abc"], r"^model\.num_layers: expected int"),
    (["scheduler=accelgen", "scheduler.dynamic_chunking=3"], r"^scheduler\.dynamic_chunking: expected bool, got 3"),
    (["workload.num_requests=null"], r"^workload\.num_requests: expected int, got null"),
])
def test_wrong_type_names_the_key_and_the_type(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(overrides)


@pytest.mark.parametrize("overrides, message", [
    (["kv.gpu_memory_utilization=1.5"], r"^kv\.gpu_memory_utilization: must be in \(0, 1\], got 1\.5"),
    (["scheduler.token_budget=-1"], r"^scheduler\.token_budget: must be >= 1, got -1"),
    (["workload.arrival.rate=0"], r"^workload\.arrival\.rate: must be > 0, got 0"),
    (["metrics.tbt_mode=bogus"], r"^metrics\.tbt_mode: must be one of max, percentile; got 'bogus'"),
    (["scheduler=vllm", "scheduler.preemption_mode=never"],
     r"^scheduler\.preemption_mode: must be one of recompute, swap, auto"),
    (["hardware.gpu_memory_gb=0"], r"^hardware\.gpu_memory_gb: must be > 0"),
    (["task=capacity", "task.target=1.5"], r"^task\.target: must be in \(0, 1\]"),
    (["oracle.backend=gurobi"], r"^oracle\.backend: must be one of .*decomposed"),
    (["scheduler=cacheopt", "scheduler.cacheopt.quantile=2"], r"^scheduler\.cacheopt\.quantile: must be in \[0, 1\]"),
    (["results.mode=everything"], r"^results\.mode: must be one of full, stream, summary; got 'everything'"),
    (["results.iteration_every=0"], r"^results\.iteration_every: must be >= 1, got 0"),
    (["cluster.num_replicas=0"], r"^cluster\.num_replicas: must be >= 1, got 0"),
    (["cluster.num_replicas=two"], r"^cluster\.num_replicas: expected int, got 'two'"),
])
def test_out_of_range_names_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(overrides)


def test_validation_runs_first_in_build():
    # Without it, the typo reaches SarathiScheduler(**node) as a TypeError from Hydra's instantiate.
    with pytest.raises(ConfigError, match=r"^scheduler\.toke_budget"):
        build(compose_config(["+scheduler.toke_budget=1"]))


def test_a_new_target_needs_no_schema():
    class ToyScheduler(BaseScheduler):
        def __init__(self, *, window: int = 4, **base) -> None:
            super().__init__(**base)

    sys.modules[__name__].ToyScheduler = ToyScheduler
    ToyScheduler.__qualname__ = "ToyScheduler"
    try:
        target = f"{__name__}.ToyScheduler"
        def config_with(scheduler: dict):
            cfg = compose_config([])
            with open_dict(cfg):
                cfg.scheduler = OmegaConf.create({"_target_": target, **scheduler})
            return cfg

        validate_config(config_with({"window": 8, "max_num_seqs": 2}))
        for node, message in [({"windo": 8}, r"scheduler\.windo: unknown key .*did you mean window\?"),
                              ({"window": "x"}, r"scheduler\.window: expected int"),
                              ({"max_num_seqs": 0}, r"scheduler\.max_num_seqs: must be >= 1")]:
            with pytest.raises(ConfigError, match=message):
                validate_config(config_with(node))
    finally:
        del sys.modules[__name__].ToyScheduler


def _shipped() -> list[list[str]]:
    cases = []
    for group in ("scheduler", "workload", "model", "hardware", "slo", "runtime", "task", "logger", "experiment",
                  "ablation", "cluster", "cost_model"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            option = [f"{group}={path.stem}"]
            if group == "cost_model":
                pair = {"llama2_70b": ["model=llama2_70b", "hardware=a100_80g_tp4"], "llama3_8b": ["model=llama3_8b"]}
                option = pair.get(path.stem.rsplit("_", 2)[0], ["hardware=h100_80g"] if "h100" in path.stem else []) \
                    + option
            cases.append(option)
    return cases


@pytest.mark.parametrize("overrides", _shipped(), ids=lambda o: o[-1])
def test_every_shipped_config_validates(overrides):
    check(overrides)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    exe = Path(sys.executable).with_name("accelgen")
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run([str(exe), "+scheduler.toke_budget=1", "progress=false", f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "accelgen: error: scheduler.toke_budget: unknown key for heuristics.sarathi.SarathiScheduler; "
        "did you mean token_budget?"), done.stderr
