from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.core.metrics import requests_frame, summarise
from runtime.core.request import Request, RequestStatus


def _finished(req_id, arrival, times, *, ttft_slo=1.0, tbt_slo=0.5, slo_class="tight", prefill_step=0.0, prompt=10):
    r = Request(req_id, arrival_time=arrival, num_prompt_tokens=prompt, max_tokens=len(times), slo_class=slo_class,
                ttft_slo_s=ttft_slo, tbt_slo_s=tbt_slo)
    r.token_times = list(times)
    r.num_output_tokens = len(times)
    r.status = RequestStatus.FINISHED_STOPPED
    r.times.finished_time = times[-1]
    r.max_prefill_step_time = prefill_step
    return r


def test_hand_computed_metrics():
    a = _finished("a", 0.0, [0.5, 0.7, 1.0])             # TTFT 0.5, gaps .2 .3 -> meets
    b = _finished("b", 1.0, [3.0, 3.1], slo_class="loose")  # TTFT 2.0 > 1.0 -> misses TTFT
    c = _finished("c", 2.0, [2.2, 3.0])                  # gap 0.8 > 0.5 -> misses TBT
    d = Request("d", arrival_time=2.5, num_prompt_tokens=10, max_tokens=4, slo_class="tight")
    d.status, d.rejection_reason = RequestStatus.FINISHED_REJECTED, "too long"
    reqs = [a, b, c, d]
    df = requests_frame(reqs)
    assert df["met_slo"].tolist() == [True, False, False, False]
    assert df["met_ttft"].tolist() == [True, False, True, False]
    assert df["met_tbt"].tolist() == [True, True, False, False]
    assert df.loc[0, "tbt_max_s"] == pytest.approx(0.3)
    assert math.isnan(df.loc[3, "ttft_s"])
    s = summarise(df, reqs)
    duration = 3.1 - 0.0
    assert s["duration_s"] == pytest.approx(duration)
    assert s["num_finished"] == 3 and s["num_rejected"] == 1
    assert s["slo_attainment"] == pytest.approx(0.25)
    assert s["slo_attainment_by_class"] == pytest.approx({"loose": 0.0, "tight": 1 / 3})
    assert s["throughput_rps"] == pytest.approx(3 / duration)
    assert s["throughput_tps"] == pytest.approx(7 / duration)
    assert s["goodput_rps"] == pytest.approx(1 / duration)
    assert s["goodput_tps"] == pytest.approx(3 / duration)
    pooled = [0.2, 0.3, 0.1, 0.8]
    assert s["tbt_p50_s"] == pytest.approx(np.percentile(pooled, 50))
    assert s["tbt_p99_s"] == pytest.approx(np.percentile(pooled, 99))
    assert s["ttft_p50_s"] == pytest.approx(np.percentile([0.5, 2.0, 0.2], 50))
    assert s["jct_mean_s"] == pytest.approx(np.mean([1.0, 2.1, 1.0]))


def test_prefill_iteration_bound_and_single_token_requests():
    slow_prefill = _finished("a", 0.0, [0.5, 0.6], prefill_step=0.6)
    single = _finished("b", 0.0, [0.3], prefill_step=0.2)
    df = requests_frame([slow_prefill, single], bound_prefill_iterations=True)
    assert df["met_tbt"].tolist() == [False, True]
    df = requests_frame([slow_prefill, single], bound_prefill_iterations=False)
    assert df["met_tbt"].tolist() == [True, True]


def test_percentile_mode_tolerates_one_spike():
    times = list(np.arange(0, 2.0, 0.1)) + [3.0]  # 19 gaps of 0.1 and one of ~1.1
    r = _finished("a", 0.0, [t + 0.1 for t in times])
    assert not requests_frame([r], tbt_mode="max")["met_tbt"].item()
    assert requests_frame([r], tbt_mode="percentile", tbt_percentile=90)["met_tbt"].item()


def test_per_request_p99_matches_numpy():
    rng = np.random.default_rng(1)
    reqs = [_finished(f"r{i}", 0.0, list(np.cumsum(rng.random(rng.integers(1, 30))) + 1)) for i in range(20)]
    df = requests_frame(reqs)
    for r, (mx, p99) in zip(reqs, df[["tbt_max_s", "tbt_p99_s"]].to_numpy()):
        gaps = np.diff(r.token_times)
        if gaps.size:
            assert mx == pytest.approx(gaps.max()) and p99 == pytest.approx(np.percentile(gaps, 99))
        else:
            assert np.isnan(mx) and np.isnan(p99)


def test_warmup_drops_early_arrivals():
    early = _finished("a", 0.0, [5.0])  # misses TTFT
    late = _finished("b", 10.0, [10.5])
    df = requests_frame([early, late])
    assert summarise(df, [early, late])["slo_attainment"] == 0.5
    assert summarise(df, [early, late], warmup_s=1.0)["slo_attainment"] == 1.0
