"""runtime.plots on real small runs: a sweep of two schedulers at two rates, and one run with gap accounting."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from runtime import plots
from runtime.cli import run
from tests.conftest import compose_config

STANDARD = ("rates", "latency_cdf", "attainment_by_class", "oracle_gap")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``accelgen -m scheduler=vllm,sarathi workload.arrival.rate=2,4`` (40 requests each), without gap accounting."""
    root = tmp_path_factory.mktemp("plots")
    exe = Path(sys.executable).with_name("accelgen")
    done = subprocess.run(
        [str(exe), "-m", "scheduler=vllm,sarathi", "workload.arrival.rate=2,4", "workload.num_requests=40",
         "progress=false", f"hydra.sweep.dir={root / 'sweep'}"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr
    return root / "sweep"


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory) -> Path:
    """One sarathi run with ``oracle.gap_accounting=true`` (20 requests), written by ``runtime.cli.run``."""
    run_dir = tmp_path_factory.mktemp("gap") / "0_scheduler=sarathi"
    run(compose_config(["scheduler=sarathi", "workload.num_requests=20", "oracle.gap_accounting=true"]), run_dir)
    return run_dir


def _texts(fig: Figure) -> list[str]:
    return [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]


def test_sweep_figures_writes_the_standard_pngs_and_skips_the_oracle_one(sweep):
    for name in STANDARD:  # the sweep's own report may have drawn them already
        (sweep / f"{name}.png").unlink(missing_ok=True)
    paths = plots.sweep_figures(sweep)
    assert set(paths) == {"rates", "latency_cdf", "attainment_by_class"}
    for name, path in paths.items():
        assert path == sweep / f"{name}.png"
        assert path.stat().st_size > 20_000
    assert not (sweep / "oracle_gap.png").exists()


def test_sweep_figures_draws_the_gap_histogram_only_with_gap_data(sweep, gap_run, tmp_path):
    # One job of the sweep and the gap run, no comparison.csv: the table comes from the summaries.
    job = next(p for p in sorted(sweep.iterdir()) if p.name.startswith("0_"))
    shutil.copytree(job, tmp_path / job.name)
    shutil.copytree(gap_run, tmp_path / gap_run.name)
    paths = plots.sweep_figures(tmp_path)
    assert "oracle_gap" in paths and paths["oracle_gap"].stat().st_size > 10_000
    # Two series at two different rates: each has one point, so there is a curve to draw.
    assert "rates" in paths


def test_sweep_figures_skips_rate_curves_for_a_single_point(sweep, tmp_path):
    job = next(p for p in sorted(sweep.iterdir()) if p.name.startswith("0_"))
    shutil.copytree(job, tmp_path / job.name)
    paths = plots.sweep_figures(tmp_path)
    assert set(paths) == {"latency_cdf", "attainment_by_class"}


def test_rate_curves_have_one_line_per_scheduler_at_the_swept_rates(sweep):
    table = plots.load_sweep(sweep)
    fig = plots.rate_curves(table)
    for ax, column in zip(fig.axes, ["goodput_rps", "throughput_rps", "slo_attainment"]):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"vllm", "sarathi"}
        for name, line in lines.items():
            rows = table[table["scheduler"] == name].sort_values("arrival_rate")
            np.testing.assert_allclose(line.get_xdata(), [2.0, 4.0])
            scale = 100.0 if column == "slo_attainment" else 1.0
            np.testing.assert_allclose(line.get_ydata(), rows[column] * scale)
        assert ax.get_xlabel() == "arrival rate (req/s)"
        assert "(" in ax.get_ylabel()  # a unit
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["vllm", "sarathi"]


def test_rate_curves_show_the_mean_and_a_band_over_seeds(sweep):
    table = plots.load_sweep(sweep)
    seeds = pd.concat([table, table.assign(seed=1, goodput_rps=table["goodput_rps"] + 1.0)], ignore_index=True)
    fig = plots.rate_curves(seeds)
    line = next(l for l in fig.axes[0].get_lines() if l.get_label() == "vllm")
    expected = table[table["scheduler"] == "vllm"].sort_values("arrival_rate")["goodput_rps"] + 0.5
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert len(fig.axes[0].collections) == 2  # one min-max band per scheduler
    assert "2 seeds" in fig.get_suptitle()


def test_rate_curves_need_rates(sweep):
    with pytest.raises(ValueError, match="arrival_rate"):
        plots.rate_curves(plots.load_sweep(sweep).assign(arrival_rate=np.nan, overrides=""))


def test_latency_cdfs_take_the_highest_rate_every_scheduler_ran(sweep):
    table = plots.load_sweep(sweep)
    requests = plots.load_requests(sweep, table)
    assert set(requests[["scheduler", "arrival_rate"]].itertuples(index=False, name=None)) == {
        ("vllm", 2.0), ("vllm", 4.0), ("sarathi", 2.0), ("sarathi", 4.0)}
    assert "at 4 req/s" in plots.latency_cdfs(requests).get_suptitle()
    # Without vllm at 4 req/s, 2 req/s is the highest rate both ran at.
    partial = requests[~((requests["scheduler"] == "vllm") & (requests["arrival_rate"] == 4.0))]
    fig = plots.latency_cdfs(partial)
    assert "at 2 req/s" in fig.get_suptitle()
    ttft = {line.get_label(): line for line in fig.axes[0].get_lines()}
    at_2 = requests[requests["arrival_rate"] == 2.0]
    for name in ("vllm", "sarathi"):
        expected = np.sort(at_2.loc[at_2["scheduler"] == name, "ttft_s"].dropna())
        np.testing.assert_allclose(ttft[name].get_xdata(), expected)
        assert ttft[name].get_ydata()[-1] <= 1.0
    assert fig.axes[0].get_xscale() == "log"
    assert "largest gap" in fig.axes[1].get_xlabel() and "(s)" in fig.axes[1].get_xlabel()
    slo_lines = [l.get_label() for l in fig.axes[0].get_lines() if l.get_label().startswith("SLO ")]
    assert len(slo_lines) == requests["slo_class"].nunique()


