"""``cluster=<router> cluster.num_replicas=N``: one experiment on N identical simulated replicas.

``runtime.cli.run`` hands over here when ``cluster.num_replicas != 1``; with one replica (or no ``cluster``) the
CLI keeps the single-engine path, so those runs are unchanged. Every replica is built by ``runtime.cli.build``
from the same config (its own scheduler, block manager and executor, and its own latency-noise seed:
``replica_noise_seed``), and replica 0's workload is replayed through the router (``runtime.cluster.cluster_engine``).

Outputs are the single run's, over all requests (the cluster metrics), plus:

* ``requests.parquet``: a ``replica`` column (the replica each request was routed to);
* ``iterations.parquet``: every replica's steps, replica by replica, with a ``replica`` column; ``iteration``
  counts each replica's own steps;
* ``summary.json``: ``cluster_num_replicas``, ``cluster_router`` and ``per_replica`` (``PER_REPLICA_KEYS`` for each
  replica, over the requests routed to it, its duration running from its first arrival to its last completion).
  ``kv_num_blocks`` and ``kv_swap_blocks`` are per replica; ``kv_*_at_end`` and ``num_iterations`` are totals.
  A scheduler's own tables gain a ``replica`` column, and its own summary keys go to ``per_replica``.

``run_cluster`` also runs N=1 through the cluster loop (tests use it to show that this equals the single engine:
then no ``replica`` column is added).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from runtime import cli
from runtime.core.clock import VirtualClock
from runtime.core.errors import ConfigError
from runtime.core.metrics import kv_activity, requests_frame, summarise
from runtime.core.run_log import write_run_outputs
from runtime.cluster.cluster_engine import ClusterEngine, ClusterResult
from runtime.cluster.replica import Replica

PER_REPLICA_KEYS = (
    "num_requests", "num_finished", "num_rejected", "slo_attainment", "goodput_rps", "throughput_rps", "ttft_p50_s",
    "ttft_p99_s", "tbt_p99_s", "jct_mean_s", "num_preemptions",
)


def num_replicas(cfg: DictConfig) -> int:
    """``cluster.num_replicas`` (1 without a ``cluster`` group), checked."""
    cluster = cfg.get("cluster")
    if cluster is None:
        return 1
    n = cluster.get("num_replicas")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"cluster.num_replicas must be a positive integer, got {n!r}")
    return n


def replica_noise_seed(seed: int, index: int) -> int:
    """The latency-noise seed of replica ``index`` of a run with ``seed``.

    With ``cost_model.noise_cv > 0`` replicas sharing one seed would jitter in lockstep (each drawing the same
    sequence at its own steps), which no real fleet does. Replica 0 keeps the run's seed, so N=1 is the single
    engine; replica ``i > 0`` draws from ``SeedSequence([seed, i])``, apart from every seed's replica 0 too.
    """
    return seed if index == 0 else int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def run_cluster(cfg: DictConfig, output_dir: Path | None, *, config_hash: str | None = None) -> dict:
    """Run one experiment on ``cluster.num_replicas`` replicas, write its outputs and return its summary."""
    t0 = time.perf_counter()
    n = num_replicas(cfg)
    if cli.is_live(cfg) and n > 1:
        raise ConfigError(f"cluster.num_replicas={n} needs runtime=sim: the live runtime runs one replica")
    mode = (cfg.get("results") or {}).get("mode", "full")
    if mode != "full":
        raise ConfigError(f"results.mode={mode} is not supported with cluster.num_replicas={n}: use results.mode=full")
    if cfg.get("cluster") is None or cfg.cluster.get("router") is None:
        raise ConfigError("cluster.router is not set: choose cluster=round_robin, least_outstanding or slo_aware")
    parts = [cli.build(cfg, noise_seed=replica_noise_seed(int(cfg.seed), i)) for i in range(n)]
    first = parts[0]
    cost_model = first["cost_model"]
    planner_model = cost_model.deterministic() if hasattr(cost_model, "deterministic") else cost_model
    router = cli.instantiate_node(cfg.cluster.router, cost_model=planner_model)
    replicas = [Replica(i, scheduler=p["scheduler"], executor=p["executor"], clock=VirtualClock())
                for i, p in enumerate(parts)]
    workload = first["workload"]
    scheduler = first["scheduler"]
    scheduler_name = cfg.scheduler.get("name") or type(scheduler).__name__
    bar = tqdm(total=len(workload), unit="req", desc=f"{scheduler_name} x{n}", mininterval=0.5, leave=False,
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        result = ClusterEngine(replicas=replicas, router=router, workload=workload, progress=bar).run()
    finally:
        bar.close()
    metrics_cfg = cfg.metrics
    frame = requests_frame(result.requests, tbt_mode=metrics_cfg.tbt_mode, tbt_percentile=metrics_cfg.tbt_percentile,
                           bound_prefill_iterations=cfg.slo.bound_prefill_iterations)
    iterations = _iterations_frame(result)
    # The same keys, in the same order, as runtime.cli.run, so N=1 gives the same summary.
    summary = {
        **cli.run_description(cfg, first, frame),
        **summarise(frame, result.requests, warmup_s=metrics_cfg.warmup_s),
        "num_iterations": len(iterations),
        "wall_s": None,
        "config_hash": config_hash,
    }
    summary.update(kv_activity(iterations))
    summary["kv_blocks_in_use_at_end"] = sum(p["block_manager"].num_used_blocks for p in parts)
    summary["kv_swapped_blocks_at_end"] = sum(p["block_manager"].num_swap_blocks - p["block_manager"].num_free_cpu_blocks
                                              for p in parts)
    per_replica = _per_replica(frame, result, warmup_s=metrics_cfg.warmup_s)
    tables = _scheduler_artifacts(result, summary, per_replica)
    summary["cluster_num_replicas"] = n
    summary["cluster_router"] = router.name
    summary["per_replica"] = per_replica
    summary["wall_s"] = time.perf_counter() - t0
    if output_dir is not None:
        if n > 1:
            frame.insert(1, "replica", pd.array(result.replica_of, dtype="int64"))
        write_run_outputs(output_dir, requests=frame, iterations=iterations, summary=summary, tables=tables)
    return summary


def _iterations_frame(result: ClusterResult) -> pd.DataFrame:
    frames = [replica.log.to_frame() for replica in result.replicas]
    if len(frames) == 1:
        return frames[0]
    for replica, frame in zip(result.replicas, frames):
        frame.insert(1, "replica", pd.array([replica.index] * len(frame), dtype="int64"))
    return pd.concat(frames, ignore_index=True)


def _per_replica(frame: pd.DataFrame, result: ClusterResult, *, warmup_s: float) -> dict[str, dict]:
    """``PER_REPLICA_KEYS`` of each replica over the requests the cluster metrics keep (after ``warmup_s``)."""
    replica_of = pd.Series(result.replica_of, index=frame.index)
    kept = frame["arrival_time"] >= frame["arrival_time"].min() + warmup_s
    out = {}
    for replica in result.replicas:
        mask = kept & (replica_of == replica.index)
        requests = [r for r, m in zip(result.requests, mask) if m]
        row = {"num_routed": replica.num_routed}
        if requests:
            metrics = summarise(frame[mask.to_numpy()], requests, warmup_s=0.0)
            row.update({k: metrics[k] for k in PER_REPLICA_KEYS})
        else:
            row.update({k: 0 if k.startswith("num_") else None for k in PER_REPLICA_KEYS})
        row["num_iterations"] = len(replica.log)
        out[str(replica.index)] = row
    return out


def _scheduler_artifacts(result: ClusterResult, summary: dict, per_replica: dict) -> dict[str, pd.DataFrame]:
    """Schedulers' own tables (the Oracle's) and keys: as the single run with one replica; else tables gain a
    ``replica`` column and keys go to ``per_replica``."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for replica in result.replicas:
        artifacts = getattr(replica.scheduler, "run_artifacts", None)
        if artifacts is None:
            continue
        replica_tables, extra = artifacts()
        if len(result.replicas) == 1:
            summary.update(extra)
            return dict(replica_tables)
        per_replica[str(replica.index)].update(extra)
        for name, table in replica_tables.items():
            table = table.copy()
            table.insert(0, "replica", replica.index)
            tables.setdefault(name, []).append(table)
    return {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
