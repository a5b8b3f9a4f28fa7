"""results.mode=stream|summary: the same rows and summary as full mode, in bounded memory."""
from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pandas as pd
import pytest

from runtime.cli import run
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import ConfigError
from runtime.core.request import Request
from runtime.core.result_stream import ChunkedIterationLog, GapHistogram, ResultStream
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import compose_config, create_cost_model, create_scheduler, create_slo_classes

# Summary keys that differ by design: the pooled-gap histogram (relative 1e-4), the machine, and the config.
APPROX_KEYS = ("tbt_p50_s", "tbt_p95_s", "tbt_p99_s")
OWN_KEYS = ("wall_s", "config_hash")


@pytest.mark.parametrize("q", [0, 1, 25, 50, 95, 99, 99.9, 100])
def test_gap_histogram_percentile_within_documented_error(q):
    rng = np.random.default_rng(0)
    gaps = rng.lognormal(mean=-3.5, sigma=1.0, size=50_000)
    hist = GapHistogram()
    for part in np.array_split(gaps, 7):
        hist.add(part)
    assert hist.count == gaps.size
    assert hist.percentile(q) == pytest.approx(np.percentile(gaps, q), rel=hist.rel_error)
    assert GapHistogram().percentile(q) is None


def _run_modes(tmp_path, overrides):
    out = {}
    for mode in ("full", "stream", "summary"):
        cfg = compose_config([*overrides, f"results.mode={mode}", "results.batch_size=16"])
        out[mode] = run(cfg, tmp_path / mode)
    return out


@pytest.mark.parametrize("extra", [[], ["metrics.warmup_s=20", "metrics.tbt_mode=percentile", "scheduler=vllm"]])
def test_stream_and_summary_equal_full(tmp_path, extra):
    summaries = _run_modes(tmp_path, ["workload.num_requests=150", "workload.arrival.rate=4", *extra])
    full_dir, stream_dir = tmp_path / "full", tmp_path / "stream"
    # requests.parquet: the same rows in the same (arrival) order, though written in batches of 16.
    pd.testing.assert_frame_equal(pd.read_parquet(full_dir / "requests.parquet"),
                                  pd.read_parquet(stream_dir / "requests.parquet"), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(full_dir / "iterations.parquet"),
                                  pd.read_parquet(stream_dir / "iterations.parquet"), check_exact=True)
    full = summaries["full"]
    for mode in ("stream", "summary"):
        other = summaries[mode]
        assert json.loads((tmp_path / mode / "summary.json").read_text())["num_requests"] == full["num_requests"]
        assert set(other) == set(full)
        for key, value in full.items():
            if key in APPROX_KEYS:
                assert other[key] == pytest.approx(value, rel=1e-4), key
            elif key in ("swap_time_s", "recompute_time_s"):
                assert other[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
            elif key not in OWN_KEYS:
                assert other[key] == value, key


def test_summary_mode_writes_only_summary_json(tmp_path):
    run(compose_config(["workload.num_requests=40", "results.mode=summary"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_bad_results_keys_are_config_errors():
    with pytest.raises(ConfigError, match="results.mode"):
        run(compose_config(["workload.num_requests=5", "results.mode=everything"]), None)
    with pytest.raises(ConfigError, match="results.iteration_every"):
        run(compose_config(["workload.num_requests=5", "results.mode=stream", "results.iteration_every=0"]), None)


def _workload(n, rate=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return Workload(name="t", arrival_time=np.cumsum(rng.exponential(1 / rate, n)),
                    num_prompt_tokens=rng.integers(20, 400, n), num_output_tokens=rng.integers(1, 60, n),
                    app_index=np.zeros(n, int), apps=["a"], app_slo_classes=["tight"],
                    slo_classes=create_slo_classes())


class _TrackedRequest(Request):
    """A Request that can be weakly referenced (``Request`` has slots and no ``__weakref__``)."""

    __slots__ = ("__weakref__",)


class _CountingExecutor(SimExecutor):
    """Counts, every step, the Request objects still alive (weak references: nothing is kept alive by counting)."""

    def __init__(self, *, alive: weakref.WeakSet, scheduler, sink, **kwargs):
        super().__init__(**kwargs)
        self.alive, self.scheduler, self.sink = alive, scheduler, sink
        self.max_excess = 0

    def execute(self, output):
        gc.collect(0)
        excess = len(self.alive) - len(self.scheduler.requests) - self.sink.num_held
        self.max_excess = max(self.max_excess, excess)
        return super().execute(output)


def test_engine_holds_only_in_flight_requests_in_stream_mode(tmp_path):
    wl = _workload(400)
    alive = weakref.WeakSet()
    arrivals_until = wl.arrivals_until

    def tracked(now):
        batch = [_TrackedRequest(r.req_id, arrival_time=r.arrival_time, num_prompt_tokens=r.num_prompt_tokens,
                                 max_tokens=r.max_tokens, app=r.app, slo_class=r.slo_class, ttft_slo_s=r.ttft_slo_s,
                                 tbt_slo_s=r.tbt_slo_s) for r in arrivals_until(now)]
        alive.update(batch)
        return batch

    wl.arrivals_until = tracked
    scheduler = create_scheduler("sarathi", token_budget=256)
    sink = ResultStream(tmp_path / "requests.parquet", batch_size=8)
    executor = _CountingExecutor(alive=alive, scheduler=scheduler, sink=sink, cost_model=create_cost_model())
    log = ChunkedIterationLog(tmp_path / "iterations.parquet", iteration_every=3, chunk_rows=50)
    result = Engine(scheduler=scheduler, executor=executor, workload=wl, clock=VirtualClock(), results=sink,
                    iteration_log=log).run()
    # Apart from the scheduler's in-flight requests and the sink's batch, only the arrivals of the current step
    # (not yet added) can be alive.
    assert result.requests == []
    assert executor.max_excess <= 5
    frame, gaps = sink.finish()
    log.finish()
    del result, frame
    gc.collect()
    # What is left is the scheduler's last step (its decode objects are reused by update_from_output).
    assert len(alive) <= len(getattr(scheduler, "_step_decodes", ())), [gc.get_referrers(r) for r in alive]
    rows = pd.read_parquet(tmp_path / "requests.parquet")
    assert rows["req_id"].tolist() == [f"r{i}" for i in range(400)]
    iterations = pd.read_parquet(tmp_path / "iterations.parquet")
    assert iterations["iteration"].tolist() == list(range(0, len(log), 3))
