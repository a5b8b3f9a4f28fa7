"""Profile-fitted simulation against the live runtime on the same workload: is the simulator a model of the machine?

For every scheduler and arrival rate, the same experiment runs twice through ``runtime.cli.run`` (so each is
exactly what ``accelgen <overrides>`` computes):

* **live**: ``runtime=live model=<m> workload=live_small``: a real forward pass per step on this machine, wall
  clock. The executor is wrapped so every step's composition (prefill chunks ``(c, q)``, decode contexts) and its
  measured ``step_time`` are recorded, with the host time the engine spends between two steps (scheduling,
  bookkeeping: the *engine gap*, which no cost model fitted on ``execute`` contains).
* **sim**: ``runtime=sim hardware=cpu cost_model=<m>_cpu`` (the ``accelgen-profile`` fit), with the live run's KV
  block counts (``kv.num_blocks``, ``kv.swap_blocks``), so both manage the same cache.

Compared: per-iteration latency, by replaying every recorded live step through the cost model
(``predict_deterministic`` of the exact composition; APE = |T̂ − t| / t, averaged: MAPE, also per kind: decode-only,
prefill-only, mixed), and run-level TTFT p50/p99, TBT p50/p99 (pooled token gaps) and goodput from each run's
summary (relative difference sim vs live). Targets: MAPE < 10%, every run-level metric within 15%. Also each run's
speed level (median of measured / predicted over its steps) and the MAPE at that level (``with_level``): a level
that moves between runs is the machine's speed moving, the MAPE at the level is the cost model's shape error.
On a shared CPU, ``--threads 1`` (with a profile made with ``runtime.threads=1``) gives steadier step times than
two threads on two cores (BENCHMARKS.md, "Simulator fidelity against the live runtime").

**Speed probe** (``runtime.live.probe``; ``--no-probe`` skips it). Right before and right after each live run the
bench times a fixed set of compositions on a separate live executor and divides by the cost model's predictions:
the probe level, the machine's speed at that moment, measured outside the run. ``accelgen-profile`` takes the same
probe while profiling (``fit_error.probe_level``), so the *probe factor*, the geometric mean of the two levels over
the profile's, is the machine's speed now against during the profile. A third run, ``sim@probe``, is the simulation
with every step time multiplied by the probe factor (schedulers and SLOs keep the fitted cost model, as in the live
run). Against the live run it gives the replay MAPE and the run-level metrics
with the machine's speed taken out by a measurement that is not fitted to the run (unlike ``with_level``).
Diagnostic columns only: the targets are judged on the plain simulation.

    .venv/bin/python bench/sim_vs_live.py                # llama_15m, sarathi/accelgen/vllm, 3 rates, 600 requests
    .venv/bin/python bench/sim_vs_live.py --rates 2 4 --schedulers sarathi vllm --num-requests 100
    .venv/bin/python bench/sim_vs_live.py --quick --out /tmp/svl      # smoke: tiny model, seconds

Needs ``conf/cost_model/<model>_cpu.yaml`` (``accelgen-profile model=<model>``). Outputs in ``--out`` (default
``bench/results/sim_vs_live``): ``runs.csv`` (one row per run), ``comparison.csv`` (one row per scheduler and rate:
live, sim and relative difference of each metric, iteration MAPE, engine gap), ``iterations.parquet`` (every live
step: composition features, measured and predicted time), ``probes.csv`` (every probe composition before and
after each live run: measured, predicted, their ratio), ``meta.json`` (command, machine, CPU used by other processes
during the run, the cost model used), ``table.md``; the plot (``--plot``, default
``docs/sim_vs_live.png``) and a BENCHMARKS.md-ready section (``--section``, default
``bench/results/sim_vs_live.md``). With a non-default ``--out``, the plot and section default into it.
``--render-only`` rebuilds table, plot and section from ``--out`` without running anything
(``bench/sim_vs_live_report.py`` renders them).

``--resimulate DIR`` runs no model: it takes the live runs stored in ``DIR`` (an earlier ``--out``), replays their
steps through the cost model given now and simulates each pair again, so a change of cost model or fit is judged
on the very same live runs (the live runtime does not repeat itself to the targets' precision on a shared CPU).
``--sensitivity F`` adds each simulated metric's elasticity to the step times (simulations with every step
``1 ± F`` times as long): how far a metric moves per unit of step-time error, which near saturation is several.

    .venv/bin/python bench/sim_vs_live.py --resimulate bench/results/sim_vs_live --cost-model-file NEW.yaml \
        --out /tmp/resim --sensitivity 0.03
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from tqdm.auto import tqdm

import runtime.cli as cli
from runtime.core.outputs import StepResult
from runtime.core.recording import RecordingExecutor
from runtime.core.run_log import atomic_write, write_json
from runtime.live.compositions import kind_of
from runtime.live.device import cpu_name
from runtime.live.probe import SpeedProbe
from runtime.sim.settle import steps_since_prefill

os.environ.setdefault("WANDB_MODE", "disabled")
BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from sim_vs_live_report import (DEFAULT_OUT, KINDS, MAPE_TARGET, METRICS, REPO_ROOT, render,  # noqa: E402
                                scaled_mape, with_level, within_tolerance)

DEFAULT_PLOT = REPO_ROOT / "docs" / "sim_vs_live.png"
DEFAULT_SECTION = REPO_ROOT / "bench" / "results" / "sim_vs_live.md"
# 600 requests: the p99s rest on six requests each (with 200, on two; BENCHMARKS.md, run K against H).
FULL = dict(model="llama_15m", schedulers=["sarathi", "accelgen", "vllm"], rates=[4.0, 16.0, 32.0], num_requests=600)
QUICK = dict(model="tiny", schedulers=["sarathi", "vllm"], rates=[20.0], num_requests=12)
EXTRA = ["slo_attainment", "throughput_rps", "jct_mean_s", "num_iterations", "num_preemptions", "duration_s",
         "kv_num_blocks", "kv_swap_blocks", "token_budget", "wall_s", "device"]


class ScaledExecutor:
    """A simulated executor whose compute time is multiplied by ``factor`` (swap transfers are left as they are)."""

    def __init__(self, inner, factor: float) -> None:
        self.inner, self.factor = inner, factor

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, output) -> StepResult:
        r = self.inner.execute(output)
        return dataclasses.replace(r, step_time=(r.step_time - r.swap_time) * self.factor + r.swap_time,
                                   recompute_time=r.recompute_time * self.factor)


@contextmanager
def wrapped_executors(wrap):
    """Patch ``runtime.cli.build`` so every run's executor is ``wrap(executor)``; yields the wrappers made."""
    made: list = []
    original = cli.build

    def build(cfg, **kwargs):
        parts = original(cfg, **kwargs)
        parts["executor"] = wrap(parts["executor"])
        made.append(parts["executor"])
        return parts

    cli.build = build
    try:
        yield made
    finally:
        cli.build = original


