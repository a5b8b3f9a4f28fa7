"""``accelgen-profile``: fit the simulator's ``LinearCostModel`` to the live model's measured iteration times.

    accelgen-profile model=llama_15m                         # CPU: writes conf/cost_model/llama_15m_cpu.yaml
    accelgen-profile model=tiny profile.grid=quick profile.out=/tmp/cm profile.overwrite=true
    accelgen-profile model=llama_15m hardware=h100_80g       # on a GPU: name an existing conf/hardware option

Options (``profile.<key>=<value>``; the ``++`` Hydra needs for keys absent from ``conf/config.yaml`` is added for
you): ``grid`` (``full`` or ``quick``, the test/smoke grid), ``repeats`` (timed rounds, default 5), ``warmup``
(untimed rounds first, default 1), ``settle`` and ``settle_s`` (untimed runs of a batch right before each timed
one: at least ``settle`` runs and ``settle_s`` seconds, default 1 and 0.05, at most 32 runs), ``stat`` (``median``,
the default, or ``min``: see below), ``small_batch_weight`` (see Fit), ``heldout`` (random held-out compositions
per kind; null: 30 full, 4 quick), ``out`` (folder of the YAML; null: ``conf/cost_model``), ``overwrite`` (replace
an existing YAML), ``seed``, ``engine_overhead_s`` (written as is; default 0, see below), and the served
calibration's ``serve_rates`` (req/s; empty, the default, turns it off), ``serve_schedulers`` (sarathi, vllm),
``serve_workload`` (live_small), ``serve_requests`` (200), ``serve_seed`` (1), ``serve_grid_weight`` (5) and
``fit_settle`` (true: fit the settling factor on the served steps, below), and ``max_seq_knee`` (32: the largest
``s_knee`` of the concave per-sequence term ``β5·min(|B|, s_knee)``, below; 0 leaves the term out).
``runtime=live`` is implied and every ``runtime.*`` key (device, dtype, threads, checkpoint) is the live run's. The
YAML is ``<out>/<model>_<hardware>.yaml``, the name ``cost_model: ${model}_${hardware}`` resolves to, so
``accelgen runtime=live model=<m>`` plans with it and ``accelgen runtime=sim model=<m> hardware=<hw>`` simulates
with it. ``hardware`` must be an existing
``conf/hardware`` option that describes the device: ``cpu`` (what ``runtime=live`` selects) on a CPU; on a GPU pick
the matching one (e.g. ``hardware=h100_80g``; add a ``conf/hardware/<gpu>.yaml`` where none matches) -- profiling
a GPU under ``hardware=cpu`` or a CPU under a GPU option is refused, so no file is misnamed. The raw measurements
go to ``measurements.csv`` in the Hydra run directory (``outputs/profile/<time>_...``). After every timed round and
every served run the speed probe (``runtime.live.probe``) times six fixed batches: ``fit_error.probe_level`` and
``probe_spread_pct`` say how fast the machine was against the fit and how far that moved during the profile (a
warning above 10 %).

What is measured. Compositions ``B`` of three kinds, decode-only, prefill-only and mixed, on a training grid and
drawn at random for the held-out error (``runtime.live.compositions``), each run by ``LiveExecutor.execute``, the
call a live run makes each step, and timed after untimed runs of the same batch (``runtime.live.timing``: in
serving, consecutive steps are alike). Rounds: ``warmup`` untimed rounds, then ``repeats`` timed ones; each round
runs every composition in a fresh seeded random order, so a burst of load on a shared machine hits different
compositions in different rounds rather than every repeat of one. The heap is frozen while timing
(``runtime.live.heap``), as in a live run, so no full garbage collection lands in a timed run. The estimate per
composition is the **median** of its ``repeats`` times (``time_s`` in the CSV; ``median_s``, ``min_s``, ``max_s``
and every time are kept too). On a machine shared with other CPU-bound work, two torch threads on two cores stall
at every parallel region whenever the other work holds a core, and single steps then take up to 10-80x their quiet
time in bursts that outlast several rounds; ``profile.stat=min`` (the uncontended time) is the robust choice there,
the median is right on a quiet machine, where the two agree.

Fit (``runtime.live.profile_fit``): the linear form by weighted non-negative least squares on relative error, the
knee by grid search, small decode batches weighted ``small_batch_weight``; ``fit_error`` is MAPE (%) on held-out
compositions drawn independently of the grid, per kind, overall and its 95th percentile, plus the in-sample MAPE of
the grid (``train``). ``engine_overhead_s`` is written as given (0: not measured here).

Served calibration (``profile.serve_rates=[2,8,24]``, how the shipped ``llama_15m_cpu.yaml`` is fitted;
``runtime.live.serve_calibration``). After the grid fit the profiler runs ``serve_workload`` live with schedulers
planning with that fit, records every step, and refits the same form on the grid and the served steps together, each
grid composition weighted as ``serve_grid_weight`` served steps so the grid's long prefills, rare in served steps,
still determine ``β2``. The served steps are in ``measurements.csv`` (``split = serve``) and their in-sample MAPE is
``fit_error.serve``. Pick seeds and rates other than those the fit is judged on (``bench/sim_vs_live.py`` uses
seed 0 at 4/16/32 req/s), as the defaults do. The served steps also carry what no single composition can: how
many decode-only steps ``k`` separate each one from the last step with prefill tokens (``since_prefill`` in the
CSV). With ``fit_settle`` (the default) the fit adds the simulator's settling factor ``1 + a·ρ^k`` on decode-only
steps (``runtime.sim.settle``: ``(a, ρ)`` searched at the history-free fit's knee, then the knee on times
deflated by it, alternating until the knee stays; ``fit_rows``) and writes ``settle_amplitude`` and
``settle_decay``; the grid, timed settled, keeps ``k = −1``. It is kept only where it lowers the weighted MAPE, so a
machine without settling gets ``a = 0``. Each round of that alternation also searches
``s_knee`` in 2 .. ``max_seq_knee`` for the cost model's ``β5·min(|B|, s_knee)``, the LM head's small-batch
staircase on a CPU (``runtime.sim.cost_model``), on grid and served rows alike; it is kept only where it lowers the
weighted MAPE by more than 1 % of it (``profile_fit.SEQ_KNEE_MIN_GAIN``: the term costs the Oracle a binary), so
``β5 = 0`` where the step time is linear in ``|B|``.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from runtime.core.errors import AccelgenError, ConfigError
from runtime.core.run_log import atomic_write
from runtime.live.compositions import (HELDOUT, Composition, feature_columns, grid_compositions,
                                       heldout_compositions)
from runtime.live.device import cpu_name
from runtime.live.heap import frozen_heap
from runtime.live.probe import STEADY_SPREAD_PCT, ProbeTrack
from runtime.live.profile_fit import KINDS, SMALL_BATCH, cost_model_payload, fit_report, fit_rows, since_prefill
from runtime.live.serve_calibration import CONF_PATH, serve_steps
from runtime.live.timing import Profiler, time_settled
from runtime.sim.cost_model import LinearCostModel

DEFAULT_OUT = CONF_PATH / "cost_model"
DEFAULTS = dict(grid="full", repeats=5, warmup=1, settle=1, settle_s=0.05, stat="median", small_batch_weight=4.0,
                heldout=None, out=None, overwrite=False, seed=0, engine_overhead_s=0.0, serve_rates=[],
                serve_schedulers=["sarathi", "vllm"], serve_workload="live_small", serve_requests=200, serve_seed=1,
                serve_grid_weight=5.0, fit_settle=True, max_seq_knee=32)
STATS = {"median": np.median, "min": np.min}
HEADER = "# generated by accelgen-profile {args}; do not edit\n"


def _options(cfg: DictConfig, overrides: dict) -> dict:
    given = OmegaConf.to_container(cfg.profile, resolve=True) if cfg.get("profile") is not None else {}
    opts = {**DEFAULTS, **given, **overrides}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"profile: unknown keys {sorted(unknown)} (known: {', '.join(DEFAULTS)})")
    if not (isinstance(opts["repeats"], int) and opts["repeats"] >= 1):
        raise ConfigError(f"profile.repeats must be an integer >= 1, got {opts['repeats']!r}")
    for key in ("warmup", "settle"):
        if not (isinstance(opts[key], int) and opts[key] >= 0):
            raise ConfigError(f"profile.{key} must be an integer >= 0, got {opts[key]!r}")
    if not (isinstance(opts["settle_s"], (int, float)) and opts["settle_s"] >= 0):
        raise ConfigError(f"profile.settle_s must be a number >= 0, got {opts['settle_s']!r}")
    if not (isinstance(opts["small_batch_weight"], (int, float)) and opts["small_batch_weight"] >= 0):
        raise ConfigError(f"profile.small_batch_weight must be a number >= 0, got {opts['small_batch_weight']!r}")
    if opts["stat"] not in STATS:
        raise ConfigError(f"profile.stat must be one of {sorted(STATS)}, got {opts['stat']!r}")
    rates = opts["serve_rates"]
    if not (isinstance(rates, (list, tuple)) and all(isinstance(r, (int, float)) and r > 0 for r in rates)):
        raise ConfigError(f"profile.serve_rates must be a list of rates > 0 (req/s), got {rates!r}")
    for key, group in (("serve_schedulers", "scheduler"), ("serve_workload", "workload")):
        names = opts[key] if isinstance(opts[key], (list, tuple)) else [opts[key]]
        for name in names:
            if not (CONF_PATH / group / f"{name}.yaml").is_file():
                raise ConfigError(f"profile.{key}: no conf/{group}/{name}.yaml")
    if not (isinstance(opts["serve_grid_weight"], (int, float)) and opts["serve_grid_weight"] >= 0):
        raise ConfigError(f"profile.serve_grid_weight must be a number >= 0, got {opts['serve_grid_weight']!r}")
    if not (isinstance(opts["serve_requests"], int) and opts["serve_requests"] >= 1):
        raise ConfigError(f"profile.serve_requests must be an integer >= 1, got {opts['serve_requests']!r}")
    if not isinstance(opts["fit_settle"], bool):
        raise ConfigError(f"profile.fit_settle must be true or false, got {opts['fit_settle']!r}")
    seq_knee = opts["max_seq_knee"]
    if isinstance(seq_knee, bool) or not isinstance(seq_knee, int) or seq_knee < 0 or seq_knee == 1:
        raise ConfigError(f"profile.max_seq_knee must be 0 (no s_knee term) or an integer >= 2, got {seq_knee!r}")
    if opts["heldout"] is None:
        opts["heldout"] = HELDOUT.get(opts["grid"], 4)
    if not (isinstance(opts["heldout"], int) and opts["heldout"] >= 1):
        raise ConfigError(f"profile.heldout must be an integer >= 1 or null, got {opts['heldout']!r}")
    return opts


def _check_device(device: torch.device, hardware) -> None:
    on_cpu = hardware.gpu == "cpu"
    if device.type == "cuda" and on_cpu:
        raise ConfigError(f"accelgen-profile: the live device is {device} but hardware={hardware.name}; name the "
                          "conf/hardware option of this GPU (e.g. hardware=h100_80g), adding one if none matches")
    if device.type == "cpu" and not on_cpu:
        raise ConfigError(f"accelgen-profile: the live device is the CPU but hardware={hardware.name} is a GPU; "
                          "use hardware=cpu (runtime=live's default) or runtime.device=cuda")


def header_args(cfg: DictConfig, opts: dict, model: str, hardware: str) -> str:
    """The arguments of the YAML's first line: enough to run the same profile again.

    Model and hardware, the live runtime's keys that change step times (device, dtype, threads, checkpoint) where
    not at their ``auto``/null defaults, the grid, and every other ``profile.*`` option that is not its default
    (``out`` and ``overwrite`` say where the file went, not what is in it).
    """
    def spell(value) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(spell(v) for v in value) + "]"
        return f"{value:g}" if isinstance(value, float) else str(value)

    args = [f"model={model}", f"hardware={hardware}"]
    runtime = cfg.get("runtime") or {}
    for key, default in (("device", "auto"), ("dtype", "auto"), ("threads", None), ("checkpoint", None)):
        value = runtime.get(key, default)
        if value != default:
            args.append(f"runtime.{key}={spell(value)}")
    args.append(f"profile.grid={opts['grid']}")
    for key, default in DEFAULTS.items():
        if key in ("grid", "out", "overwrite") or ((key.startswith("serve_") or key == "fit_settle")
                                                    and key != "serve_rates" and not opts["serve_rates"]):
            continue
        value = opts[key]
        if key == "heldout" and value == HELDOUT.get(opts["grid"]):
            continue  # null resolves to the grid's own count: the default, spelled out
        if (list(value) if isinstance(value, (list, tuple)) else value) != default:
            args.append(f"profile.{key}={spell(value)}")
    return " ".join(args)


def measurement_frame(comps: list[Composition], stat: str) -> pd.DataFrame:
    """One row per timed composition: its features, the ``stat`` of its times (``time_s``) and every time."""
    rows = []
    for k, comp in enumerate(comps):
        times = np.asarray(comp.times)
        rows.append(dict(id=k, kind=comp.kind, split=comp.split, composition=comp.label(),
                         **feature_columns(comp.chunks, comp.decodes),
                         num_sampled=sum(comp.final) + len(comp.decodes), time_s=float(STATS[stat](times)),
                         median_s=float(np.median(times)), min_s=float(times.min()), max_s=float(times.max()),
                         times_s=" ".join(f"{x:.6g}" for x in times)))
    frame = pd.DataFrame(rows)
    frame["chunks"], frame["decodes"] = [c.chunks for c in comps], [c.decodes for c in comps]
    return frame


def describe_fit(opts: dict, fit, fields: dict, frame: pd.DataFrame, *, what: str, max_len: int,
                 block_size: int) -> str:
    """The YAML's ``source``: how it was measured (``what``: model, device, threads, versions) and fitted."""
    tr, ho, sv = (frame[frame.split == split] for split in ("train", "heldout", "serve"))
    counts = ", ".join(f"{(tr.kind == k).sum()} {k}" for k in KINDS)
    source = (f"accelgen-profile: LiveExecutor.execute step_time ({opts['stat']} of {opts['repeats']} after "
              f"{opts['warmup']} warmup round(s), rounds in seeded random order, each timed run after >= "
              f"{opts['settle']} untimed run(s) and >= {float(opts['settle_s']):g} s of the same batch) of {what}; "
              f"{opts['grid']} grid of {len(tr)} compositions ({counts}), max_model_len {max_len}, "
              f"block_size {block_size}; NNLS on relative error (decode-only batches of <= "
              f"{SMALL_BATCH} weighted x{float(opts['small_batch_weight']):g}), n_knee by grid search; "
              f"engine_overhead_s set to {float(opts['engine_overhead_s']):g} (host work outside execute is not "
              f"measured); fit_error: MAPE % on {len(ho)} held-out random compositions ({opts['heldout']} per kind)")
    if len(sv):
        source += (f"; served calibration: fitted on the grid and the {len(sv)} steps of live runs of workload="
                   f"{opts['serve_workload']} ({opts['serve_requests']} requests, seed {opts['serve_seed']}) with "
                   f"{'/'.join(opts['serve_schedulers'])} at {'/'.join(f'{r:g}' for r in opts['serve_rates'])} req/s "
                   f"(fit_error.serve: in-sample MAPE on them), each grid composition weighted as "
                   f"{float(opts['serve_grid_weight']):g} served steps")
        source += ("; settling (runtime.sim.settle) fitted on the served steps: a decode-only step k steps after one "
                   "with prefill tokens takes 1 + settle_amplitude * settle_decay^k times T(B)"
                   if fit.settle_amplitude else "; no settling term (profile.fit_settle=false, or none fitted better)")
    source += (f"; the first s_knee = {fit.s_knee} sequences of a step cost beta5 more each (the LM head's small-batch "
               "staircase)" if fields["beta5"] > 0 else
               "; no per-sequence knee (profile.max_seq_knee=0, or none fitted better)")
    return source