def test_figures_have_titles_labels_and_legends(sweep, gap_run):
    table = plots.load_sweep(sweep)
    gaps = plots.load_gaps(gap_run)
    figures = [plots.attainment_by_class(table), plots.latency_cdfs(plots.load_requests(sweep, table), tbt="p99"),
               plots.oracle_gap_histogram(gaps), plots.oracle_gap_over_time(gaps),
               plots.iteration_latency(plots.load_iterations(sweep, table))]
    for fig in figures:
        assert any(_texts(fig))
        assert fig.legends or all(ax.get_legend() for ax in fig.axes if ax.get_visible())
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_ylabel() or ax.get_xlabel(), fig.get_suptitle()


def test_attainment_by_class_has_one_panel_per_rate_and_a_bar_per_class(sweep):
    table = plots.load_sweep(sweep)
    fig = plots.attainment_by_class(table)
    classes = [c for c in table.columns if c.startswith("slo_attainment[")]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["arrival rate 2 req/s", "arrival rate 4 req/s"]
    assert len(panels[0].patches) == 2 * (1 + len(classes))
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted(
        ["all", *(c[len("slo_attainment["):-1] for c in classes)])


def test_goodput_vs_oracle_needs_an_oracle_run(sweep):
    table = plots.load_sweep(sweep)
    with pytest.raises(ValueError, match="oracle"):
        plots.goodput_vs_oracle(table)
    oracle = table[table["scheduler"] == "sarathi"].assign(scheduler="oracle", series="oracle",
                                                          goodput_rps=lambda t: 2 * t["goodput_rps"])
    fig = plots.goodput_vs_oracle(pd.concat([table[table["scheduler"] == "vllm"], oracle]))
    bars = fig.axes[0].patches
    sarathi = table[table["scheduler"] == "sarathi"].sort_values("arrival_rate")["goodput_rps"].to_numpy()
    vllm = table[table["scheduler"] == "vllm"].sort_values("arrival_rate")["goodput_rps"].to_numpy()
    np.testing.assert_allclose([b.get_height() for b in bars], 100 * vllm / (2 * sarathi))


def test_run_figures_returns_figures_and_tolerates_a_log_without_queue_length(sweep, gap_run, tmp_path):
    job = next(p for p in sorted(sweep.iterdir()) if p.name.startswith("0_"))
    figures = plots.run_figures(job)
    assert set(figures) == {"timeline", "latency_cdf"}
    assert all(isinstance(fig, Figure) for fig in figures.values())
    panels = {ax.get_ylabel(): ax for ax in figures["timeline"].axes}
    assert {"iteration time (ms)", "KV cache in use (%)", "waiting requests"} <= set(panels)
    assert panels["waiting requests"].get_xlabel() == "simulated time (s)"  # the bottom panel

    old = tmp_path / "old_run"
    shutil.copytree(job, old)
    iterations = pd.read_parquet(old / "iterations.parquet").drop(columns="num_waiting")
    iterations.to_parquet(old / "iterations.parquet")
    labels = [ax.get_ylabel() for ax in plots.run_figures(old)["timeline"].axes]
    assert "waiting requests" not in labels and "iteration time (ms)" in labels

    # results.mode=summary writes only summary.json: no table, so no figure drawn from one.
    summary_only = tmp_path / "summary_only"
    summary_only.mkdir()
    shutil.copy(job / "summary.json", summary_only / "summary.json")
    assert plots.run_figures(summary_only) == {}

    assert set(plots.run_figures(gap_run)) == {"timeline", "latency_cdf", "oracle_gap"}


def test_series_name_what_a_sweep_varies_besides_rate_and_seed():
    table = pd.DataFrame({
        "scheduler": ["sarathi", "sarathi", "sarathi", "sarathi"],
        "overrides": ["runtime=sim workload.arrival.rate=2 seed=0 model=tiny",
                      "runtime=live workload.arrival.rate=2 seed=0 model=tiny",
                      "runtime=sim workload.arrival.rate=3 seed=1 model=tiny",
                      "runtime=live workload.arrival.rate=3 seed=1 model=tiny"],
    })
    labelled = plots.with_series(table)
    assert list(labelled["series"]) == ["sarathi runtime=sim", "sarathi runtime=live"] * 2
    # Sweeps from before summaries recorded arrival_rate: parsed from the overrides.
    assert list(labelled["arrival_rate"]) == [2.0, 2.0, 3.0, 3.0]
    # The scheduler's name alone when it tells the runs apart (an ablation names its variants).
    ablation = pd.DataFrame({"scheduler": ["sarathi-256", "sarathi-512"],
                             "overrides": ["ablation=sarathi_256 seed=0", "ablation=sarathi_512 seed=0"]})
    assert list(plots.with_series(ablation)["series"]) == ["sarathi-256", "sarathi-512"]


def test_loaders_read_a_run_directory_too(gap_run):
    table = plots.load_sweep(gap_run)
    assert list(table["series"]) == ["sarathi"] and len(table) == 1
    requests = plots.load_requests(gap_run)
    assert len(requests) == 20 and set(requests["job"]) == {gap_run.name}
    gaps = plots.load_gaps(gap_run)
    assert len(gaps) and {"gap", "series", "arrival_rate"} <= set(gaps.columns)
