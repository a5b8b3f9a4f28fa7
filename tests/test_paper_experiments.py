"""The paper-style experiments: rates as loads of a measured reference, the sweep structure, and a quick run."""
from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

import runtime.cli  # noqa: F401 - registers the load_rate resolver the experiments use
from tests.conftest import compose_config
from tests.test_cli import accelgen


@pytest.mark.parametrize("experiment, workload", [("paper_accelgen", "mixed"), ("paper_cacheopt", "mixed_gamma")])
@pytest.mark.parametrize("model", ["llama2_7b", "llama3_8b"])
def test_rate_is_load_times_the_reference_of_model_and_workload(experiment, workload, model):
    cfg = compose_config([f"experiment={experiment}", f"model={model}", "paper.load=0.5"])
    reference = cfg.paper.reference_rate[model][workload]
    assert cfg.workload.name == workload and cfg.workload.arrival.rate == pytest.approx(0.5 * reference)
    assert cfg.workload.num_requests == 2000


def test_paper_sweeps_follow_the_papers_structure():
    sweep = lambda name: OmegaConf.to_container(  # noqa: E731
        compose_config([f"experiment={name}"], return_hydra_config=True).hydra.sweeper.params)
    accelgen = sweep("paper_accelgen")
    assert set(accelgen["scheduler"].split(",")) == {"accelgen", "oracle", "sarathi", "vllm", "orca"}
    assert set(accelgen["workload"].split(",")) == {"mixed", "conversation", "code", "arxiv"}
    loads = [float(x) for x in accelgen["paper.load"].split(",")]
    assert len(loads) == 8 and min(loads) == 0.25 and max(loads) == 1.5 and accelgen["seed"] == "0,1,2"
    cacheopt = sweep("paper_cacheopt")
    assert {"cacheopt", "accelgen_cacheopt", "vllm", "vllm_swap", "sarathi"} <= set(cacheopt["scheduler"].split(","))
    cfg = compose_config(["experiment=paper_cacheopt"])
    assert cfg.kv.num_blocks_scale == 0.25 and cfg.workload.arrival.cv == 3.0
    quick = sweep("paper_cacheopt_quick")
    assert quick["scheduler"] == cacheopt["scheduler"] and quick["seed"] == "0"


def test_a_model_without_reference_names_the_key_to_add(tmp_path):
    proc = accelgen("experiment=paper_accelgen", "model=llama2_70b", "hardware=a100_80g_tp4",
                    f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "paper.reference_rate.llama2_70b.mixed=<req/s>" in proc.stderr and "Traceback" not in proc.stderr


def test_quick_paper_experiment_runs_every_scheduler_at_every_load(tmp_path):
    proc = accelgen("-m", "experiment=paper_accelgen_quick", "workload.num_requests=60", f"hydra.sweep.dir={tmp_path}",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "comparison.csv")
    reference = compose_config(["experiment=paper_accelgen_quick"]).paper.reference_rate.llama2_7b.mixed
    assert len(table) == 5 * 4 and set(table.scheduler) == {"accelgen", "oracle", "sarathi", "vllm", "orca"}
    assert sorted(set(table.arrival_rate.round(6))) == sorted(round(x * reference, 6) for x in (0.5, 1.0, 1.25, 1.5))
    assert (table.num_finished == 60).all()
