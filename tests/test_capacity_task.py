"""``task=capacity``: every point is a real run, the answer brackets the target, and a sweep tabulates it."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from runtime.cli import run_task
from runtime.core.errors import ConfigError
from tests.conftest import compose_config
from tests.test_cli import accelgen


def test_capacity_search_runs_each_rate_and_brackets_the_target(tmp_path):
    cfg = compose_config(["task=capacity", "scheduler=sarathi", "task.num_requests=150", "task.rtol=0.1",
                          "task.start_rate=2.0"])
    summary = run_task(cfg, tmp_path)
    points = pd.read_csv(tmp_path / "capacity_points.csv")
    result = json.loads((tmp_path / "capacity.json").read_text())
    assert summary["capacity_status"] == result["capacity_status"] == "ok"
    capacity, high = summary["capacity_rps"], summary["capacity_high_rps"]
    # The capacity passes, the bracket's upper end fails, and the bracket is within rtol.
    by_rate = points.set_index("rate")
    assert by_rate.loc[capacity, "slo_attainment"] >= 0.9 > by_rate.loc[high, "slo_attainment"]
    assert high - capacity <= 0.1 * capacity
    assert not (by_rate.passes & (by_rate.index > capacity)).any()
    # Every point is a complete run of the configured experiment at that rate and request count.
    for row in points.itertuples():
        point = json.loads((tmp_path / row.folder / "summary.json").read_text())
        assert point["arrival_rate"] == row.rate and point["num_requests"] == 150
        assert point["slo_attainment"] == row.slo_attainment
    # The task's summary is the run at the capacity, keyed for a comparison table.
    at = json.loads((tmp_path / by_rate.loc[capacity, "folder"] / "summary.json").read_text())
    assert summary["goodput_rps"] == at["goodput_rps"] and summary["arrival_rate"] == capacity
    assert json.loads((tmp_path / "summary.json").read_text())["capacity_rps"] == capacity
    assert (tmp_path / "capacity.png").stat().st_size > 10_000


def test_capacity_below_min_rate_has_no_capacity(tmp_path):
    cfg = compose_config(["task=capacity", "scheduler=vllm", "task.num_requests=80", "task.start_rate=8",
                          "task.min_rate=4", "task.target=0.99"])
    summary = run_task(cfg, tmp_path)
    assert summary["capacity_status"] == "below_min" and summary["capacity_rps"] is None
    assert set(pd.read_csv(tmp_path / "capacity_points.csv").rate) == {8.0, 4.0}


@pytest.mark.parametrize("overrides, message", [
    (["task.target=1.5"], "capacity target must be in (0, 1]"),
    (["task.name=bisect"], "task.name must be 'run' or 'capacity'"),
    (["workload=azure_conv", "task.start_rate=null"], "task.start_rate is null"),
])
def test_capacity_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_task(compose_config(["task=capacity", *overrides]), tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_capacity_sweep_gives_one_row_per_scheduler(tmp_path):
    proc = accelgen("-m", "task=capacity", "scheduler=sarathi,vllm", "task.num_requests=80", "task.rtol=0.25",
                    f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert sorted(table.scheduler) == ["sarathi", "vllm"]
    assert {"capacity_rps", "capacity_status", "capacity_num_evaluations"} <= set(table.columns)
    rates = table.set_index("scheduler").capacity_rps
    # Sarathi-Serve's chunked prefill holds the SLOs at a higher rate than vLLM's prefill-first steps.
    assert rates["sarathi"] > rates["vllm"]
