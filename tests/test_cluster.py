"""``cluster=<router> cluster.num_replicas=N`` end to end: files, summary, the N=1 identity and clear errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra.utils import instantiate

from runtime.cli import run
from runtime.cluster.run import PER_REPLICA_KEYS, run_cluster
from runtime.core.errors import ConfigError
from tests.conftest import CONF_DIR, compose_config, create_cost_model

SMALL = ["workload.num_requests=120", "workload.arrival.rate=6.0"]
CLUSTER_KEYS = {"cluster_num_replicas", "cluster_router", "per_replica"}
CLUSTER_OPTIONS = sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml"))


def read(path):
    return {name: (path / name).read_bytes() for name in ("requests.parquet", "iterations.parquet")}, \
        json.loads((path / "summary.json").read_text())


def strip(summary, *extra):
    return {k: v for k, v in summary.items() if k not in {"wall_s", *extra}}


@pytest.mark.parametrize("scheduler", ["sarathi", "accelgen"])
def test_one_replica_cluster_gives_the_single_engine_files_byte_for_byte(tmp_path, scheduler):
    single = run(compose_config([f"scheduler={scheduler}", *SMALL]), tmp_path / "single")
    # Through the cluster loop itself (run_cluster), and through the CLI, which keeps the single-engine path.
    looped = run_cluster(compose_config([f"scheduler={scheduler}", "cluster=slo_aware", "cluster.num_replicas=1",
                                         *SMALL]), tmp_path / "looped")
    cli = run(compose_config([f"scheduler={scheduler}", "cluster=round_robin", "cluster.num_replicas=1", *SMALL]),
              tmp_path / "cli")
    files, summary = read(tmp_path / "single")
    for name in ("looped", "cli"):
        assert read(tmp_path / name)[0] == files
    assert strip(read(tmp_path / "looped")[1], *CLUSTER_KEYS) == strip(summary)
    assert strip(read(tmp_path / "cli")[1]) == strip(summary)
    assert strip(looped, *CLUSTER_KEYS) == strip(single) and strip(cli) == strip(single)
    assert looped["per_replica"]["0"]["num_requests"] == 120


@pytest.mark.parametrize("option", CLUSTER_OPTIONS)
def test_multi_replica_run_conserves_requests_and_reports_each_replica(tmp_path, option):
    summary = run(compose_config([f"cluster={option}", "cluster.num_replicas=3", *SMALL]), tmp_path)
    option = "least_outstanding" if option == "single" else option  # single's router, when N > 1
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    iterations = pd.read_parquet(tmp_path / "iterations.parquet")
    assert summary["cluster_num_replicas"] == 3 and summary["cluster_router"] == option
    assert len(requests) == 120 and requests["req_id"].is_unique and set(requests["replica"]) <= {0, 1, 2}
    assert set(requests["status"]) <= {"FINISHED_STOPPED", "FINISHED_REJECTED"}
    per = summary["per_replica"]
    assert sorted(per) == ["0", "1", "2"] and all(set(PER_REPLICA_KEYS) <= set(row) for row in per.values())
    counts = requests["replica"].value_counts()
    for index, row in per.items():
        assert row["num_requests"] == row["num_routed"] == counts.get(int(index), 0)
        assert row["num_iterations"] == (iterations["replica"] == int(index)).sum()
    assert sum(row["num_requests"] for row in per.values()) == summary["num_requests"] == 120
    assert sum(row["num_finished"] + row["num_rejected"] for row in per.values()) == 120
    assert summary["num_iterations"] == len(iterations) and summary["kv_blocks_in_use_at_end"] == 0


def test_multi_replica_runs_are_byte_identical_under_a_seed(tmp_path):
    overrides = ["cluster=slo_aware", "cluster.num_replicas=2", "seed=5", *SMALL]
    run(compose_config(overrides), tmp_path / "a")
    run(compose_config(overrides), tmp_path / "b")
    (files_a, summary_a), (files_b, summary_b) = read(tmp_path / "a"), read(tmp_path / "b")
    assert files_a == files_b and strip(summary_a) == strip(summary_b)


def test_more_replicas_serve_an_overload_better(tmp_path):
    overload = ["workload.num_requests=300", "workload.arrival.rate=9.0"]
    one = run(compose_config(overload), None)
    three = run(compose_config([*overload, "cluster=least_outstanding", "cluster.num_replicas=3"]), None)
    assert three["slo_attainment"] > one["slo_attainment"] and three["ttft_p99_s"] < one["ttft_p99_s"]


@pytest.mark.parametrize("override, match", [
    ("cluster.num_replicas=0", "cluster.num_replicas"),
    ("cluster.num_replicas=two", "cluster.num_replicas"),
])
def test_bad_cluster_keys_fail_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        run(compose_config(["cluster=round_robin", override, *SMALL]), None)


def test_live_runtime_is_single_replica():
    cfg = compose_config(["runtime=live", "model=tiny", "cluster=round_robin", "cluster.num_replicas=2",
                          "workload=live_small"])
    with pytest.raises(ConfigError, match="runtime=sim"):
        run(cfg, None)


@pytest.mark.parametrize("option", CLUSTER_OPTIONS)
def test_cluster_options_compose_and_instantiate(option):
    cfg = compose_config([f"cluster={option}"])
    router = instantiate(cfg.cluster.router, cost_model=create_cost_model())
    assert router.name == option or (option == "single" and cfg.cluster.num_replicas == 1)


def test_replicas_draw_their_own_latency_noise():
    from runtime.cli import build
    from runtime.cluster.run import replica_noise_seed

    cfg = compose_config(["cluster=round_robin", "cluster.num_replicas=3", "cost_model.noise_cv=0.2", "seed=4",
                          *SMALL])
    seeds = [replica_noise_seed(4, i) for i in range(3)]
    assert seeds[0] == 4 and len(set(seeds)) == 3 and seeds == [replica_noise_seed(4, i) for i in range(3)]
    # The same batch on each replica's cost model: one shared stream would give the same 5 draws three times.
    models = [build(cfg, noise_seed=s)["cost_model"] for s in seeds]
    draws = [tuple(m.predict([(256, 0)], [100, 200]) for _ in range(5)) for m in models]
    assert len(set(draws)) == 3 and all(len(set(d)) == 5 for d in draws)
    # Replica 0 is the single engine's stream.
    single = build(cfg)["cost_model"]
    assert tuple(single.predict([(256, 0)], [100, 200]) for _ in range(5)) == draws[0]
