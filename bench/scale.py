"""Scale: simulate a 1,000,000-request mixed workload in bounded memory (issue #8).

The default ``mixed`` workload (chat, code and summarization; tight, medium and loose SLO classes) with Poisson
arrivals at ``--rate`` req/s, about 0.9x Sarathi-Serve's capacity on Llama-2-7B / A100-80GB (~2.9 req/s), so one
replica stays busy and the queue stays bounded. Each ``--modes`` entry runs in its own child process (so each has
its own peak RSS) through ``runtime.cli.run``, end to end: build, simulation, per-request rows, files, summary.

    .venv/bin/python bench/scale.py                                   # 1M requests, results.mode=stream then summary
    .venv/bin/python bench/scale.py --num-requests 100000 --modes stream
    /usr/bin/time -v .venv/bin/python bench/scale.py --modes summary  # the OS's view of the peak RSS

Reports per mode: wall time, simulated iterations and requests per wall-second (end to end, so including the
metrics and file writes the foundation benchmark, bench/sim_speed.py, leaves out), peak RSS of the child
(``resource.getrusage``, the same figure ``/usr/bin/time -v`` reports as "Maximum resident set size"), and the
run's throughput against the offered rate (a stable run finishes at the rate requests arrive).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_dir

    from runtime.cli import CONF_DIR, run

    overrides = [
        f"scheduler={args.scheduler}", "workload=mixed", "model=llama2_7b", "hardware=a100_80g",
        f"workload.num_requests={args.num_requests}", f"workload.arrival.rate={args.rate}",
        f"results.mode={args.mode}", f"results.iteration_every={args.iteration_every}", f"seed={args.seed}",
        f"progress={str(not args.no_progress).lower()}", *args.overrides,
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=overrides)
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = run(cfg, Path(args.run_dir))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    files = {p.name: p.stat().st_size for p in Path(args.run_dir).iterdir() if p.is_file()}
    result = {
        "mode": args.mode,
        "num_requests": summary["num_requests"],
        "num_iterations": summary["num_iterations"],
        "wall_s": wall,
        "iterations_per_s": summary["num_iterations"] / wall,
        "requests_per_s": summary["num_requests"] / wall,
        # CPU seconds of this process: insensitive to time stolen by other tenants of a shared machine.
        "cpu_s": cpu,
        "iterations_per_cpu_s": summary["num_iterations"] / cpu,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "simulated_s": summary["duration_s"],
        "offered_rate_rps": summary["offered_rate_rps"],
        "throughput_rps": summary["throughput_rps"],
        "slo_attainment": summary["slo_attainment"],
        "ttft_p99_s": summary["ttft_p99_s"],
        "tbt_p99_s": summary["tbt_p99_s"],
        "jct_mean_s": summary["jct_mean_s"],
        "files_bytes": files,
    }
    Path(args.result_file).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=2.6, help="Poisson arrival rate, req/s (default 2.6)")
    parser.add_argument("--modes", default="stream,summary", help="comma-separated results.mode values")
    parser.add_argument("--scheduler", default="sarathi")
    parser.add_argument("--iteration-every", type=int, default=1, help="results.iteration_every (stream)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None, help="where the runs' files go (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/scale.json")
    parser.add_argument("--no-progress", action="store_true")
    # Internal: one mode in this process.
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    if args.mode is not None:
        child(args)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="accelgen-scale-") as tmp:
        base = Path(args.run_dir) if args.run_dir else Path(tmp)
        for mode in args.modes.split(","):
            result_file = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, __file__, "--mode", mode, "--result-file", str(result_file),
                   "--run-dir", str(base / mode), "--num-requests", str(args.num_requests), "--rate", str(args.rate),
                   "--scheduler", args.scheduler, "--iteration-every", str(args.iteration_every),
                   "--seed", str(args.seed), *(["--no-progress"] if args.no_progress else []), *args.overrides]
            subprocess.run(cmd, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
            result = json.loads(result_file.read_text())
            results.append(result)
            print(f"{mode:>8}: {result['num_requests']:,} requests, {result['num_iterations']:,} iterations in "
                  f"{result['wall_s']:.1f} s -> {result['iterations_per_s']:,.0f} it/s, "
                  f"{result['requests_per_s']:,.0f} req/s ({result['iterations_per_cpu_s']:,.0f} it per CPU-s); peak RSS {result['peak_rss_mb']:,.0f} MB; "
                  f"throughput {result['throughput_rps']:.3f} of {result['offered_rate_rps']:.3f} req/s offered, "
                  f"SLO attainment {result['slo_attainment']:.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args),
                               "runs": results}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
