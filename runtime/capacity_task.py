"""``task=capacity``: the highest arrival rate at which a scheduler keeps its SLO attainment target.

Each evaluation of ``a(λ)`` (``runtime.capacity_search``, which holds the math) is a full run of the configured
experiment with the arrival rate set to ``λ`` and ``task.num_requests`` requests, written to its own folder
``rate_<k>_<λ>/`` inside the task's output directory. The rate is ``workload.arrival.rate`` for synthetic
workloads and ``workload.target_rate`` for trace replays (the trace is time-scaled to it); the request count is
``workload.num_requests``, or ``workload.max_requests`` for a trace. The seed is the run's, so every point sees the
same requests at a different pace.

The task writes, besides the rate folders:

* ``capacity.json``: the search result (capacity, final bracket, status, monotonicity and its violations);
* ``capacity_points.csv``: one row per evaluated rate (order, rate, attainment, goodput, pass, folder);
* ``capacity.png``: attainment against rate with the target and the capacity marked;
* ``summary.json``: the metrics of the run at the capacity (so a ``-m task=capacity scheduler=a,b`` sweep's
  ``comparison.csv`` has a row per scheduler) plus ``capacity_*`` keys; ``arrival_rate`` is the capacity.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from runtime.capacity_search import CapacityResult, capacity_search
from runtime.core.errors import ConfigError
from runtime.core.run_log import atomic_write, write_json


def _workload_keys(cfg: DictConfig) -> tuple[str, str | None]:
    """(rate key, request-count key) of the configured workload, as paths under ``workload``."""
    workload = cfg.workload
    if OmegaConf.select(workload, "arrival.rate", default=None) is not None:
        rate_key = "arrival.rate"
    elif "target_rate" in workload:
        rate_key = "target_rate"
    else:
        raise ConfigError(f"task=capacity needs a workload with an arrival rate (workload.arrival.rate or "
                          f"workload.target_rate); workload {workload.get('name')!r} has neither")
    count_key = next((k for k in ("num_requests", "max_requests") if k in workload), None)
    return rate_key, count_key


def _start_rate(cfg: DictConfig, rate_key: str) -> float:
    start = cfg.task.get("start_rate")
    if start is None:
        start = OmegaConf.select(cfg.workload, rate_key, default=None)
    if start is None:
        raise ConfigError("task.start_rate is null and the workload's rate (workload.target_rate) is null too: "
                          "set task.start_rate=<req/s>")
    return float(start)


def _min_rate(task: DictConfig, start: float) -> float:
    # Halving without a floor would spend every evaluation on ever-slower runs for a scheduler that never meets
    # the target (vLLM on tight SLOs): below start/64 the answer "no capacity" is what a user needs.
    floor = task.get("min_rate")
    return float(floor) if floor is not None else start / 64.0


def run_capacity(cfg: DictConfig, output_dir: Path | None, *, config_hash: str | None = None) -> dict:
    """Run the search, write its files into ``output_dir`` and return the summary (see the module docstring)."""
    from runtime.cli import run  # the CLI's one-experiment runner; imported here to avoid an import cycle

    t0 = time.perf_counter()
    task = cfg.task
    rate_key, count_key = _workload_keys(cfg)
    start = _start_rate(cfg, rate_key)
    output_dir = Path(output_dir) if output_dir is not None else None
    summaries: dict[float, dict] = {}
    folders: dict[float, str] = {}

    def attainment(rate: float) -> float:
        point = copy.deepcopy(cfg)
        with open_dict(point):
            OmegaConf.update(point.workload, rate_key, float(rate), merge=False)
            if count_key is not None and task.get("num_requests") is not None:
                point.workload[count_key] = int(task.num_requests)
            point.task = {"name": "run"}
        folder = f"rate_{len(summaries):02d}_{rate:.6g}"
        summary = run(point, output_dir / folder if output_dir is not None else None)
        summaries[rate], folders[rate] = summary, folder
        value = float(summary["slo_attainment"])
        print(f"  capacity: {rate:.4g} req/s -> SLO attainment {value:.3f} "
              f"({'pass' if value >= task.target else 'fail'} at {task.target:g})", flush=True)
        return value

    result = capacity_search(attainment, start_rate=start, target=float(task.target), rtol=float(task.rtol),
                             min_rate=_min_rate(task, start), max_rate=task.get("max_rate"),
                             max_evaluations=int(task.max_evaluations), monotone_atol=float(task.monotone_atol))
    points = points_frame(result, summaries, folders)
    at = summaries.get(result.capacity) if result.capacity is not None else None
    # No passing rate (status below_min): the metrics are those of the lowest rate tried, and the status says so.
    base = at if at is not None else summaries[min(summaries)]
    summary = dict(base)
    summary.update(capacity_keys(result))
    summary["arrival_rate"] = result.capacity
    summary["config_hash"] = config_hash
    summary["wall_s"] = time.perf_counter() - t0  # the whole search, not its last point
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "capacity.json", {**capacity_keys(result), "points": points.to_dict("records"),
                                                 "violations": [str(v) for v in result.violations]})
        atomic_write(output_dir / "capacity_points.csv", lambda p: points.to_csv(p, index=False))
        plot_capacity(result, points, output_dir / "capacity.png", title=f"{summary.get('scheduler')} on "
                      f"{summary.get('workload')}")
        write_json(output_dir / "summary.json", summary)  # last: its presence means the task finished
    return summary


def capacity_keys(result: CapacityResult) -> dict:
    return {
        "capacity_rps": result.capacity,
        "capacity_status": result.status,
        "capacity_target": result.target,
        "capacity_low_rps": result.low,
        "capacity_high_rps": result.high,
        "capacity_num_evaluations": result.num_evaluations,
        "capacity_monotonic": result.monotonic,
    }


def points_frame(result: CapacityResult, summaries: dict, folders: dict) -> pd.DataFrame:
    rows = []
    for order, (rate, att) in enumerate(result.points):
        s = summaries[rate]
        rows.append({"order": order, "rate": rate, "slo_attainment": att, "passes": att >= result.target,
                     "goodput_rps": s.get("goodput_rps"), "throughput_rps": s.get("throughput_rps"),
                     "ttft_p99_s": s.get("ttft_p99_s"), "tbt_p99_s": s.get("tbt_p99_s"), "folder": folders[rate]})
    return pd.DataFrame(rows)


def plot_capacity(result: CapacityResult, points: pd.DataFrame, path: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = points.sort_values("rate")
    fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
    ax.plot(ordered["rate"], ordered["slo_attainment"], "o-", color="tab:blue", label="evaluated rate")
    ax.axhline(result.target, color="tab:gray", ls="--", label=f"target {result.target:.0%}")
    if result.capacity is not None and math.isfinite(result.capacity):
        ax.axvline(result.capacity, color="tab:green", ls=":",
                   label=f"capacity {result.capacity:.3g} req/s ({result.status})")
    for row in ordered.itertuples():
        ax.annotate(str(row.order), (row.rate, row.slo_attainment), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color="tab:blue")
    ax.set(xlabel="arrival rate (req/s)", ylabel="SLO attainment", ylim=(-0.02, 1.05),
           title=f"Capacity search: {title}\n(numbers: evaluation order)")
    ax.legend(loc="lower left", fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path
