"""The profiler's served calibration: every step of live runs of a workload, as rows to fit the cost model on.

The grid (``runtime.live.compositions``) times settled steps, but in serving a step often follows a differently
shaped one and is then slower (``runtime.live.timing``). So with ``profile.serve_rates`` set, ``accelgen-profile``
also runs ``serve_workload`` live (``serve_requests`` requests, seed ``serve_seed``, every scheduler of
``serve_schedulers`` at every rate of ``serve_rates``, the schedulers planning with the grid fit) and records every
step's composition and ``step_time`` (``runtime.core.recording``; steps with swaps or recomputes are left out: they
have their own models). Each row also carries ``since_prefill``, how many decode-only steps separate it from the
last step with prefill tokens, which the settling factor (``runtime.sim.settle``) is fitted on.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from runtime.core.errors import ConfigError
from runtime.live.compositions import feature_columns, kind_of
from runtime.live.heap import frozen_heap
from runtime.sim.settle import steps_since_prefill

CONF_PATH = Path(__file__).resolve().parents[2] / "conf"


def group_option(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` as a node (the served calibration swaps scheduler and workload in)."""
    node = OmegaConf.load(CONF_PATH / group / f"{name}.yaml")
    if "defaults" in node:
        raise ConfigError(f"profile: conf/{group}/{name}.yaml has a defaults list; pick a self-contained option")
    return node


def serve_steps(cfg: DictConfig, opts: dict, cost_model: dict, progress: bool,
                between=None) -> pd.DataFrame:
    """Every step of live runs of ``serve_workload`` at each of ``serve_rates`` with each of ``serve_schedulers``:
    its composition features and measured ``step_time`` (module docstring).

    The runs are ordinary live runs (``runtime.cli.build``, the engine, a wall clock skipping idle gaps) whose
    schedulers plan with ``cost_model`` (the grid fit), on the seed ``serve_seed``. ``between()`` is called after
    each run (the speed probe)."""
    from runtime.cli import build
    from runtime.core.clock import WallClock
    from runtime.core.engine import Engine
    from runtime.core.recording import RecordingExecutor

    rows = []
    runs = [(s, float(r)) for s in opts["serve_schedulers"] for r in opts["serve_rates"]]
    for scheduler, rate in tqdm(runs, desc="served calibration", unit="run", disable=not progress):
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.scheduler = group_option("scheduler", scheduler)
            run_cfg.workload = group_option("workload", opts["serve_workload"])
            run_cfg.workload.num_requests = int(opts["serve_requests"])
            run_cfg.workload.arrival.rate = rate
            run_cfg.seed = int(opts["serve_seed"])
            run_cfg.cost_model = cost_model
            run_cfg.progress = False
            run_cfg.pop("profile", None)  # the profiler's own options are not part of a run's config
        parts = build(run_cfg)
        recorder = RecordingExecutor(parts["executor"])
        with frozen_heap():  # as cli.run does for a live run: no full collection inside a step
            Engine(scheduler=parts["scheduler"], executor=recorder, workload=parts["workload"],
                   clock=WallClock(skip_idle=True)).run()
        if between is not None:
            between()
        since = steps_since_prefill([bool(row["chunks"]) for row in recorder.rows])
        for step, row in enumerate(recorder.rows):
            if row["swap_time"] or row["recompute_tokens"]:
                continue  # swaps and recomputes have their own models (runtime.sim.transfer, CacheOPT)
            rows.append(dict(id=f"{scheduler}@{rate:g}#{step}", kind=kind_of(row["chunks"], row["decodes"]),
                             split="serve", composition=f"{scheduler} {rate:g} req/s step {step}",
                             **feature_columns(row["chunks"], row["decodes"]), time_s=row["step_time"],
                             since_prefill=int(since[step]), chunks=row["chunks"], decodes=row["decodes"]))
    return pd.DataFrame(rows)
