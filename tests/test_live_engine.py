"""Every scheduler drives the live runtime (tiny model, CPU) through the CLI's run, like the simulator.

A live run writes the simulator's files with the same columns, finishes every request, returns every KV block,
and its sampled tokens do not depend on how the KV got there: a run squeezed into a small cache (swap and
recompute preemptions) samples exactly the tokens of an unconstrained run (greedy decoding).
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from runtime.cli import build, run
from runtime.core.clock import WallClock
from runtime.core.engine import Engine
from runtime.core.errors import CheckpointError, ConfigError, DeviceMemoryError
from tests.conftest import CONF_DIR, compose_config

SCHEDULERS = sorted(p.stem for p in (CONF_DIR / "scheduler").glob("*.yaml"))
# Short and fast: lengths a tenth of the mixed workload's, 10 requests in a burst, four runtime threads at most.
LIVE = ["runtime=live", "model=tiny", "workload=live_small", "workload.num_requests=10", "workload.arrival.rate=200",
        "runtime.warmup_steps=1", "kv.swap_space_gb=0.01"]


def _files(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_completes_a_live_workload(scheduler, tmp_path):
    overrides = [*LIVE, f"scheduler={scheduler}"]
    if scheduler == "oracle":
        overrides.append("oracle.time_limit_s=null")
    summary = run(compose_config(overrides), tmp_path / "live")
    assert summary["runtime"] == "live" and summary["device"].startswith("tiny on cpu")
    assert summary["num_finished"] + summary["num_rejected"] == summary["num_requests"] == 10
    assert summary["num_rejected"] == 0
    assert summary["kv_blocks_in_use_at_end"] == 0 and summary["kv_swapped_blocks_at_end"] == 0
    # The same files as a simulated run of the same experiment, with the same columns.
    sim_overrides = [o for o in overrides if not o.startswith("runtime.") and o != "runtime=live"]
    sim = run(compose_config([*sim_overrides, "runtime=sim", "hardware=cpu"]), tmp_path / "sim")
    assert sim["runtime"] == "sim"
    assert _files(tmp_path / "live") == _files(tmp_path / "sim")
    for name in _files(tmp_path / "live"):
        if name.endswith(".parquet"):
            live_frame = pd.read_parquet(tmp_path / "live" / name)
            assert list(live_frame.columns) == list(pd.read_parquet(tmp_path / "sim" / name).columns), name
    requests = pd.read_parquet(tmp_path / "live" / "requests.parquet")
    assert (requests["num_output_tokens"] == requests["max_tokens"]).all()
    iterations = pd.read_parquet(tmp_path / "live" / "iterations.parquet")
    assert (iterations["duration_s"] > 0).all()
    assert set(json.loads((tmp_path / "live" / "summary.json").read_text())) == set(summary)


def _live_tokens(overrides):
    parts = build(compose_config([*LIVE, "workload.num_requests=16", "workload.arrival.rate=1000000", *overrides]))
    result = Engine(scheduler=parts["scheduler"], executor=parts["executor"], workload=parts["workload"],
                    clock=WallClock()).run()
    bm = parts["block_manager"]
    assert bm.num_used_blocks == 0 and bm.num_free_cpu_blocks == bm.num_swap_blocks
    bm.check_invariants()
    assert all(r.output_token_ids for r in result.requests), "every request finishes with its tokens"
    return {r.req_id: list(r.output_token_ids) for r in result.requests}, result


@pytest.mark.parametrize("scheduler, mode", [("vllm_swap", "swap"), ("vllm", "recompute")])
def test_preempted_requests_sample_the_same_tokens(scheduler, mode):
    reference, _ = _live_tokens([f"scheduler={scheduler}", "kv.num_blocks=4096"])
    tight, result = _live_tokens([f"scheduler={scheduler}", "kv.num_blocks=130", "kv.block_size=8",
                                  "kv.swap_blocks=64"])
    preempted = [r for r in result.requests if r.num_preemptions]
    assert preempted, "the small cache should force preemptions"
    if mode == "swap":
        assert any(r.num_swaps for r in result.requests)
    assert tight == reference
    for tokens, request in zip(tight.values(), result.requests):
        assert len(tokens) == request.max_tokens


def test_live_errors_come_before_any_request(tmp_path):
    with pytest.raises(DeviceMemoryError, match="does not fit"):
        build(compose_config(["runtime=live", "model=llama2_7b", "cost_model=roofline"]))
    with pytest.raises(DeviceMemoryError, match="KV cache of"):
        build(compose_config(["runtime=live", "model=tiny", "kv.num_blocks=1000000000"]))
    with pytest.raises(CheckpointError, match="no config.json"):
        build(compose_config(["runtime=live", "model=tiny", f"runtime.checkpoint={tmp_path}"]))
    with pytest.raises(ConfigError, match="no cost model for model=tiny on hardware=h100_80g"):
        build(compose_config(["runtime=live", "model=tiny", "hardware=h100_80g"]))
