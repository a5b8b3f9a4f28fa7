"""AccelGen against vLLM, Orca and Sarathi-Serve (or its ablations) over arrival rates, through the real configs.

For every (variant, workload, model) it first finds the capacity ``λ*`` (largest Poisson/trace rate with SLO
attainment >= 0.90; ``runtime.capacity_search``, seed 0), then runs every variant on a grid of rates per
(model, workload): 8 points from 0.25x to 1.5x the best baseline's capacity (algorithms.md section 8), times
``--seeds`` seeds. It measures throughput, goodput, SLO attainment (overall and per class) and mean/p99 JCT, and
compares the reference variant (AccelGen) with each other one, ratio by ratio, next to the AccelGen paper's
claims. Each run is ``runtime.cli.run`` on a composed config (``progress=false``), so it is exactly what
``accelgen <overrides>`` would compute.

    .venv/bin/python bench/accelgen_vs_baselines.py                                  # baselines suite, all defaults
    .venv/bin/python bench/accelgen_vs_baselines.py --suite ablation --workloads mixed
    .venv/bin/python bench/accelgen_vs_baselines.py --only vllm sarathi --workloads mixed --rates 1 2 3 4
    .venv/bin/python bench/accelgen_vs_baselines.py --variants 'vllm-chunked=scheduler=vllm,scheduler.chunked_prefill=true'
    .venv/bin/python bench/accelgen_vs_baselines.py --quick --only vllm sarathi         # smoke run, seconds

Outputs in ``--out``: ``runs.csv`` (one row per variant x workload x model x rate x seed), ``capacity.csv``,
``ratios.csv`` (reference / baseline at every grid rate), ``summary.md`` (min-max ranges next to the paper's) and
one ``<model>__<workload>.png`` per model and workload. The spec's setting is 3 seeds and 2000 requests
(``--seeds 3 --num-requests 2000``); the defaults are 1 and 1000 for speed. On trace workloads the seed changes
nothing unless ``cost_model.noise_cv > 0`` (a replay draws no randomness).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from tqdm.auto import tqdm

from runtime.capacity_search import capacity_search, find_violations
from runtime.cli import CONF_DIR, REPO_ROOT, fill_paths, run
from runtime.core.errors import AccelgenError, ConfigError
from runtime.core.run_log import atomic_write

SUITES = {
    "baselines": {
        "accelgen": ["scheduler=accelgen"], "vllm": ["scheduler=vllm"], "orca": ["scheduler=orca"],
        "sarathi": ["scheduler=sarathi"],
    },
    # The named variants of conf/ablation (the same ones `accelgen -m experiment=accelgen_ablation` sweeps).
    "ablation": {name: [f"ablation={name}"] for name in (
        "accelgen", "no_dynamic_chunking", "no_slo_priority", "no_multi_resource", "sarathi_256", "sarathi_512",
        "sarathi_2048")},
}
FULL = dict(workloads=["mixed", "conversation", "code", "arxiv"],
            models=["llama2_7b:a100_80g", "llama3_8b:a100_80g"], num_requests=1000, grid_points=8,
            max_evaluations=16, rtol=0.02)
QUICK = dict(workloads=["mixed"], models=["llama2_7b:a100_80g"], num_requests=200, grid_points=3,
             max_evaluations=6, rtol=0.1)
GRID_RANGE = (0.25, 1.5)  # x the best baseline's capacity
SPEC_NUM_REQUESTS, SPEC_SEEDS = 2000, 3
# (ratios.csv column, label, metric, how, the paper's claim). x: ref/base; lower_x: base/ref; pp: 100 (ref - base).
RATIOS = [
    ("throughput_rps_x", "throughput (req/s)", "throughput_rps", "x", "1.42–11.21×"),
    ("throughput_tps_x", "throughput (tok/s)", "throughput_tps", "x", "1.42–11.21×"),
    ("goodput_rps_x", "goodput (req/s)", "goodput_rps", "x", "1.43–13.71×"),
    ("slo_attainment_pp", "SLO attainment (pp)", "slo_attainment", "pp", "+37–90 pp"),
    ("slo_attainment_x", "SLO attainment (ratio)", "slo_attainment", "x", "1.37–1.90× if read as a ratio"),
    ("jct_mean_lower_x", "lower mean JCT", "jct_mean_s", "lower_x", "1.61–12.22×"),
    ("capacity_x", "capacity (λ*)", "capacity", "x", "—"),
]
PANELS = [("throughput_rps", "throughput (req/s)"), ("goodput_rps", "goodput (req/s)"),
          ("slo_attainment", "SLO attainment"), ("by_class", "SLO attainment by class"),
          ("jct_mean_s", "mean JCT (s)"), ("jct_p99_s", "p99 JCT (s)")]


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    rate_key: str    # workload.arrival.rate (synthetic arrivals) or workload.target_rate (trace replay)
    size_key: str    # workload.num_requests or workload.max_requests
    start_rate: float
    skip_reason: str | None


def compose_cfg(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def inspect_workload(name: str) -> WorkloadSpec:
    """How to set a workload's rate and size, decided from its composed config rather than its name."""
    cfg = compose_cfg([f"workload={name}"])
    fill_paths(cfg)
    wl = cfg.workload
    if "arrival" in wl:
        rate_key, start_rate = "workload.arrival.rate", float(wl.arrival.rate)
    elif "target_rate" in wl:
        # NOTE: a trace's native rate is only known after reading it; 3 req/s is near the shipped workloads'.
        rate_key, start_rate = "workload.target_rate", 3.0
    else:
        raise ConfigError(f"workload {name!r} has neither arrival.rate nor target_rate to sweep")
    size_key = "workload.num_requests" if "num_requests" in wl else "workload.max_requests"
    path = wl.get("path")
    skip = f"needs {path}" if path is not None and not Path(path).exists() else None
    return WorkloadSpec(name, rate_key, size_key, start_rate, skip)


