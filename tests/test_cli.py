"""The accelgen command end to end: outputs, determinism, sweeps, and clear errors on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from runtime.cli import run
from runtime.core.errors import ConfigError
from tests.conftest import REPO_ROOT, compose_config

SUMMARY_KEYS = {
    "scheduler", "workload", "seed", "num_requests", "num_finished", "num_rejected", "duration_s", "throughput_rps",
    "throughput_tps", "goodput_rps", "goodput_tps", "slo_attainment", "slo_attainment_by_class", "ttft_p50_s",
    "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "jct_mean_s", "jct_p99_s", "num_iterations", "num_preemptions", "wall_s",
}
REQUEST_COLUMNS = {
    "req_id", "slo_class", "arrival_time", "first_token_time", "finished_time", "num_prompt_tokens",
    "num_output_tokens", "ttft_s", "tbt_max_s", "tbt_p99_s", "jct_s", "met_ttft", "met_tbt", "met_slo",
    "num_preemptions", "status", "rejection_reason",
}
ITERATION_COLUMNS = {"start_time", "duration_s", "prefill_tokens", "decode_tokens", "batch_size", "kv_blocks_used"}


def accelgen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("accelgen")
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(exe), *args, "progress=false"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("scheduler", ["vllm", "orca", "sarathi"])
def test_run_writes_outputs_with_the_documented_schema(tmp_path, scheduler):
    summary = run(compose_config([f"scheduler={scheduler}", "workload.num_requests=60"]), tmp_path)
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["num_requests"] == 60
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    iterations = pd.read_parquet(tmp_path / "iterations.parquet")
    assert REQUEST_COLUMNS <= set(requests.columns) and len(requests) == 60
    assert ITERATION_COLUMNS <= set(iterations.columns) and len(iterations) == summary["num_iterations"]
    assert summary["num_finished"] + summary["num_rejected"] == 60
    assert set(requests["status"]) <= {"FINISHED_STOPPED", "FINISHED_REJECTED"}


def test_same_seed_gives_byte_identical_results(tmp_path):
    overrides = ["workload.num_requests=80", "seed=3"]
    first = run(compose_config(overrides), tmp_path / "a")
    second = run(compose_config(overrides), tmp_path / "b")
    for name in ("requests.parquet", "iterations.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # wall_s is the one field that measures the machine, not the simulation.
    strip = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert strip(a) == strip(b) and strip(first) == strip(second)
    other = run(compose_config(["workload.num_requests=80", "seed=4"]), tmp_path / "c")
    assert strip(other) != strip(first)


def test_request_larger_than_kv_cache_is_rejected_with_reason(tmp_path):
    summary = run(compose_config(["workload.num_requests=50", "kv.num_blocks=120", "scheduler=sarathi"]), tmp_path)
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    rejected = requests[requests["status"] == "FINISHED_REJECTED"]
    assert len(rejected) == summary["num_rejected"] > 0
    assert rejected["rejection_reason"].str.contains("KV blocks").all()
    assert not rejected["met_slo"].any()


def test_zero_slo_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"slo\.classes\.tight"):
        run(compose_config(["slo.classes.tight.tbt_x_ref=0", "workload.num_requests=5"]), None)


def test_cli_prints_summary(tmp_path):
    done = accelgen("scheduler=sarathi", "workload.num_requests=40", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "slo_attainment" in done.stdout and (tmp_path / "run" / "summary.json").exists()


def test_sweep_prints_comparison_and_writes_csv(tmp_path):
    done = accelgen("-m", "scheduler=vllm,orca,sarathi", "workload.num_requests=40", f"hydra.sweep.dir={tmp_path}/sweep",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "sweep" / "comparison.csv")
    assert sorted(table["scheduler"]) == ["orca", "sarathi", "vllm"]
    assert "Comparison (3 runs)" in done.stdout
    assert (tmp_path / "sweep" / "comparison.png").stat().st_size > 10_000


@pytest.mark.parametrize("override, expected", [
    ("scheduler=nope", "scheduler/nope"),
    ("model=gpt5", "model/gpt5"),
    ("slo.scale=0", "slo.scale"),
    ("workload.arrival.rate=-1", "rate"),
])
def test_bad_names_and_values_fail_cleanly(tmp_path, override, expected):
    done = accelgen(override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_malformed_trace_names_the_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6800000,10,5\n"
                   "2023-11-16 18:15:47.6800000,-3,5\n")
    done = accelgen("workload=azure_conv", f"workload.path={bad}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode == 2
    assert "ContextTokens" in done.stderr and "Traceback" not in done.stderr


def test_cli_works_from_any_directory(tmp_path):
    assert (REPO_ROOT / "conf" / "config.yaml").exists()
    done = accelgen("--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0 and "scheduler:" in done.stdout


@pytest.mark.parametrize("override, key", [
    ("metrics.tbt_mode=bogus", "metrics.tbt_mode"),
    ("metrics.tbt_percentile=150", "metrics.tbt_percentile"),
    ("metrics.warmup_s=-1", "metrics.warmup_s"),
    ("metrics.warmup_s=1e9", "drops every request"),
    ("seed=-1", "seed"),
])
def test_run_wide_keys_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        run(compose_config([override, "workload.num_requests=5"]), None)


def test_seed_reaches_latency_noise():
    from runtime.cli import build

    models = [build(compose_config(["cost_model.noise_cv=0.3", f"seed={seed}", "workload.num_requests=5"]))["executor"]
              .cost_model for seed in (0, 1, 1)]
    draws = [[m.predict([(100, 0)], [50]) for _ in range(5)] for m in models]
    assert draws[1] == draws[2] and draws[0] != draws[1]


def test_one_failing_job_does_not_stop_the_sweep(tmp_path):
    done = accelgen("-m", "scheduler=orca,vllm", "kv.num_blocks=100", "workload.num_requests=20",
                    f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert done.returncode == 2
    assert "job(s) failed" in done.stderr and "orca reserves" in done.stderr
    table = pd.read_csv(tmp_path / "sweep" / "comparison.csv")
    assert table["scheduler"].tolist() == ["vllm"]
