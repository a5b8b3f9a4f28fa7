"""Live steps held up by Python's garbage collector, with the start-up heap frozen (as shipped) and without.

    .venv/bin/python bench/live_gc_stalls.py                  # llama_15m; sarathi, vllm at 4 and 16 req/s, 600 requests
    .venv/bin/python bench/live_gc_stalls.py --quick          # smoke: tiny model, one pair, 40 requests

Runs each scheduler/rate pair live through ``runtime.cli.run`` (what ``accelgen runtime=live`` runs), twice in one
process: first every pair ``unfrozen`` (``runtime.live.heap.frozen_heap`` replaced by a no-op), then every pair
``frozen``, as shipped. Every collection of the cyclic collector is recorded
(``gc.callbacks``: generation, pause, whether it fell inside a step) and every step's time
(``RecordingExecutor``). A full (generation-2) collection walks every object of the process, ~363,000 in a live
run, so when one lands inside the engine loop the tokens wait 100–200 ms, 30–60 decode steps' worth.

Outputs in ``--out`` (default ``bench/results/live_gc_stalls``): ``runs.csv`` (one row per run) and ``table.md``.
Columns: steps; collections per generation from the first step to the last token (the engine loop, where a pause
delays tokens whether a step or the scheduler is running), of which full ones inside a step, and the longest
pause; decode-only steps over ``--stall-ms`` (default 50 ms) and the slowest; the 99.9th percentile of the
decode-only steps of at most two sequences. Several pairs run in one process, as in ``bench/sim_vs_live.py``: when
a full collection falls depends on everything the process allocated before.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import sim_vs_live  # noqa: E402  (its run composition and its executor patching)
from accelgen_vs_baselines import markdown_table  # noqa: E402
from runtime import cli  # noqa: E402
from runtime.core.recording import RecordingExecutor  # noqa: E402


class CollectorLog:
    """Each collection's generation, pause, and whether it fell inside the engine loop (from the first step on)
    and inside a step (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.in_run = self.in_step = False
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.rows.append(dict(generation=info["generation"], pause_s=time.perf_counter() - self._start,
                                  in_run=self.in_run, in_step=self.in_step))


class StepMarker(RecordingExecutor):
    """Records every step (``RecordingExecutor``) and tells the collector log when one runs."""

    def __init__(self, inner, log: CollectorLog) -> None:
        super().__init__(inner)
        self.log = log

    def execute(self, output):
        self.log.in_run = self.log.in_step = True
        try:
            return super().execute(output)
        finally:
            self.log.in_step = False


def run_once(args, scheduler: str, rate: float, frozen: bool) -> dict:
    log = CollectorLog()
    cfg = sim_vs_live.compose_cfg(sim_vs_live.common_overrides(args, scheduler, rate) + ["runtime=live"])
    original = cli.frozen_heap
    if not frozen:
        cli.frozen_heap = contextlib.nullcontext
    gc.callbacks.append(log)
    try:
        with sim_vs_live.wrapped_executors(lambda ex: StepMarker(ex, log)) as recorders:
            cli.run(cfg, None)
            log.in_run = False  # what follows (the summary, the outputs) is after the last token
    finally:
        gc.callbacks.remove(log)
        cli.frozen_heap = original
    rows = recorders[0].rows
    times = np.array([r["step_time"] for r in rows])
    decode_only = np.array([not r["chunks"] for r in rows])
    small = np.array([r["step_time"] for r in rows if not r["chunks"] and len(r["decodes"]) <= 2])
    collections = pd.DataFrame(log.rows, columns=["generation", "pause_s", "in_run", "in_step"])
    during = collections[collections.in_run]
    out = dict(scheduler=scheduler, rate=rate, heap="frozen" if frozen else "unfrozen", steps=len(rows))
    for g in (0, 1, 2):
        out[f"gen{g}_in_run"] = int((during.generation == g).sum())
    out["gen2_in_steps"] = int(((during.generation == 2) & during.in_step).sum())
    out["longest_pause_ms"] = float(during.pause_s.max() * 1e3) if len(during) else 0.0
    out[f"decode_steps_over_{args.stall_ms:g}ms"] = int((times[decode_only] > args.stall_ms / 1e3).sum())
    out["slowest_decode_step_ms"] = float(times[decode_only].max() * 1e3) if decode_only.any() else float("nan")
    out["small_decode_p999_ms"] = float(np.quantile(small, 0.999) * 1e3) if len(small) else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, one pair, 40 requests")
    parser.add_argument("--model", default="llama_15m")
    parser.add_argument("--schedulers", nargs="+", default=["sarathi", "vllm"])
    parser.add_argument("--rates", nargs="+", type=float, default=[4.0, 16.0])
    parser.add_argument("--num-requests", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-ms", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live_gc_stalls")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.schedulers, args.rates, args.num_requests = "tiny", ["sarathi"], [50.0], 40
    # What sim_vs_live.common_overrides reads: its cost-model option and no extra overrides.
    args.cost_model, args.cost_model_file, args.override = f"{args.model}_cpu", None, []
    rows = []
    # Every unfrozen run first: a frozen run starts with a full collection, which would leave the next run
    # nothing to collect (a process's long-lived objects pile up over several runs, as in bench/sim_vs_live.py).
    for frozen in (False, True):
        for scheduler in args.schedulers:
            for rate in args.rates:
                rows.append(run_once(args, scheduler, rate, frozen))
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "runs.csv", index=False)
    table = markdown_table(frame.round(1))
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