def simulate(overrides: tuple[str, ...]) -> dict:
    """One run's summary, or ``{"error": ...}`` for a configuration the scheduler cannot run."""
    try:
        return run(compose_cfg(overrides), output_dir=None)
    except AccelgenError as error:
        return {"error": f"{type(error).__name__}: {error}"}


class RunFailed(Exception):
    """A run inside a capacity search failed: the search stops and is recorded with status "error"."""


def search(task: dict) -> dict:
    def attainment(rate: float) -> float:
        summary = simulate((*task["overrides"], f"{task['rate_key']}={float(rate)!r}"))
        if "error" in summary:
            raise RunFailed(summary["error"])
        return summary["slo_attainment"]

    try:
        result = capacity_search(attainment, **task["search"])
    except RunFailed as error:
        return dict(capacity=None, status="error", evaluations=None, monotonic=None, bracket_low=None,
                    bracket_high=None, points="", violations="", error=str(error))
    return dict(capacity=result.capacity, status=result.status, evaluations=result.num_evaluations,
                monotonic=result.monotonic, bracket_low=result.low, bracket_high=result.high,
                points=" ".join(f"{r:.6g}:{a:.4f}" for r, a in result.points),
                violations="; ".join(map(str, result.violations)), error=None)


def run_all(fn, tasks: list, jobs: int, desc: str) -> list:
    """``[fn(t) for t in tasks]`` on ``jobs`` processes, in task order whatever order they finish in."""
    results = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, unit="run", dynamic_ncols=True) as bar:
        if jobs <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(task)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    return results


def flatten(summary: dict, prefix: str = "") -> dict:
    """Scalars as they are; dicts as ``key[sub]`` columns, ``*_by_class`` as ``slo_attainment[tight]`` etc."""
    row = {}
    for key, value in summary.items():
        name = f"{prefix}[{key}]" if prefix else key.removesuffix("_by_class")
        if isinstance(value, dict):
            row.update(flatten(value, name))
        else:
            row[name] = value
    return row


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def ratio(num, den) -> np.ndarray:
    """``num / den``; inf for x/0 with x > 0, NaN for 0/0 and wherever either side is missing."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.where((den == 0) & (num > 0), np.inf, np.nan))


def ratios_frame(grid: pd.DataFrame, capacity: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Reference / baseline at every grid rate (mean over seeds), one row per model x workload x baseline x rate."""
    rows = []
    cap = capacity.set_index(["variant", "model", "workload"])["capacity"]
    for (model, workload), group in grid.groupby(["model", "workload"], sort=False):
        ref = group[group.variant == reference].set_index("rate")
        for base_name, base in group[group.variant != reference].groupby("variant", sort=False):
            both = ref.join(base.set_index("rate"), rsuffix="_base", how="inner")
            out = pd.DataFrame({"model": model, "workload": workload, "baseline": base_name, "rate": both.index})
            for column, _, metric, how, _ in RATIOS:
                if metric == "capacity":
                    out[column] = float(ratio(cap.get((reference, model, workload), np.nan),
                                              cap.get((base_name, model, workload), np.nan)))
                    continue
                a, b = both[metric].to_numpy(), both[f"{metric}_base"].to_numpy()
                out[column] = {"x": ratio(a, b), "lower_x": ratio(b, a), "pp": 100.0 * (a - b)}[how]
            rows.append(out)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def fmt_range(values: pd.Series, how: str) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    lo, hi = values.min(), values.max()
    if how == "pp":
        return f"{lo:+.1f} – {hi:+.1f} pp"
    show = lambda v: "∞" if np.isinf(v) else f"{v:.2f}"  # noqa: E731
    return f"{show(lo)} – {show(hi)}×"


