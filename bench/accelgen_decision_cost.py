"""Decision cost: wall time of one ``scheduler.schedule(now)`` call against the number of queued requests.

Runs the default mixed workload on Llama-2-7B / A100 at an overload rate, so the waiting queue grows through
every size from 0 to over a thousand, and times every ``schedule`` call of the engine (``perf_counter_ns``
around the call; the whole decision: slack, budget, packing, KV allocation and the decode bookkeeping). Reports
the median and p90 per queue-length bin, and the target figure: the median over steps with 224-288 queued
requests ("256 queued"). Sarathi-Serve is timed the same way for reference.

    .venv/bin/python bench/accelgen_decision_cost.py [--rate 6] [--num-requests 3000] [--schedulers accelgen sarathi]
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from runtime.cli import CONF_DIR, build
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.run_log import write_json

BINS = [(0, 64), (64, 128), (128, 224), (224, 288), (288, 512), (512, 1024), (1024, 1 << 30)]
TARGET_BIN = (224, 288)


def measure(scheduler_name: str, rate: float, num_requests: int, extra: list[str]) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=[
            "progress=false", f"scheduler={scheduler_name}", f"workload.num_requests={num_requests}",
            f"workload.arrival.rate={rate}", *extra])
    parts = build(cfg)
    scheduler = parts["scheduler"]
    inner = scheduler.schedule
    queued, running, cost_ns = [], [], []
    clock = time.perf_counter_ns

    def timed(now):
        q, r = len(scheduler.waiting), scheduler.num_running
        t0 = clock()
        out = inner(now)
        cost_ns.append(clock() - t0)
        queued.append(q)
        running.append(r)
        return out

    scheduler.schedule = timed
    Engine(scheduler=scheduler, executor=parts["executor"], workload=parts["workload"], clock=VirtualClock()).run()
    queued_a, cost_us = np.asarray(queued), np.asarray(cost_ns) / 1e3
    rows = []
    for lo, hi in BINS:
        mask = (queued_a >= lo) & (queued_a < hi)
        if mask.any():
            rows.append({"queued": f"{lo}-{hi if hi < 1 << 30 else 'inf'}", "steps": int(mask.sum()),
                         "median_us": float(np.median(cost_us[mask])), "p90_us": float(np.percentile(cost_us[mask], 90)),
                         "mean_running": float(np.mean(np.asarray(running)[mask]))})
    target = (queued_a >= TARGET_BIN[0]) & (queued_a < TARGET_BIN[1])
    return {"scheduler": scheduler_name, "rate": rate, "num_requests": num_requests, "steps": len(cost_us),
            "median_us_at_256_queued": float(np.median(cost_us[target])) if target.any() else None,
            "p90_us_at_256_queued": float(np.percentile(cost_us[target], 90)) if target.any() else None,
            "steps_at_256_queued": int(target.sum()), "median_us_all": float(np.median(cost_us)), "bins": rows}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--schedulers", nargs="+", default=["accelgen", "sarathi"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/accelgen_decision_cost.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    results = [measure(name, args.rate, args.num_requests, args.overrides) for name in args.schedulers]
    for res in results:
        if res["steps_at_256_queued"]:
            print(f"\n{res['scheduler']}: {res['steps']} steps; median {res['median_us_at_256_queued']:.1f} us "
                  f"(p90 {res['p90_us_at_256_queued']:.1f} us) over {res['steps_at_256_queued']} steps with 224-288 queued")
        else:
            print(f"\n{res['scheduler']}: {res['steps']} steps; the queue never held 224-288 requests (raise --rate or "
                  f"--num-requests)")
        print(f"  {'queued':>10} {'steps':>7} {'median_us':>10} {'p90_us':>8} {'running':>8}")
        for row in res["bins"]:
            print(f"  {row['queued']:>10} {row['steps']:>7} {row['median_us']:>10.1f} {row['p90_us']:>8.1f} "
                  f"{row['mean_running']:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "results": results})
    return results


if __name__ == "__main__":
    main()
