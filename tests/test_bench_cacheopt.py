"""Smoke test of bench/cacheopt_vs_baselines.py: its pure table functions and a --quick run (about 5 s on 2 cores)."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    with load_bench("cacheopt_vs_baselines") as module:
        yield module


def _grid():
    # Two rates; "base" has twice the reference's tails and lower attainment at both.
    return pd.DataFrame({
        "variant": ["ref", "ref", "base", "base"], "rate": [1.0, 2.0, 1.0, 2.0],
        "tbt_p95_s": [0.05, 0.10, 0.10, 0.30], "tbt_max_p99_s": [0.1, 0.1, 0.1, 0.1],
        "ttft_p95_s": [1.0, 10.0, 2.0, 15.0], "ttft_p99_s": [2.0, 20.0, 2.0, 20.0],
        "ttft_attainment": [0.9, 0.6, 0.6, 0.3], "tbt_attainment": [1.0, 1.0, 0.5, 0.0],
        "slo_attainment": [0.9, 0.6, 0.3, 0.0],
    })


def test_ratios_follow_their_definitions(bench):
    capacity = pd.DataFrame({"variant": ["ref", "ref", "base", "base"], "seed": [0, 1, 0, 1],
                             "capacity": [1.5, 1.7, None, 1.0], "status": ["ok", "ok", "below_min", "ok"],
                             "evaluations": [5, 5, 6, 5], "monotonic": [True] * 4})
    ratios = bench.ratios_frame(_grid(), capacity, ["ref"])
    assert list(ratios.baseline) == ["base", "base"] and list(ratios.rate) == [1.0, 2.0]
    assert ratios.tbt_p95_lower_x.tolist() == pytest.approx([2.0, 3.0])        # base / ref
    assert ratios.ttft_p95_lower_x.tolist() == pytest.approx([2.0, 1.5])
    assert ratios.ttft_attainment_pp.tolist() == pytest.approx([30.0, 30.0])   # 100 (ref - base)
    assert ratios.ttft_attainment_rel.tolist() == pytest.approx([50.0, 100.0])  # 100 (ref / base - 1)
    assert ratios.tbt_attainment_rel.iloc[0] == pytest.approx(100.0) and np.isinf(ratios.tbt_attainment_rel.iloc[1])
    # "none" (below_min) counts as capacity 0 in the seed mean: 1.6 / 0.5.
    assert ratios.capacity_x.tolist() == pytest.approx([3.2, 3.2])

    table = bench.claims_table(ratios, "ref").set_index("metric")["vs base"]
    assert table["tail TBT, p95 of pooled gaps (lower)"] == "3.00× @ 2 (2.00× … 3.00×)"  # "up to" = max over rates
    assert table["capacity at 90% SLO attainment"] == "3.20×"

    caps = bench.capacity_table(capacity).set_index("variant")
    assert caps.loc["base", "per_seed"] == "none 1.000" and caps.loc["base", "mean"] == pytest.approx(0.5)


def test_rate_table_formats_milliseconds(bench):
    table = bench.rate_table(_grid(), "tbt_p95_s", "ms")
    assert table.columns.tolist() == ["variant", "1", "2"]
    assert table.set_index("variant").loc["base"].tolist() == ["100", "300"]
    assert bench.rate_table(_grid(), "num_swaps", "{:.1f}") is None


def test_quick_run_writes_every_output(bench, tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0

    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs.variant) == ["cacheopt"] * 2 + ["sarathi"] * 2  # 2 variants x 2 rates x 1 seed
    assert (runs.num_requests == 150).all() and sorted(set(runs.rate)) == [0.5, 2.0]
    for column in bench.METRICS:
        if column.startswith("cacheopt_"):
            assert runs.loc[runs.variant == "cacheopt", column].notna().all(), column
        else:
            assert runs[column].notna().all(), column
    # The experiment's KV scale and bursty arrivals reached the runs: a quarter of Llama-2-7B/A100's blocks.
    assert (runs.kv_num_blocks < 2000).all()
    assert runs.loc[runs.variant == "cacheopt", "cacheopt_padding[groups][app:chat][R_up]"].gt(0).all()

    capacity = pd.read_csv(tmp_path / "capacity.csv")
    assert list(capacity.variant) == ["cacheopt", "sarathi"] and capacity.evaluations.between(1, 4).all()

    ratios = pd.read_csv(tmp_path / "ratios.csv")
    assert set(ratios.reference) == {"cacheopt"} and set(ratios.baseline) == {"sarathi"} and len(ratios) == 2
    merged = ratios.merge(runs[runs.variant == "cacheopt"], on="rate").merge(
        runs[runs.variant == "sarathi"], on="rate", suffixes=("_co", "_sa"))
    assert merged.ttft_p95_lower_x.to_numpy() == pytest.approx((merged.ttft_p95_s_sa / merged.ttft_p95_s_co).to_numpy())

    summary = (tmp_path / "summary.md").read_text()
    assert "up to 3.29×" in summary and "vs sarathi" in summary and "spec: 2000" in summary
    for png in ("metrics.png", "capacity.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp"))

    # --replot rebuilds the same tables from the CSVs, without running anything.
    (tmp_path / "summary.md").unlink()
    assert bench.main(["--replot", "--out", str(tmp_path)]) == 0
    replotted = (tmp_path / "summary.md").read_text()
    assert "--quick" in replotted and "150 requests each" in replotted and "vs sarathi" in replotted


def test_sensitivity_suite_and_unknown_variant(bench, tmp_path):
    sens = bench.SUITES["sensitivity"]
    assert sens["oracle_len"][-1] == "scheduler.cacheopt.predictor=oracle"
    assert {"no_reuse", "no_proactive", "no_reserve", "no_victim_order", "no_swap_or_recompute"} <= set(sens)
    with pytest.raises(ValueError, match="unknown variant"):
        bench.main(["--quick", "--only", "nope", "--out", str(tmp_path)])
