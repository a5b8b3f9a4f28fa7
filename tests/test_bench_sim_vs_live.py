"""Smoke test of bench/sim_vs_live.py (--quick: tiny model live and simulated, 2 schedulers; seconds on 2 cores).

Checks the outputs and their columns only: the numbers are timings, which tests never assert.
"""
import os

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, load_bench

os.environ.setdefault("WANDB_MODE", "disabled")

pytestmark = pytest.mark.skipif(not (REPO_ROOT / "conf" / "cost_model" / "tiny_cpu.yaml").exists(),
                                reason="needs conf/cost_model/tiny_cpu.yaml (accelgen-profile model=tiny)")


@pytest.fixture(scope="module")
def bench():
    with load_bench("sim_vs_live") as module:
        yield module


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_vs_live")
    assert bench.main(["--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_every_output(quick_run):
    out = quick_run
    for name in ("runs.csv", "comparison.csv", "iterations.parquet", "table.md", "sim_vs_live.md", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "sim_vs_live.png").stat().st_size > 10_000
    assert not list(out.glob(".*.tmp"))


def test_runs_and_comparison_columns(bench, quick_run):
    runs = pd.read_csv(quick_run / "runs.csv")
    assert list(runs.runtime) == ["live", "sim"] * 2
    assert list(runs.scheduler) == ["sarathi", "sarathi", "vllm", "vllm"]
    for key, _ in bench.METRICS:
        assert runs[key].notna().all(), key
    # The simulation manages the live run's KV cache.
    for _, pair in runs.groupby("scheduler"):
        assert pair.kv_num_blocks.nunique() == 1 and pair.kv_swap_blocks.nunique() == 1
    assert runs.device[runs.runtime == "sim"].eq("simulated").all()

    comp = pd.read_csv(quick_run / "comparison.csv")
    assert list(comp.scheduler) == ["sarathi", "vllm"] and (comp.rate == 20.0).all()
    expected = ["iter_mape_pct", "iter_ape_p90_pct", "iter_bias_pct", "busy_ratio", "engine_gap_median_ms",
                *[f"iter_mape_{k}_pct" for k in bench.KINDS], "iter_ok", "metrics_ok"]
    expected += [f"{k}_{s}" for k, _ in bench.METRICS for s in ("live", "sim", "rel")]
    assert set(expected) <= set(comp.columns)
    assert (comp.iter_mape_pct >= 0).all()
    merged = comp.merge(runs[runs.runtime == "live"], on="scheduler")
    assert np.allclose(merged.goodput_rps_live, merged.goodput_rps)


def test_iterations_replay_every_live_step(bench, quick_run):
    iters = pd.read_parquet(quick_run / "iterations.parquet")
    runs = pd.read_csv(quick_run / "runs.csv")
    live_steps = runs[runs.runtime == "live"].set_index("scheduler").num_iterations
    assert iters.groupby("scheduler").size().to_dict() == live_steps.to_dict()
    assert set(iters.kind) <= set(bench.KINDS)
    assert (iters.measured_s > 0).all() and (iters.predicted_s > 0).all()
    assert np.allclose(iters.ape_pct, (iters.predicted_s - iters.measured_s).abs() / iters.measured_s * 100)
    assert ((iters.num_chunks > 0) | (iters.num_decodes > 0)).all()


def test_section_is_benchmarks_ready(quick_run):
    text = (quick_run / "sim_vs_live.md").read_text()
    assert text.startswith("## Simulator against the live runtime (tiny on CPU)")
    assert "bench/sim_vs_live.py --quick" in text and "accelgen-profile model=tiny" in text
    assert "| sarathi | 20 |" in text and "Machine:" in text


def test_render_only_rebuilds_from_the_tables(bench, quick_run):
    (quick_run / "table.md").unlink()
    assert bench.main(["--quick", "--render-only", "--out", str(quick_run)]) == 0
    assert (quick_run / "table.md").read_text().startswith("| scheduler | rate (req/s) |")
