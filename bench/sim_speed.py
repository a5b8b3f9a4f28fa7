"""Simulator speed: replay the full Azure 2023 conversation trace with Sarathi-Serve on Llama-2-7B / A100.

Reports simulated iterations and requests per wall-clock second of the engine loop, the time from process start
to the first iteration, and the time spent writing metrics. Needs ../shared/data (the trace).

    .venv/bin/python bench/sim_speed.py [--repeats 3] [--scheduler sarathi] [--workload azure_conv] [OVERRIDES...]
    .venv/bin/python bench/sim_speed.py --results-mode stream   # the engine loop with results.mode=stream's sink

``--results-mode stream|summary`` runs the loop with the bounded-memory sink of ``results.mode``
(``runtime.core.result_stream``; rows and iteration log written in chunks to a temporary folder), so its cost
is inside the timed loop; the metrics are then the sink's ``finish``.
"""
from __future__ import annotations

import time

_PROCESS_T0 = time.perf_counter()  # before the heavy imports: start-up includes them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402

from runtime.cli import CONF_DIR, build  # noqa: E402
from runtime.core.clock import VirtualClock  # noqa: E402
from runtime.core.engine import Engine  # noqa: E402
from runtime.core.metrics import requests_frame, summarise  # noqa: E402
from runtime.core.result_stream import open_results  # noqa: E402


def one_run(overrides: list[str], results_mode: str = "full") -> dict:
    t0 = time.perf_counter()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=["progress=false", *overrides])
    parts = build(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        sink, log = open_results(results_mode, Path(tmp))
        t_built = time.perf_counter()
        cpu_built = time.process_time()
        engine = Engine(scheduler=parts["scheduler"], executor=parts["executor"], workload=parts["workload"],
                        clock=VirtualClock(), results=sink, iteration_log=log)
        result = engine.run()
        t_ran = time.perf_counter()
        cpu_loop_s = time.process_time() - cpu_built
        if sink is None:
            frame = requests_frame(result.requests)
            summary = summarise(frame, result.requests)
        else:
            frame, gaps = sink.finish()
            log.finish()
            summary = summarise(frame, warmup_s=0.0, tbt_gaps=gaps)
    t_metrics = time.perf_counter()
    loop_s = t_ran - t_built
    num_requests = len(frame)
    return {
        "num_requests": num_requests,
        "num_iterations": len(result.iterations),
        "build_s": t_built - t0,
        "loop_s": loop_s,
        "metrics_s": t_metrics - t_ran,
        "iterations_per_s": len(result.iterations) / loop_s,
        # CPU seconds of this process: insensitive to time stolen by other tenants of a shared machine.
        "iterations_per_cpu_s": len(result.iterations) / cpu_loop_s,
        "requests_per_s": num_requests / loop_s,
        "first_step_after_build_s": result.time_to_first_step_s,
        "simulated_s": result.end_time,
        "slo_attainment": summary["slo_attainment"],
        "throughput_rps": summary["throughput_rps"],
        "token_budget": parts["scheduler"].token_budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", default="sarathi")
    parser.add_argument("--workload", default="azure_conv")
    parser.add_argument("--out", default="bench/results/sim_speed.json")
    parser.add_argument("--results-mode", default="full", choices=["full", "stream", "summary"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [f"scheduler={args.scheduler}", f"workload={args.workload}", "model=llama2_7b", "hardware=a100_80g",
                 *args.overrides]
    runs = []
    for i in range(args.repeats):
        run = one_run(overrides, args.results_mode)
        if i == 0:
            # Start-up: process start (imports included) to the first simulated iteration.
            run["startup_to_first_iteration_s"] = (time.perf_counter() - _PROCESS_T0) - (
                run["loop_s"] + run["metrics_s"] - run["first_step_after_build_s"])
        runs.append(run)
        print(f"run {i}: {run['num_iterations']:,} iterations, {run['num_requests']:,} requests in {run['loop_s']:.2f} s "
              f"-> {run['iterations_per_s']:,.0f} it/s, {run['requests_per_s']:,.0f} req/s "
              f"({run['iterations_per_cpu_s']:,.0f} it per CPU-second)")
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    report = {
        "command": "python bench/sim_speed.py " + " ".join(os.sys.argv[1:]),
        "overrides": overrides,
        "results_mode": args.results_mode,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "iterations_per_s_median": med("iterations_per_s"),
        "requests_per_s_median": med("requests_per_s"),
        "iterations_per_cpu_s_median": med("iterations_per_cpu_s"),
        "startup_to_first_iteration_s": runs[0]["startup_to_first_iteration_s"],
        "build_s_median": med("build_s"),
        "metrics_s_median": med("metrics_s"),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmedian of {len(runs)}: {report['iterations_per_s_median']:,.0f} iterations/s "
          f"({report['iterations_per_cpu_s_median']:,.0f} per CPU-second), "
          f"{report['requests_per_s_median']:,.0f} requests/s; start-up to first iteration "
          f"{report['startup_to_first_iteration_s']:.2f} s; metrics {report['metrics_s_median']:.2f} s")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