def range_table(ratios: pd.DataFrame) -> pd.DataFrame:
    """min–max of each ratio over the rows given, one column per baseline, the paper's claim beside."""
    table = {"metric": [r[1] for r in RATIOS], "paper": [r[4] for r in RATIOS]}
    for base, group in ratios.groupby("baseline", sort=False):
        table[f"vs {base}"] = [fmt_range(group[column], how) for column, _, _, how, _ in RATIOS]
    return pd.DataFrame(table)


def monotonicity_notes(grid: pd.DataFrame, target: float) -> list[str]:
    notes = []
    for (variant, model, workload), group in grid.groupby(["variant", "model", "workload"], sort=False):
        for v in find_violations(zip(group.rate, group.slo_attainment), target=target):
            notes.append(f"{variant} / {model} / {workload}: {v}")
    return notes


def plot(grid: pd.DataFrame, model: str, workload: str, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(c[len("slo_attainment["):-1] for c in grid.columns
                     if c.startswith("slo_attainment[") and grid[c].notna().any())
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for i, (variant, group) in enumerate(grid.groupby("variant", sort=False)):
        color = f"C{i}"
        for ax, (metric, title) in zip(axes.flat, PANELS):
            if metric == "by_class":
                for j, cls in enumerate(classes):
                    ax.plot(group.rate, group[f"slo_attainment[{cls}]"], styles[j % 4], color=color, marker=".",
                            label=f"{variant} [{cls}]")
            else:
                ax.plot(group.rate, group[metric], "-", color=color, marker="o", label=variant)
            ax.set(title=title, xlabel="arrival rate (req/s)")
    for ax in axes.flat[2:4]:
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
    for ax in axes.flat[4:6]:
        ax.set_yscale("log")
    axes.flat[0].legend(fontsize=8)
    # Colours are the variants of the first panel's legend; here only the line styles need a key.
    axes.flat[3].legend([plt.Line2D([], [], color="black", ls=styles[j % 4]) for j in range(len(classes))], classes,
                        fontsize=8)
    fig.suptitle(f"{model} — {workload}")
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="baselines")
    parser.add_argument("--variants", nargs="+", default=[], metavar="NAME=OVERRIDE,OVERRIDE",
                        help="extra variants (overrides separated by commas)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these variants")
    parser.add_argument("--reference", default="accelgen", help="the variant every other one is compared with")
    parser.add_argument("--workloads", nargs="+")
    parser.add_argument("--models", nargs="+", metavar="MODEL:HARDWARE")
    parser.add_argument("--rates", nargs="+", type=float, help="explicit rates (default: a grid around capacity)")
    parser.add_argument("--grid-points", type=int)
    parser.add_argument("--grid-anchor", choices=["baseline", "all"], default="baseline",
                        help="grid up to 1.5x the best baseline's capacity (spec) or the highest of all variants")
    parser.add_argument("--seeds", type=int, default=1, help=f"seeds 0..N-1 per rate (spec: {SPEC_SEEDS})")
    parser.add_argument("--num-requests", type=int, help=f"requests per run (spec: {SPEC_NUM_REQUESTS})")
    parser.add_argument("--target", type=float, default=0.90, help="SLO attainment that defines capacity")
    parser.add_argument("--rtol", type=float)
    parser.add_argument("--max-evaluations", type=int, help="runs per capacity search at most")
    parser.add_argument("--min-rate", type=float, default=0.05)
    parser.add_argument("--max-rate", type=float, default=64.0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (1: in-process)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="smoke run: mixed, one model, 3 rates, 200 requests")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        name = "accelgen_vs_baselines_quick" if args.quick else "accelgen_vs_baselines"
        args.out = REPO_ROOT / "bench" / "results" / name
    return args