def scaled_steps(factor: float):
    """Simulated steps take ``factor`` times the cost model's time; schedulers and SLO classes keep the cost model
    as fitted (they planned with it in the live run too)."""
    return wrapped_executors(lambda executor: ScaledExecutor(executor, factor))


def recording():
    """Each run's executor a ``RecordingExecutor``; yields the recorders."""
    return wrapped_executors(RecordingExecutor)


def compose_cfg(overrides: list[str], progress: bool = False, cost_model_file: Path | None = None):
    with initialize_config_dir(version_base="1.3", config_dir=cli.CONF_DIR):
        cfg = compose(config_name="config", overrides=[f"progress={str(progress).lower()}", *overrides])
    if cost_model_file is not None:
        with open_dict(cfg):
            cfg.cost_model = OmegaConf.load(cost_model_file)
    return cfg


def cost_model_node(args):
    """The cost model both runs use: ``--cost-model-file``, or the ``--cost-model`` option (for ``args.model``)."""
    if args.cost_model_file is not None:
        return compose_cfg([f"model={args.model}"], cost_model_file=args.cost_model_file).cost_model
    return compose_cfg([f"model={args.model}", f"cost_model={args.cost_model}"]).cost_model


def replay(rows: list[dict], cost_model) -> pd.DataFrame:
    """Every recorded live step with its features and the cost model's prediction of its exact composition, times
    its settling factor where the cost model has one (``settled``)."""
    frame = pd.DataFrame([
        dict(step=i, kind=kind_of(r["chunks"], r["decodes"]), num_prefill_tokens=sum(c for c, _ in r["chunks"]),
             num_chunks=len(r["chunks"]), num_decodes=len(r["decodes"]),
             prefill_attn_work=float(sum(c * (q + c / 2) for c, q in r["chunks"])),
             sum_decode_ctx=int(sum(r["decodes"])), max_decode_ctx=max(r["decodes"], default=0),
             num_seqs=len(r["chunks"]) + len(r["decodes"]), measured_s=r["step_time"], swap_s=r["swap_time"],
             recompute_tokens=r["recompute_tokens"], gap_s=r["gap_s"],
             predicted_s=cost_model.predict_deterministic(r["chunks"], r["decodes"]))
        for i, r in enumerate(rows)])
    return settled(frame, cost_model)