def run_profile(cfg: DictConfig, output_dir: Path | None = None, *, progress: bool | None = None,
                **overrides) -> dict:
    """Measure, fit, write ``<out>/<model>_<hardware>.yaml`` and ``measurements.csv``; returns the YAML payload.

    ``overrides`` are ``profile.*`` options (module docstring) given as keywords.
    """
    from runtime.cli import instantiate_node, fill_paths, is_live
    from runtime.config_schema import validate_config
    from runtime.live.device import resolve_device, resolve_dtype

    if not is_live(cfg):
        raise ConfigError("accelgen-profile measures the live runtime: use runtime=live (the default of "
                          "accelgen-profile), not runtime=sim")
    fill_paths(cfg)
    run_keys = cfg.copy()
    with open_dict(run_keys):
        run_keys.pop("profile", None)  # the profiler's own block, checked by _options below
    validate_config(run_keys)
    opts = _options(cfg, overrides)
    model = instantiate_node(cfg.model)
    hardware = instantiate_node(cfg.hardware)
    device = resolve_device(cfg.runtime.get("device", "auto"))
    dtype = resolve_dtype(cfg.runtime.get("dtype", "auto"), device)
    _check_device(device, hardware)
    name = f"{model.name}_{hardware.name}"
    out_dir = Path(opts["out"]) if opts["out"] is not None else DEFAULT_OUT
    target = out_dir / f"{name}.yaml"
    if target.exists() and not opts["overwrite"]:
        raise ConfigError(f"{target} exists; pass profile.overwrite=true to replace it")

    max_len = int(model.max_model_len)
    train = grid_compositions(max_len, opts["grid"], opts["seed"])
    heldout = heldout_compositions(max_len, opts["heldout"], opts["seed"])
    comps = train + heldout
    profiler = Profiler(cfg, model, comps)
    threads = torch.get_num_threads()
    probe = ProbeTrack(profiler, settle=opts["settle"], settle_s=float(opts["settle_s"]), seed=opts["seed"],
                       max_len=max_len)

    rounds, settle, settle_s = opts["warmup"] + opts["repeats"], opts["settle"], float(opts["settle_s"])
    rng = np.random.default_rng(opts["seed"])
    show = cfg.get("progress", True) if progress is None else progress
    t0 = time.perf_counter()
    with frozen_heap(), tqdm(total=rounds * len(comps), desc=f"profile {model.name}", unit="comp",
                             dynamic_ncols=True, disable=not show, mininterval=0.5) as bar:
        for r in range(rounds):
            for i in rng.permutation(len(comps)):
                if r >= opts["warmup"]:
                    comps[i].times.append(time_settled(profiler, comps[i], settle, settle_s))
                else:
                    profiler.run(comps[i])
                bar.update(1)
            if r >= opts["warmup"]:
                probe.sample()  # how fast the machine is now (runtime.live.probe): its spread is in fit_error
    profile_s = time.perf_counter() - t0

    frame = measurement_frame(comps, opts["stat"])
    fit = fit_rows(frame[frame.split == "train"], opts)
    serve_s = 0.0
    if opts["serve_rates"]:
        # Served calibration: live runs planned with the grid fit, then one fit over the grid and every served step.
        t1 = time.perf_counter()
        grid_fit = cost_model_payload(name, fit, opts, source="grid fit (served calibration)")
        served = serve_steps(cfg, opts, grid_fit, show, between=probe.sample)
        serve_s = time.perf_counter() - t1
        frame = pd.concat([frame, served], ignore_index=True)
        frame["since_prefill"] = since_prefill(frame)  # grid and held-out rows, timed settled: -1
        fit = fit_rows(frame[frame.split.isin(["train", "serve"])], opts)
    frame = frame.drop(columns=["chunks", "decodes"])
    frame, fit_error = fit_report(frame, fit)
    fields = cost_model_payload(name, fit, opts, source="")
    cm = LinearCostModel(**{k: v for k, v in fields.items() if not k.startswith("_") and k != "source"})
    fit_error.update(probe.summary(cm))
    where = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    what = (f"{model.name} on {device} {str(dtype).removeprefix('torch.')} ({where}), {threads} torch threads, "
            f"torch {torch.__version__}, python {platform.python_version()}")
    source = describe_fit(opts, fit, fields, frame, what=what, max_len=max_len,
                          block_size=profiler.block_manager.block_size)
    payload = {**fields, "source": source, "fit_error": fit_error}
    args = header_args(cfg, opts, model.name, hardware.name)
    text = HEADER.format(args=args) + yaml.safe_dump(payload, sort_keys=False, width=10_000)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda p: p.write_text(text))
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(output_dir / "measurements.csv", lambda p: frame.to_csv(p, index=False))
    return {**payload, "_path": str(target), "_profile_s": profile_s + serve_s, "_frame": frame}