def select_variants(args, suites: dict | None = None) -> dict[str, list[str]]:
    """The suite's variants plus ``--variants``, restricted to ``--only`` (``suites``: a bench's own suites)."""
    variants = dict((suites or SUITES)[args.suite])
    for spec in args.variants:
        name, sep, overrides = spec.partition("=")
        if not sep or not name or not overrides:
            raise ConfigError(f"--variants expects NAME=OVERRIDE[,OVERRIDE...], got {spec!r}")
        variants[name] = overrides.split(",")
    if args.only:
        unknown = [n for n in args.only if n not in variants]
        if unknown:
            raise ConfigError(f"--only: unknown variant(s) {unknown}; known: {sorted(variants)}")
        variants = {n: variants[n] for n in args.only}
    return variants


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    variants = select_variants(args)
    workloads = []
    for name in args.workloads:
        spec = inspect_workload(name)
        if spec.skip_reason:
            print(f"skipping workload {name}: {spec.skip_reason}")
        else:
            workloads.append(spec)
    if not workloads:
        raise ConfigError(f"no workload left to run out of {args.workloads}")
    models = [m.split(":", 1) for m in args.models]
    if any(len(m) != 2 for m in models):
        raise ConfigError(f"--models expects MODEL:HARDWARE pairs, got {args.models}")
    seeds = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)

    def base_overrides(variant, wl, model, seed):
        return (*variants[variant], f"model={model[0]}", f"hardware={model[1]}", f"workload={wl.name}",
                f"{wl.size_key}={args.num_requests}", f"seed={seed}")

    # Phase 1: capacity of every variant on every workload and model.
    keys = [(v, wl, m) for m in models for wl in workloads for v in variants]
    search_kw = dict(target=args.target, rtol=args.rtol, min_rate=args.min_rate, max_rate=args.max_rate,
                     max_evaluations=args.max_evaluations)
    tasks = [dict(overrides=base_overrides(v, wl, m, seeds[0]), rate_key=wl.rate_key,
                  search=dict(search_kw, start_rate=min(max(wl.start_rate, args.min_rate), args.max_rate)))
             for v, wl, m in keys]
    print(f"{len(variants)} variants x {len(workloads)} workloads x {len(models)} models, {args.num_requests} "
          f"requests per run (spec: {SPEC_NUM_REQUESTS}), {len(seeds)} seed(s) (spec: {SPEC_SEEDS}), {args.jobs} jobs")
    found = run_all(search, tasks, args.jobs, "capacity searches")
    capacity = pd.DataFrame([dict(variant=v, workload=wl.name, model=":".join(m), **res)
                             for (v, wl, m), res in zip(keys, found)])
    write_csv(args.out / "capacity.csv", capacity)

    # Phase 2: the rate grid, shared by all variants of a (model, workload).
    bases = {}
    runs = []
    for m in models:
        for wl in workloads:
            model = ":".join(m)
            caps = capacity[(capacity.model == model) & (capacity.workload == wl.name)].dropna(subset=["capacity"])
            # The best baseline's capacity; failing that, the reference's; failing that, the start rate.
            baseline_caps = caps[caps.variant != args.reference]
            # --grid-anchor all: the grid reaches past every variant's knee (the spec's grid can stop far below
            # the reference's capacity when the baselines are weak).
            pool = baseline_caps if not baseline_caps.empty and args.grid_anchor == "baseline" else caps
            best = pool.loc[pool.capacity.idxmax()] if not pool.empty else None
            base = float(best.capacity) if best is not None else wl.start_rate
            bases[(model, wl.name)] = (base, best.variant if best is not None else "start rate")
            rates = args.rates or [round(f * base, 4) for f in np.linspace(*GRID_RANGE, args.grid_points)]
            runs += [(v, wl, m, float(r), s) for v in variants for r in rates for s in seeds]
    results = run_all(simulate, [(*base_overrides(v, wl, m, s), f"{wl.rate_key}={r!r}") for v, wl, m, r, s in runs],
                      args.jobs, "grid runs")
    drop = {"workload", "model", "hardware", "seed"}
    frame = pd.DataFrame([dict(variant=v, workload=wl.name, model=":".join(m), rate=r, seed=s,
                               **{k: x for k, x in flatten(res).items() if k not in drop})
                          for (v, wl, m, r, s), res in zip(runs, results)])
    write_csv(args.out / "runs.csv", frame)

    # Means over seeds, in run order.
    keys4 = ["variant", "model", "workload", "rate"]
    grid = frame.groupby(keys4, sort=False).mean(numeric_only=True).reset_index()
    for (model, workload), group in grid.groupby(["model", "workload"], sort=False):
        plot(group, model, workload, args.out / f"{model.replace(':', '_')}__{workload}.png", args.target)

    ratios = ratios_frame(grid, capacity, args.reference) if args.reference in variants else pd.DataFrame()
    if not ratios.empty:
        write_csv(args.out / "ratios.csv", ratios)
    else:
        (args.out / "ratios.csv").unlink(missing_ok=True)  # a previous run's would contradict summary.md
    report = summary_markdown(args, sys.argv[1:] if argv is None else argv, variants, capacity, bases, grid, ratios,
                              frame)
    atomic_write(args.out / "summary.md", lambda p: p.write_text(report))
    wall = frame["wall_s"].dropna() if "wall_s" in frame else pd.Series(dtype=float)
    print(f"\n{len(frame)} grid runs + {int(capacity.evaluations.sum())} capacity runs in "
          f"{time.perf_counter() - t0:.1f} s (mean {wall.mean():.2f} s per grid run) -> {args.out}")
    print(capacity[["variant", "workload", "model", "capacity", "status", "evaluations", "monotonic"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not ratios.empty:
        print(f"\n{args.reference} against each variant, min–max over models, workloads and rates:")
        print(range_table(ratios).to_string(index=False))
    return 0


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table (pandas' to_markdown needs tabulate, which this project does not install)."""
    rows = [list(frame.columns), ["---"] * frame.shape[1],
            *[[_cell(v) for v in row] for row in frame.itertuples(index=False)]]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def summary_markdown(args, argv, variants, capacity, bases, grid, ratios, frame) -> str:
    if args.rates:
        rates_line = f"Rates: {args.rates} (given)."
    else:
        used = ", ".join(f"{m} {w}: {b:.3f} ({v})" for (m, w), (b, v) in bases.items())
        anchor = "the best baseline's capacity" if args.grid_anchor == "baseline" else "the highest capacity"
        rates_line = (f"Rate grid: {GRID_RANGE[0]}–{GRID_RANGE[1]}× {anchor}, "
                      f"{args.grid_points} points; capacity used: {used}.")
    lines = [
        "# AccelGen vs baselines", "",
        f"`python bench/accelgen_vs_baselines.py {' '.join(argv)}`", "",
        f"{len(frame)} grid runs, {args.num_requests} requests each (spec: {SPEC_NUM_REQUESTS}), "
        f"{args.seeds} seed(s) (spec: {SPEC_SEEDS}). Capacity: the largest rate with SLO attainment ≥ {args.target} "
        f"(rtol {args.rtol}, at most {args.max_evaluations} runs, seed 0).", "",
        "Variants: " + "; ".join(f"**{n}** `{' '.join(o)}`" for n, o in variants.items()), "",
        "## Capacity (req/s)", "",
        markdown_table(capacity[["variant", "workload", "model", "capacity", "status", "evaluations", "monotonic",
                                 "violations"]]), "",
        rates_line, "",
    ]
    if "error" in frame and frame["error"].notna().any():
        failed = frame[frame["error"].notna()]
        lines += ["## Failed runs", "",
                  markdown_table(failed[["variant", "workload", "model", "rate", "seed", "error"]]), ""]
    lines += ["## Monotonicity of SLO attainment over the grid", ""]
    lines += [f"- {n}" for n in monotonicity_notes(grid, args.target)] or ["No violations (tolerance 0.01)."]
    lines.append("")
    if ratios.empty:
        lines += [f"No ratios: the reference variant {args.reference!r} was not run.", ""]
        return "\n".join(lines)
    lines += [f"## {args.reference} against each variant (min–max over the rate grid)", "",
              "Ratios are reference / baseline at the same rate (mean over seeds); lower mean JCT is baseline / "
              "reference; n/a where a capacity search found no capacity. Every run finishes its whole workload, so "
              "throughput (finished requests over the run's duration) differs only by how long the queue takes to "
              "drain.", "", "All models, workloads and rates:", "", markdown_table(range_table(ratios)), ""]
    for (model, workload), group in ratios.groupby(["model", "workload"], sort=False):
        lines += [f"### {model} — {workload}", "", markdown_table(range_table(group)), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AccelgenError as error:
        sys.exit(f"accelgen_vs_baselines: error: {error}")