def replay_stored(iters: pd.DataFrame, cost_model) -> pd.DataFrame:
    """Stored live steps (``iterations.parquet``) replayed through another linear cost model, which needs only the
    per-step features stored there; the settling factor follows each run's own step order."""
    out = []
    for _, g in iters.groupby(["scheduler", "rate"], sort=False):
        g = g.sort_values("step").copy()
        g["predicted_s"] = [
            cost_model.predict_from_sums(num_prefill_tokens=int(r.num_prefill_tokens),
                                         prefill_attn_work=float(r.prefill_attn_work), num_decodes=int(r.num_decodes),
                                         sum_decode_ctx=int(r.sum_decode_ctx), num_seqs=int(r.num_seqs))
            for r in g.itertuples()]
        out.append(settled(g, cost_model))
    return pd.concat(out, ignore_index=True)


def settled(steps: pd.DataFrame, cost_model) -> pd.DataFrame:
    """One run's steps, in order, with ``since_prefill`` (``k``), ``predicted_s`` times the settling factor of every
    decode-only step (``runtime.sim.settle``, as the simulator applies it; 1 where the cost model has none) and
    ``ape_pct``."""
    since = steps_since_prefill((steps.num_prefill_tokens > 0).tolist())
    decode_only = (steps.num_prefill_tokens == 0).to_numpy() & (steps.num_decodes > 0).to_numpy()
    settle = getattr(cost_model, "settle_factor", lambda k: 1.0)
    steps = steps.assign(since_prefill=since)
    steps["predicted_s"] = steps.predicted_s.to_numpy() * np.array(
        [settle(int(k)) if d else 1.0 for k, d in zip(since, decode_only)])
    steps["ape_pct"] = (steps.predicted_s - steps.measured_s).abs() / steps.measured_s * 100
    return steps


