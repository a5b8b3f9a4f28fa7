"""Smoke test of bench/accelgen_vs_baselines.py: the real config stack, tiny (--quick, about 5 s on 2 cores)."""

import pandas as pd
import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    with load_bench("accelgen_vs_baselines") as module:
        yield module


def test_quick_run_writes_every_output(bench, tmp_path):
    # sarathi as the reference exercises the ratio tables without needing AccelGen.
    assert bench.main(["--quick", "--only", "vllm", "sarathi", "--reference", "sarathi", "--out", str(tmp_path)]) == 0

    capacity = pd.read_csv(tmp_path / "capacity.csv")
    assert list(capacity.variant) == ["vllm", "sarathi"]
    assert set(capacity.workload) == {"mixed"} and set(capacity.model) == {"llama2_7b:a100_80g"}
    assert capacity.evaluations.between(1, 6).all()  # --quick caps each search at 6 runs
    assert set(capacity.status) <= {"ok", "below_min", "above_max", "unconverged"}
    for row in capacity.itertuples():
        points = [tuple(map(float, p.split(":"))) for p in row.points.split()]
        assert len(points) == row.evaluations
        if row.status == "ok":
            # The capacity is an evaluated passing rate.
            assert any(r == pytest.approx(row.capacity, rel=1e-3) and a >= 0.9 for r, a in points)

    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 2 * 3  # 2 variants x 3 rates x 1 seed
    assert list(runs.variant) == ["vllm"] * 3 + ["sarathi"] * 3
    for column in ["rate", "seed", "slo_attainment", "slo_attainment[tight]", "slo_attainment[medium]",
                   "slo_attainment[loose]", "goodput_rps", "throughput_rps", "jct_mean_s", "jct_p99_s"]:
        assert runs[column].notna().all(), column
    assert (runs.num_requests == 200).all()
    # The grid is 0.25x, 0.875x and 1.5x the best non-reference capacity, shared by both variants.
    rates = sorted(set(runs.rate))
    assert len(rates) == 3 and rates[2] / rates[0] == pytest.approx(6.0, rel=1e-3)
    assert (runs.groupby("variant").rate.apply(sorted).apply(tuple).nunique()) == 1

    ratios = pd.read_csv(tmp_path / "ratios.csv")
    assert set(ratios.baseline) == {"vllm"} and len(ratios) == 3
    merged = ratios.merge(runs[runs.variant == "vllm"], on="rate").merge(
        runs[runs.variant == "sarathi"], on="rate", suffixes=("_vllm", "_sarathi"))
    assert (merged.goodput_rps_x.to_numpy() == pytest.approx(
        (merged.goodput_rps_sarathi / merged.goodput_rps_vllm).to_numpy()))
    assert (merged.slo_attainment_pp.to_numpy() == pytest.approx(
        100 * (merged.slo_attainment_sarathi - merged.slo_attainment_vllm).to_numpy()))

    summary = (tmp_path / "summary.md").read_text()
    assert "1.43–13.71×" in summary and "vs vllm" in summary and "spec: 2000" in summary
    assert (tmp_path / "llama2_7b_a100_80g__mixed.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_variant_is_a_clear_error(bench, tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        bench.main(["--quick", "--only", "nope", "--out", str(tmp_path)])


def test_workload_rate_key_follows_the_config(bench):
    assert bench.inspect_workload("mixed").rate_key == "workload.arrival.rate"
    assert bench.inspect_workload("mixed").size_key == "workload.num_requests"
    trace = bench.inspect_workload("azure_code")
    assert (trace.rate_key, trace.size_key) == ("workload.target_rate", "workload.max_requests")


def test_trace_workload_without_data_is_skipped(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELGEN_SHARED_DATA", str(tmp_path))
    assert bench.inspect_workload("azure_conv").skip_reason.startswith(f"needs {tmp_path}")
    assert bench.inspect_workload("mixed").skip_reason is None