def format_result(result: dict) -> str:
    e = result["fit_error"]
    return "\n".join([
        f"wrote {result['_path']} ({result['_profile_s']:.0f} s of timing)",
        f"  beta0 {result['beta0'] * 1e3:.4g} ms   beta1 {result['beta1'] * 1e6:.4g} us/token   n_knee "
        f"{result['n_knee']:g}   beta2 {result['beta2'] * 1e9:.4g} ns/token^2   beta3 {result['beta3'] * 1e9:.4g} "
        f"ns/ctx token   beta4 {result['beta4'] * 1e6:.4g} us/seq",
        f"  held-out MAPE %: all {e['iteration']:.2f} (p95 {e['iteration_p95']:.2f}), decode "
        f"{e['iteration_decode']:.2f}, prefill {e['iteration_prefill']:.2f}, mixed {e['iteration_mixed']:.2f}; "
        f"train {e['train']:.2f}",
        *([f"  served calibration: {e['num_serve']} live steps, MAPE % {e['serve']:.2f} (in-sample)"]
          if "serve" in e else []),
        *([f"  settling: a decode-only step k steps after a prefill takes x(1 + {result['settle_amplitude']:.3f} * "
           f"{result['settle_decay']:g}^k)"] if result.get("settle_amplitude") else []),
        *([f"  per-sequence knee: each of a step's first {result['s_knee']} sequences costs "
           f"{result['beta5'] * 1e6:.1f} us more"] if result.get("beta5") else []),
        *([f"  speed probe: level x{e['probe_level']:.3f} of the fit over {e['num_probes']} probes, spread "
           f"{e['probe_spread_pct']:.1f} %"] if "probe_level" in e else []),
        *([f"  warning: the machine's speed moved by {e['probe_spread_pct']:.0f} % while it was profiled (speed "
           f"probe, runtime/live/probe.py); on a shared machine, profile again when it is quiet, or use "
           f"profile.stat=min"] if e.get("probe_spread_pct", 0) > STEADY_SPREAD_PCT else []),
    ])


def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_profile(cfg, output_dir)
    except AccelgenError as error:
        print(f"accelgen-profile: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_result(result))
    print(f"  measurements: {output_dir / 'measurements.csv'}")


def main() -> None:
    """Entry point: ``runtime=live`` and ``task_name=profile`` unless given; ``profile.*`` keys may be new."""
    import hydra

    from runtime.cli import CONF_DIR

    args = sys.argv[1:]
    rewritten = []
    for arg in args:
        bare = arg.lstrip("+")
        rewritten.append("++" + bare if bare.startswith("profile.") else arg)
    if not any(a.lstrip("+").startswith("runtime=") for a in args):
        rewritten.insert(0, "runtime=live")
    if not any(a.lstrip("+").startswith("task_name=") for a in args):
        rewritten.insert(0, "task_name=profile")
    sys.argv = [sys.argv[0], *rewritten]
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_hydra_main)()


if __name__ == "__main__":
    main()