def resimulate(args, source: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The live runs stored in ``source`` against new simulations with ``args``' cost model: no model runs.

    The workload (model, requests, seed, schedulers, rates) is the stored run's; returns runs, comparison and the
    re-replayed steps. The probe columns are dropped (they belong to the stored cost model)."""
    import json

    meta = json.loads((source / "meta.json").read_text())
    for key in ("model", "num_requests", "seed"):
        setattr(args, key, meta[key])
    stored = pd.read_csv(source / "runs.csv")
    live_rows = stored[stored.runtime == "live"]
    cost_model = instantiate(cost_model_node(args)).deterministic()
    iters = replay_stored(pd.read_parquet(source / "iterations.parquet"), cost_model)
    runs, comps = [], []
    for live in tqdm(live_rows.to_dict("records"), desc="re-simulate", unit="pair", disable=args.no_progress):
        scheduler, rate = live["scheduler"], float(live["rate"])
        sim = cli.run(compose_cfg([*common_overrides(args, scheduler, rate), *sim_overrides(live)],
                                  cost_model_file=args.cost_model_file), None)
        steps = iters[(iters.scheduler == scheduler) & (iters.rate == rate)]
        runs += [live, dict(scheduler=scheduler, rate=rate, runtime="sim",
                            **{k: sim.get(k) for k, _ in METRICS}, **{k: sim.get(k) for k in EXTRA})]
        comps.append(dict(scheduler=scheduler, rate=rate, **compare(live, sim, steps),
                          **(elasticities(args, scheduler, rate, live, sim) if args.sensitivity else {})))
    return pd.DataFrame(runs), with_level(pd.DataFrame(comps), iters), iters


def _rel(sim, live) -> float:
    if sim is None or live is None or not np.isfinite([sim, live]).all() or live == 0:
        return math.nan
    return (sim - live) / live


def compare(live: dict, sim: dict, steps: pd.DataFrame, probed: dict | None = None) -> dict:
    row = dict(iter_mape_pct=float(steps.ape_pct.mean()), iter_ape_p90_pct=float(np.percentile(steps.ape_pct, 90)),
               iter_bias_pct=float(((steps.predicted_s - steps.measured_s) / steps.measured_s).mean() * 100),
               busy_ratio=float(steps.predicted_s.sum() / steps.measured_s.sum()),
               num_live_steps=len(steps), mean_step_ms=float(steps.measured_s.mean() * 1e3),
               engine_gap_median_ms=float(np.nanmedian(steps.gap_s) * 1e3) if steps.gap_s.notna().any() else math.nan,
               engine_gap_share=float(np.nansum(steps.gap_s) / steps.measured_s.sum()))
    for kind in KINDS:
        sub = steps[steps.kind == kind]
        row[f"iter_mape_{kind}_pct"] = float(sub.ape_pct.mean()) if len(sub) else math.nan
        row[f"steps_{kind}"] = len(sub)
    for key, _ in METRICS:
        row[f"{key}_live"], row[f"{key}_sim"] = live.get(key), sim.get(key)
        row[f"{key}_rel"] = _rel(sim.get(key), live.get(key))
    row["iter_ok"] = row["iter_mape_pct"] < MAPE_TARGET
    rels = [row[f"{k}_rel"] for k, _ in METRICS]
    row["metrics_ok"] = within_tolerance(rels)
    if probed:
        factor = probed["probe_factor"]
        row.update({k: probed[k] for k in ("probe_level_before", "probe_level_after", "probe_level", "probe_reference",
                                           "probe_factor", "probe_wall_s")})
        row["probe_mape_pct"] = scaled_mape(steps, factor)
        for key, _ in METRICS:
            row[f"{key}_sim_probe"] = probed["sim_probe"].get(key)
            row[f"{key}_rel_probe"] = _rel(probed["sim_probe"].get(key), live.get(key))
        row["probe_iter_ok"] = row["probe_mape_pct"] < MAPE_TARGET
        row["probe_metrics_ok"] = within_tolerance([row[f"{k}_rel_probe"] for k, _ in METRICS])
    return row


def common_overrides(args, scheduler: str, rate: float) -> list[str]:
    """The overrides the live run and the simulation share."""
    return [f"model={args.model}", "workload=live_small", f"scheduler={scheduler}",
            f"workload.arrival.rate={rate!r}", f"workload.num_requests={args.num_requests}", f"seed={args.seed}",
            *([f"cost_model={args.cost_model}"] if args.cost_model_file is None else []), *args.override]


def sim_overrides(live: dict) -> list[str]:
    """The simulation's own overrides: the cost model's executor, and the live run's KV block counts."""
    return ["runtime=sim", "hardware=cpu", f"kv.num_blocks={int(live['kv_num_blocks'])}",
            f"kv.swap_blocks={int(live['kv_swap_blocks'])}"]


def run_pair(args, scheduler: str, rate: float, keep: Path | None, progress: bool,
             probe: SpeedProbe | None = None) -> tuple[dict, dict, pd.DataFrame, dict]:
    """The live run, the simulation and the replayed steps; with ``probe``, also a dict of the probe's levels
    before and after the live run (``probe_level_before``, ``probe_level_after``), their geometric mean
    (``probe_level``), that over the profile's own probe level (``probe_factor``: the machine's speed now against
    during the profile; the level itself when the cost model has none) and the summary of the simulation with its
    step times scaled by that factor (``sim_probe``); empty without a probe."""
    common = common_overrides(args, scheduler, rate)
    live_over = ["runtime=live", *([f"runtime.threads={args.threads}"] if args.threads else [])]
    cfg = compose_cfg([*common, *live_over], progress=progress, cost_model_file=args.cost_model_file)
    cost_model = instantiate(cfg.cost_model).deterministic()
    # The same probe taken during the profile (fit_error.probe_level): the fit's own residual on the probe's batches.
    reference = float((getattr(cost_model, "fit_error", None) or {}).get("probe_level") or 1.0)
    before = probe(cost_model) if probe is not None else None
    with recording() as recorders:
        live = cli.run(cfg, keep / f"{scheduler}_{rate:g}_live" if keep else None)
    after = probe(cost_model) if probe is not None else None
    steps = replay(recorders[0].rows, cost_model)
    sim_over = sim_overrides(live)
    sim = cli.run(compose_cfg([*common, *sim_over], cost_model_file=args.cost_model_file),
                  keep / f"{scheduler}_{rate:g}_sim" if keep else None)
    probed: dict = {}
    if before is not None:
        level = math.sqrt(before.level * after.level)
        with scaled_steps(level / reference):
            sim_probe = cli.run(compose_cfg([*common, *sim_over], cost_model_file=args.cost_model_file),
                                keep / f"{scheduler}_{rate:g}_sim_probe" if keep else None)
        probed = dict(probe_level_before=before.level, probe_level_after=after.level, probe_level=level,
                      probe_reference=reference, probe_factor=level / reference,
                      probe_wall_s=before.wall_s + after.wall_s, sim_probe=sim_probe,
                      probes=[dict(when=when, composition=label, measured_ms=m * 1e3, predicted_ms=p * 1e3,
                                   ratio=m / p)
                              for when, result in (("before", before), ("after", after))
                              for label, m, p in zip([c.label() for c in probe.comps], result.measured_s,
                                                     result.predicted_s)])
    return live, sim, steps, probed


def elasticities(args, scheduler: str, rate: float, live: dict, sim: dict) -> dict:
    """How much each simulated metric moves per unit of step-time error: the simulation with every step ``1 ± f``
    times as long (``f = args.sensitivity``; schedulers keep the fitted model), as
    ``(m(1 + f) − m(1 − f)) / (2f · m(1))`` with ``m(1)`` the plain simulation ``sim``. Near saturation a small
    step error becomes a large metric error, so a metric with elasticity ``e`` can only be within 15 % where the
    step times are within about ``15 % / e``."""
    f, out = args.sensitivity, {}
    summaries = {1.0: sim}
    for scale in (1 - f, 1 + f):
        with scaled_steps(scale):
            summaries[scale] = cli.run(compose_cfg([*common_overrides(args, scheduler, rate), *sim_overrides(live)],
                                                   cost_model_file=args.cost_model_file), None)
    for key, _ in METRICS:
        lo, mid, hi = (summaries[x].get(key) for x in (1 - f, 1.0, 1 + f))
        ok = all(v is not None and np.isfinite(v) for v in (lo, mid, hi)) and mid != 0
        out[f"{key}_elasticity"] = (hi - lo) / (2 * f * mid) if ok else math.nan
    return out


def cpu_seconds() -> tuple[float, float]:
    """(CPU-seconds every process on the machine has used, CPU-seconds this process has used) since boot / start."""
    busy = math.nan
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    own = os.times()
    return busy, own.user + own.system


def machine() -> dict:
    import torch

    return dict(cpu=cpu_name(), cores=os.cpu_count(),
                mem_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
                python=platform.python_version(), torch=torch.__version__, default_threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 schedulers, 1 rate, 12 requests")
    parser.add_argument("--model")
    parser.add_argument("--cost-model", help="cost_model option for both runs (default <model>_cpu)")
    parser.add_argument("--cost-model-file", type=Path,
                        help="a cost-model YAML to use instead of the conf/cost_model option (e.g. a profile written "
                             "with profile.out=...); the option name is then only a label")
    parser.add_argument("--schedulers", nargs="+")
    parser.add_argument("--rates", nargs="+", type=float)
    parser.add_argument("--num-requests", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="runtime.threads of the live runs (default: torch's)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--section", type=Path)
    parser.add_argument("--keep-runs", action="store_true", help="write each run's outputs under <out>/runs/")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild table.md, the plot and the section from --out without running anything")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the speed probe before and after each live run, and the sim@probe runs")
    parser.add_argument("--resimulate", type=Path, metavar="DIR",
                        help="re-simulate the live runs stored in DIR (an earlier --out) with this cost model and "
                             "compare: no live run, no probe; writes to --out")
    parser.add_argument("--sensitivity", type=float, default=0.0, metavar="F",
                        help="also simulate each pair with every step 1±F times as long and report each metric's "
                             "elasticity to the step times (e.g. 0.03; 0, the default, skips it)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0.0 <= args.sensitivity < 1.0:
        parser.error("--sensitivity must be in [0, 1)")
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cost_model = args.cost_model or f"{args.model}_cpu"
    default_out = args.out.resolve() == DEFAULT_OUT.resolve()
    plot_path = args.plot or (DEFAULT_PLOT if default_out else args.out / "sim_vs_live.png")
    section_path = args.section or (DEFAULT_SECTION if default_out else args.out / "sim_vs_live.md")
    if args.render_only:
        print(render(args.out, plot_path, section_path))
        return 0
    if args.cost_model_file is None and not (Path(cli.CONF_DIR) / "cost_model" / f"{args.cost_model}.yaml").exists():
        print(f"sim_vs_live: conf/cost_model/{args.cost_model}.yaml is missing; run "
              f"`accelgen-profile model={args.model}` first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    keep = args.out / "runs" if args.keep_runs else None
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    busy0, own0 = cpu_seconds()
    t0 = time.perf_counter()

    if args.resimulate is not None:
        return _main_resimulate(args, argv, started, t0, plot_path, section_path)
    probe = None
    if not args.no_probe:
        probe_cfg = compose_cfg([f"model={args.model}", "runtime=live", f"seed={args.seed}",
                                 *([f"cost_model={args.cost_model}"] if args.cost_model_file is None else []),
                                 *([f"runtime.threads={args.threads}"] if args.threads else []), *args.override],
                                cost_model_file=args.cost_model_file)
        probe = SpeedProbe(probe_cfg, cli.instantiate_node(probe_cfg.model), seed=args.seed)
    runs, comps, iters, probes = [], [], [], []
    pairs = [(s, r) for s in args.schedulers for r in args.rates]
    with tqdm(total=len(pairs), desc="sim vs live", unit="pair", dynamic_ncols=True, disable=args.no_progress) as bar:
        for scheduler, rate in pairs:
            bar.set_postfix_str(f"{scheduler} @ {rate:g}/s")
            live, sim, steps, probed = run_pair(args, scheduler, rate, keep, progress=not args.no_progress,
                                               probe=probe)
            for name, summary in (("live", live), ("sim", sim), ("sim@probe", probed.get("sim_probe"))):
                if summary is None:
                    continue
                row = dict(scheduler=scheduler, rate=rate, runtime=name)
                row.update({k: summary.get(k) for k, _ in METRICS})
                row.update({k: summary.get(k) for k in EXTRA})
                runs.append(row)
            comps.append(dict(scheduler=scheduler, rate=rate, **compare(live, sim, steps, probed),
                              **(elasticities(args, scheduler, rate, live, sim) if args.sensitivity else {})))
            probes += [dict(scheduler=scheduler, rate=rate, **row) for row in probed.get("probes", [])]
            iters.append(steps.assign(scheduler=scheduler, rate=rate))
            bar.update(1)
    iters_df = pd.concat(iters, ignore_index=True)
    iters_df = iters_df[["scheduler", "rate", *[c for c in iters_df.columns if c not in ("scheduler", "rate")]]]
    runs_df, comp_df = pd.DataFrame(runs), with_level(pd.DataFrame(comps), iters_df)
    write_tables(args.out, runs_df, comp_df, iters_df)
    if probes:
        atomic_write(args.out / "probes.csv", lambda p: pd.DataFrame(probes).to_csv(p, index=False))
    wall_s = time.perf_counter() - t0
    busy1, own1 = cpu_seconds()
    meta = dict(started=started, wall_s=wall_s, other_cores=((busy1 - busy0) - (own1 - own0)) / wall_s,
                own_cores=(own1 - own0) / wall_s,
                command=command_line(argv),
                model=args.model, cost_model_name=args.cost_model, num_requests=args.num_requests,
                cost_model=OmegaConf.to_container(cost_model_node(args), resolve=True),
                cost_model_file=str(args.cost_model_file) if args.cost_model_file else None,
                seed=args.seed, threads=args.threads, schedulers=args.schedulers, rates=args.rates,
                sensitivity=args.sensitivity, machine=machine())
    write_json(args.out / "meta.json", meta)
    table = render(args.out, plot_path, section_path)
    print(table)
    print(f"replay MAPE over {len(iters_df)} live steps: {iters_df.ape_pct.mean():.1f} %; wrote {args.out}, "
          f"{plot_path}, {section_path}")
    return 0


def write_tables(out: Path, runs: pd.DataFrame, comp: pd.DataFrame, iters: pd.DataFrame) -> None:
    """``runs.csv``, ``comparison.csv`` and ``iterations.parquet`` in ``out``, each written atomically."""
    atomic_write(out / "runs.csv", lambda p: runs.to_csv(p, index=False))
    atomic_write(out / "comparison.csv", lambda p: comp.to_csv(p, index=False))
    atomic_write(out / "iterations.parquet", lambda p: iters.to_parquet(p, index=False))


def command_line(argv: list[str] | None) -> str:
    """How this bench was invoked, for ``meta.json`` and the section."""
    return " ".join([".venv/bin/python bench/sim_vs_live.py", *(argv if argv is not None else sys.argv[1:])])


def _main_resimulate(args, argv, started: str, t0: float, plot_path: Path, section_path: Path) -> int:
    import json

    source = args.resimulate
    if source.resolve() == args.out.resolve():
        print("sim_vs_live: --resimulate needs an --out other than the stored run's", file=sys.stderr)
        return 2
    runs_df, comp_df, iters_df = resimulate(args, source)
    write_tables(args.out, runs_df, comp_df, iters_df)
    meta = json.loads((source / "meta.json").read_text())
    meta.update(resimulated_from=str(source), resimulated=started, resimulate_wall_s=time.perf_counter() - t0,
                command=command_line(argv),
                cost_model_name=args.cost_model,
                cost_model=OmegaConf.to_container(cost_model_node(args), resolve=True),
                cost_model_file=str(args.cost_model_file) if args.cost_model_file else None,
                sensitivity=args.sensitivity)
    write_json(args.out / "meta.json", meta)
    print(render(args.out, plot_path, section_path))
    print(f"re-simulated {len(comp_df)} pairs of {source}; replay MAPE over {len(iters_df)} live steps: "
          f"{iters_df.ape_pct.mean():.1f} %; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
