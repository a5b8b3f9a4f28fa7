"""Smoke test of bench/sim_vs_live.py (--quick: tiny model live and simulated, 2 schedulers; seconds on 2 cores).

Checks the outputs and their columns only: the numbers are timings, which tests never assert.
"""
import os
import sys

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
def report(bench):
    """``bench/sim_vs_live_report.py``, the module ``bench`` imported (its metrics, tables and plot)."""
    return sys.modules["sim_vs_live_report"]


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_vs_live")
    assert bench.main(["--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_every_output(quick_run):
    out = quick_run
    for name in ("runs.csv", "comparison.csv", "iterations.parquet", "probes.csv", "table.md", "sim_vs_live.md",
                 "meta.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "sim_vs_live.png").stat().st_size > 10_000
    assert not list(out.glob(".*.tmp"))


def test_runs_and_comparison_columns(bench, quick_run):
    runs = pd.read_csv(quick_run / "runs.csv")
    assert list(runs.runtime) == ["live", "sim", "sim@probe"] * 2
    assert list(runs.scheduler) == ["sarathi"] * 3 + ["vllm"] * 3
    for key, _ in bench.METRICS:
        assert runs[key].notna().all(), key
    # The simulation manages the live run's KV cache.
    for _, pair in runs.groupby("scheduler"):
        assert pair.kv_num_blocks.nunique() == 1 and pair.kv_swap_blocks.nunique() == 1
    assert runs.device[runs.runtime != "live"].eq("simulated").all()

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


def test_level_is_the_median_ratio_and_scaling_by_it_is_the_level_mape(bench, quick_run):
    comp = pd.read_csv(quick_run / "comparison.csv")
    iters = pd.read_parquet(quick_run / "iterations.parquet")
    for r in comp.itertuples():
        steps = iters[iters.scheduler == r.scheduler]
        ratio = steps.measured_s / steps.predicted_s
        assert r.level == pytest.approx(ratio.median())
        scaled = (steps.predicted_s * r.level - steps.measured_s).abs() / steps.measured_s * 100
        assert r.level_mape_pct == pytest.approx(scaled.mean())
    assert "| live / predicted (MAPE at that level) |" in (quick_run / "table.md").read_text()


def test_with_level_on_known_steps(bench):
    iters = pd.DataFrame(dict(scheduler=["a"] * 3 + ["b"] * 2, rate=[1.0] * 5,
                              measured_s=[2.0, 2.0, 2.2, 1.0, 1.0], predicted_s=[1.0, 1.0, 1.0, 1.0, 1.0]))
    comp = bench.with_level(pd.DataFrame(dict(scheduler=["a", "b"], rate=[1.0, 1.0])), iters)
    assert comp.level.tolist() == [2.0, 1.0]
    # a: scaled by 2, the steps are off by 0, 0 and 0.2/2.2.
    assert comp.level_mape_pct.tolist() == pytest.approx([100 * 0.2 / 2.2 / 3, 0.0])
    assert bench.with_level(comp, iters).columns.tolist() == comp.columns.tolist()  # idempotent


def test_profile_command_spells_out_threads_and_out(report):
    source = ("accelgen-profile: LiveExecutor.execute step_time (median of 5 after 1 warmup round(s), ...) of "
              "llama_15m on cpu float32 (x), 1 torch threads, torch 2.13.0+cpu; full grid of 105 compositions; "
              "served calibration: ... with sarathi/vllm at 2/8/16 req/s (fit_error.serve ...)")
    assert report.profile_command("llama_15m", source, default_threads=2, out="/tmp/cm") == (
        "accelgen-profile model=llama_15m runtime.threads=1 profile.out=/tmp/cm profile.overwrite=true "
        "'profile.serve_rates=[2,8,16]'")
    assert report.profile_command("llama_15m", source, default_threads=1) == (
        "accelgen-profile model=llama_15m profile.overwrite=true 'profile.serve_rates=[2,8,16]'")


def test_probe_columns_and_the_mape_at_the_probes_level(bench, quick_run):
    comp = pd.read_csv(quick_run / "comparison.csv")
    iters = pd.read_parquet(quick_run / "iterations.parquet")
    runs = pd.read_csv(quick_run / "runs.csv")
    for r in comp.itertuples():
        assert r.probe_level_before > 0 and r.probe_level_after > 0
        assert r.probe_level == pytest.approx(np.sqrt(r.probe_level_before * r.probe_level_after))
        steps = iters[iters.scheduler == r.scheduler]
        assert r.probe_factor == pytest.approx(r.probe_level / r.probe_reference)
        scaled = (steps.predicted_s * r.probe_factor - steps.measured_s).abs() / steps.measured_s * 100
        assert r.probe_mape_pct == pytest.approx(scaled.mean())
        live = runs[(runs.scheduler == r.scheduler) & (runs.runtime == "live")].iloc[0]
        probed = runs[(runs.scheduler == r.scheduler) & (runs.runtime == "sim@probe")].iloc[0]
        for key, _ in bench.METRICS:
            assert getattr(r, f"{key}_sim_probe") == pytest.approx(probed[key])
            assert getattr(r, f"{key}_rel_probe") == pytest.approx((probed[key] - live[key]) / live[key])
    probes = pd.read_csv(quick_run / "probes.csv")
    assert len(probes) == len(comp) * 2 * len(set(probes.composition))
    assert np.allclose(probes.ratio, probes.measured_ms / probes.predicted_ms)
    for r in comp.itertuples():
        before = probes[(probes.scheduler == r.scheduler) & (probes.when == "before")]
        assert r.probe_level_before == pytest.approx(before.ratio.median())
    assert "| probe level before → after |" in (quick_run / "table.md").read_text()
    assert "**Speed probe**" in (quick_run / "sim_vs_live.md").read_text()


def test_no_probe_leaves_out_the_probe_and_its_run(bench, tmp_path):
    assert bench.main(["--quick", "--no-progress", "--no-probe", "--schedulers", "vllm", "--num-requests", "4",
                       "--out", str(tmp_path)]) == 0
    assert list(pd.read_csv(tmp_path / "runs.csv").runtime) == ["live", "sim"]
    assert "probe_level" not in pd.read_csv(tmp_path / "comparison.csv")
    assert "probe" not in (tmp_path / "table.md").read_text()


class _Fixed:
    def execute(self, output):
        from runtime.core.outputs import StepResult

        return StepResult(sampled_token_ids={"r": 1}, step_time=1.0, swap_time=0.25, recompute_time=0.1)


def test_scaled_executor_scales_compute_not_swaps(bench):
    result = bench.ScaledExecutor(_Fixed(), 2.0).execute(None)
    assert result.step_time == pytest.approx(0.25 + 0.75 * 2.0)
    assert result.swap_time == 0.25 and result.recompute_time == pytest.approx(0.2)
    assert result.sampled_token_ids == {"r": 1}


def test_scaled_steps_doubles_every_simulated_step_of_an_unchanged_schedule(bench):
    # All requests arrive at once and vLLM does not plan with the cost model: the same steps, each twice as long.
    import runtime.cli as cli
    from runtime.core.clock import VirtualClock
    from runtime.core.engine import Engine
    from runtime.core.recording import RecordingExecutor

    over = ["model=tiny", "hardware=cpu", "cost_model=tiny_cpu", "scheduler=vllm", "workload=live_small",
            "workload.num_requests=6", "workload.arrival.rate=1e6"]
    rows = []
    for factor in (1.0, 2.0):
        with bench.scaled_steps(factor):
            parts = cli.build(bench.compose_cfg(over))
        recorder = RecordingExecutor(parts["executor"])
        Engine(scheduler=parts["scheduler"], executor=recorder, workload=parts["workload"],
               clock=VirtualClock()).run()
        rows.append(recorder.rows)
    assert cli.build.__name__ == "build" and cli.build.__module__ == "runtime.cli"  # restored
    assert [(r["chunks"], r["decodes"]) for r in rows[0]] == [(r["chunks"], r["decodes"]) for r in rows[1]]
    assert np.allclose([r["step_time"] for r in rows[1]], [2 * r["step_time"] for r in rows[0]])


def _rows(pattern):
    """Recorded live steps: ``p`` a prefill chunk of 64 with one decode, ``d`` two decodes."""
    return [dict(chunks=[(64, 0)] if kind == "p" else [], decodes=[30] if kind == "p" else [40, 90],
                 step_time=1e-3 * (i + 1), swap_time=0.0, recompute_tokens=0, gap_s=1e-5)
            for i, kind in enumerate(pattern)]


def test_replay_applies_the_settling_factor_and_the_stored_replay_agrees(bench):
    from runtime.sim.cost_model import LinearCostModel

    coefs = dict(beta0=1e-3, beta1=1e-5, beta2=1e-9, beta3=1e-8, beta4=1e-4)
    plain, settled = LinearCostModel(**coefs), LinearCostModel(**coefs, settle_amplitude=0.5, settle_decay=0.5)
    rows = _rows("ddpdddpd")
    a, b = bench.replay(rows, plain), bench.replay(rows, settled)
    assert list(b.since_prefill) == [-1, -1, -1, 0, 1, 2, 3, 0]
    assert np.allclose(b.predicted_s / a.predicted_s, [1, 1, 1, 1.5, 1.25, 1.125, 1, 1.5])
    # From the stored features alone (--resimulate), the same predictions.
    stored = bench.replay_stored(b.assign(scheduler="vllm", rate=4.0), settled)
    assert np.allclose(stored.predicted_s, b.predicted_s, rtol=1e-12)


def test_resimulate_reproduces_the_stored_simulation_and_follows_a_new_cost_model(bench, quick_run, tmp_path):
    same = tmp_path / "same"
    assert bench.main(["--quick", "--no-progress", "--resimulate", str(quick_run), "--out", str(same)]) == 0
    old, new = pd.read_csv(quick_run / "comparison.csv"), pd.read_csv(same / "comparison.csv")
    for key, _ in bench.METRICS:
        assert np.allclose(new[f"{key}_sim"], old[f"{key}_sim"], rtol=1e-12), key
        assert np.allclose(new[f"{key}_live"], old[f"{key}_live"], rtol=1e-12), key
    iters_old = pd.read_parquet(quick_run / "iterations.parquet")
    iters_new = pd.read_parquet(same / "iterations.parquet")
    assert np.allclose(iters_new.predicted_s, iters_old.predicted_s, rtol=1e-12)
    assert list(pd.read_csv(same / "runs.csv").runtime) == ["live", "sim"] * 2
    assert "Re-simulated" in (same / "sim_vs_live.md").read_text()

    # A cost model with settling: decode steps after a prefill are slower, in the replay and in the simulation.
    import yaml

    cm = yaml.safe_load((REPO_ROOT / "conf" / "cost_model" / "tiny_cpu.yaml").read_text())
    cm.update(settle_amplitude=0.5, settle_decay=0.9)
    (tmp_path / "settled.yaml").write_text(yaml.safe_dump(cm))
    slow = tmp_path / "slow"
    assert bench.main(["--quick", "--no-progress", "--resimulate", str(quick_run), "--out", str(slow),
                       "--cost-model-file", str(tmp_path / "settled.yaml")]) == 0
    iters_slow = pd.read_parquet(slow / "iterations.parquet")
    ratio = iters_slow.predicted_s.to_numpy() / iters_old.predicted_s.to_numpy()
    after = (iters_slow.kind == "decode") & (iters_slow.since_prefill >= 0)
    assert after.any() and (ratio[after] > 1).all() and np.allclose(ratio[~after], 1, rtol=1e-12)
    assert (pd.read_csv(slow / "comparison.csv").tbt_p50_s_sim >= old.tbt_p50_s_sim).all()
    # Never over the stored run itself.
    assert bench.main(["--quick", "--resimulate", str(quick_run), "--out", str(quick_run)]) == 2


def test_sensitivity_reports_each_metrics_elasticity_to_the_step_times(bench, quick_run, tmp_path):
    out = tmp_path / "sens"
    assert bench.main(["--quick", "--no-progress", "--resimulate", str(quick_run), "--out", str(out),
                       "--sensitivity", "0.05"]) == 0
    comp = pd.read_csv(out / "comparison.csv")
    # Steps 5 % longer make every token gap longer: TBT moves with the step times, by about as much at light load.
    assert (comp.tbt_p50_s_elasticity > 0.5).all() and (comp.ttft_p50_s_elasticity > 0).all()
    assert "Elasticity of each simulated metric" in (out / "table.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--resimulate", str(quick_run), "--out", str(out), "--sensitivity", "1.5"])
