"""CacheOPT against vLLM (recompute, swap), Sarathi-Serve, AccelGen and AccelGen + CacheOPT with KV as the bottleneck.

Every run is ``experiment=cacheopt_vs_baselines`` (conf/experiment/cacheopt_vs_baselines.yaml: Llama-2-7B on an
A100, a quarter of the memory-derived KV blocks, the mixed workload with bursty Gamma arrivals, cv = 3) plus the
variant's overrides, through ``runtime.cli.run`` on a composed config (``progress=false``), so it is exactly what
``accelgen experiment=cacheopt_vs_baselines scheduler=<name> ...`` computes (issue #5, algorithms.md sections 7-8).

It measures, at every rate of a grid and for ``--seeds`` seeds: p95 TTFT, p95 TBT (pooled gaps), p99 of each
request's largest gap, TTFT / TBT / SLO attainment, goodput, preemptions (swaps, recomputes and their stall time)
and CacheOPT's own counters (requests embedded in other requests' unwritten KV, proactive extensions, extensions
served from the reserve). Per seed it finds the capacity: the highest Gamma arrival rate with SLO attainment
>= 0.90 (``runtime.capacity_search``, bisection to ``--rtol``). Each reference (CacheOPT and the combination) is
then compared with every other variant next to the CacheOPT abstract's claims: tail TBT and tail TTFT ratios
(baseline p95 / reference p95, "up to" = the largest over the grid; also the p99 of each request's largest gap),
TTFT and TBT attainment differences (pp and relative %) and the capacity ratio.

    .venv/bin/python bench/cacheopt_vs_baselines.py                                  # main suite (six schedulers)
    .venv/bin/python bench/cacheopt_vs_baselines.py --seeds 3 --num-requests 2000    # the spec's setting
    .venv/bin/python bench/cacheopt_vs_baselines.py --suite sensitivity --seeds 1    # CacheOPT's knobs and ablations
    .venv/bin/python bench/cacheopt_vs_baselines.py --only cacheopt sarathi --rates 0.5 1 2
    .venv/bin/python bench/cacheopt_vs_baselines.py --variants 'q90=scheduler=cacheopt,scheduler.cacheopt.quantile=0.9'
    .venv/bin/python bench/cacheopt_vs_baselines.py --quick                           # smoke run, seconds
    .venv/bin/python bench/cacheopt_vs_baselines.py --replot --out DIR               # tables and plots again, no runs

Outputs in ``--out`` (default ``bench/results/cacheopt_vs_baselines[_<suite>]``, not committed): ``runs.csv`` (one
row per variant x rate x seed, every summary key flattened), ``capacity.csv`` (one row per variant x seed),
``ratios.csv`` (reference vs each other variant at every rate, seed means), ``command.txt`` (for ``--replot``),
``summary.md`` (per-rate tables, capacities, the claims table), ``metrics.png`` (p95 TTFT, p95 TBT, TTFT / TBT /
SLO attainment and preemptions against the rate; seed means with min-max bands) and ``capacity.png``. The spec's
setting is 3 seeds and 2000 requests per run (algorithms.md section 8); the defaults are 3 and 1000 for speed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

# The issue #3 bench holds the config composition, the capacity-search task and the process pool; reuse them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from accelgen_vs_baselines import (  # noqa: E402
    flatten, markdown_table, ratio, run_all, search, simulate, write_csv)
from accelgen_vs_baselines import select_variants as _select_variants  # noqa: E402

from runtime.capacity_search import find_violations  # noqa: E402
from runtime.cli import REPO_ROOT  # noqa: E402
from runtime.core.errors import AccelgenError, ConfigError  # noqa: E402
from runtime.core.run_log import atomic_write  # noqa: E402

EXPERIMENT = "experiment=cacheopt_vs_baselines"
RATE_KEY, SIZE_KEY = "workload.arrival.rate", "workload.num_requests"
_CO = "scheduler=cacheopt"
_K = "scheduler.cacheopt."
SUITES = {
    "main": {
        "cacheopt": [_CO], "vllm": ["scheduler=vllm"], "vllm_swap": ["scheduler=vllm_swap"],
        "sarathi": ["scheduler=sarathi"], "accelgen": ["scheduler=accelgen"],
        "accelgen_cacheopt": ["scheduler=accelgen_cacheopt"],
    },
    # CacheOPT's documented choices (algorithms.md 7.1 and section 9, rows 11-12) and one-component-off ablations,
    # with Sarathi-Serve (the same batching without CacheOPT's KV management) as the yardstick.
    "sensitivity": {
        "cacheopt": [_CO],
        "oracle_len": [_CO, f"{_K}predictor=oracle"],
        "regressor": [_CO, f"{_K}predictor=regressor"],
        "noisy_0.3": [_CO, f"{_K}predictor=noisy", f"{_K}noise_sigma=0.3"],
        "pad_quantile": [_CO, f"{_K}padding_mode=quantile"],
        "beta_0.01": [_CO, f"{_K}beta=0.01"],
        "beta_0.05": [_CO, f"{_K}beta=0.05"],
        "hoeffding_n4": [_CO, f"{_K}hoeffding_n=4"],
        "no_padding": [_CO, f"{_K}padding=false"],
        "no_estimation": [_CO, f"{_K}estimation=false"],
        "no_reuse": [_CO, f"{_K}reuse=false"],
        "no_proactive": [_CO, f"{_K}proactive=false"],
        "no_reserve": [_CO, f"{_K}reserve=false"],
        "no_victim_order": [_CO, f"{_K}victim_order=false"],
        "no_swap_or_recompute": [_CO, f"{_K}swap_or_recompute=false"],
        "sarathi": ["scheduler=sarathi"],
    },
}
REFERENCES = {"main": ["cacheopt", "accelgen_cacheopt"], "sensitivity": ["cacheopt"]}
# The attainment transition of every scheduler on this experiment lies in 0.25-3 req/s (calibrated with 1000
# requests, seed 0: CacheOPT 0.999 at 0.25, 0.92 at 1, 0.09 at 3; AccelGen keeps 0.68 at 3 by demoting lost requests).
FULL = dict(rates=[0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0], seeds=3, num_requests=1000, rtol=0.02,
            max_evaluations=16)
QUICK = dict(rates=[0.5, 2.0], seeds=1, num_requests=150, rtol=0.1, max_evaluations=4)
QUICK_VARIANTS = ["cacheopt", "sarathi"]
SPEC_NUM_REQUESTS, SPEC_SEEDS = 2000, 3

# Per-run columns the tables and plots use (every other summary key is kept in runs.csv too).
METRICS = ["slo_attainment", "ttft_attainment", "tbt_attainment", "ttft_p95_s", "ttft_p99_s", "tbt_p95_s",
           "tbt_p99_s", "tbt_max_p99_s", "goodput_rps", "throughput_rps", "num_preemptions", "num_swaps",
           "num_recomputes", "swap_time_s", "recompute_time_s", "cacheopt_num_embedded", "cacheopt_num_extensions",
           "cacheopt_num_reserve_extensions", "cacheopt_num_guest_evictions"]
# (ratios.csv column, label, metric, how, the abstract's claim). lower_x: base/ref (lower is better); pp:
# 100 (ref - base); rel: 100 (ref/base - 1) %. The claim's "up to" is the largest value over the grid.
CLAIMS = [
    ("tbt_p95_lower_x", "tail TBT, p95 of pooled gaps (lower)", "tbt_p95_s", "lower_x", "up to 3.29×"),
    ("tbt_max_p99_lower_x", "tail TBT, p99 of per-request max gap (lower)", "tbt_max_p99_s", "lower_x", "—"),
    ("ttft_p95_lower_x", "tail TTFT, p95 (lower)", "ttft_p95_s", "lower_x", "up to 2.83×"),
    ("ttft_p99_lower_x", "tail TTFT, p99 (lower)", "ttft_p99_s", "lower_x", "—"),
    ("ttft_attainment_pp", "TTFT attainment (pp)", "ttft_attainment", "pp", "+47 (if pp)"),
    ("ttft_attainment_rel", "TTFT attainment (relative %)", "ttft_attainment", "rel", "+47%"),
    ("tbt_attainment_pp", "TBT attainment (pp)", "tbt_attainment", "pp", "+53 (if pp)"),
    ("tbt_attainment_rel", "TBT attainment (relative %)", "tbt_attainment", "rel", "+53%"),
    ("slo_attainment_pp", "SLO attainment, both (pp)", "slo_attainment", "pp", "—"),
    ("capacity_x", "capacity at 90% SLO attainment", "capacity", "x", "up to 1.58×"),
]
# (metric, panel title with units, log y when it spans more than this factor, None: linear fixed [0, 1]).
PANELS = [("ttft_p95_s", "p95 TTFT (s)", 20.0), ("tbt_p95_s", "p95 TBT, pooled gaps (s)", 20.0),
          ("tbt_max_p99_s", "p99 of per-request max TBT gap (s)", 20.0),
          ("ttft_attainment", "TTFT SLO attainment", None), ("tbt_attainment", "TBT SLO attainment", None),
          ("slo_attainment", "SLO attainment (TTFT and TBT)", None),
          ("num_preemptions", "preemptions per run", 1e9), ("goodput_rps", "goodput (req/s)", 1e9)]
# Tables of seed means at every rate in summary.md (metric, label, format).
RATE_TABLES = [("slo_attainment", "SLO attainment", "{:.3f}"), ("ttft_attainment", "TTFT attainment", "{:.3f}"),
               ("tbt_attainment", "TBT attainment", "{:.3f}"), ("ttft_p95_s", "p95 TTFT (s)", "{:.2f}"),
               ("tbt_p95_s", "p95 TBT, pooled (ms)", "ms"), ("tbt_max_p99_s", "p99 per-request max gap (ms)", "ms"),
               ("num_preemptions", "preemptions per run", "{:.1f}"), ("num_swaps", "of which swaps", "{:.1f}"),
               ("cacheopt_num_embedded", "CacheOPT: requests embedded", "{:.0f}"),
               ("cacheopt_num_extensions", "CacheOPT: proactive extensions", "{:.0f}"),
               ("cacheopt_num_reserve_extensions", "CacheOPT: extensions from the reserve", "{:.0f}")]


def run_overrides(variant_overrides, num_requests: int, seed: int, rate: float | None = None) -> tuple[str, ...]:
    """The Hydra overrides of one run: the experiment, the variant, size, seed and (unless searching) the rate."""
    out = (EXPERIMENT, *variant_overrides, f"{SIZE_KEY}={num_requests}", f"seed={seed}")
    return out if rate is None else (*out, f"{RATE_KEY}={float(rate)!r}")


def job(task: tuple):
    """One pool task: a capacity search (a chain of runs) or one grid run; one pool keeps both cores busy."""
    kind, payload = task
    return search(payload) if kind == "search" else simulate(payload)


def capacity_value(capacity: pd.DataFrame) -> pd.Series:
    """Capacity for ratios: 0 where even ``--min-rate`` failed (none sustained), NaN where the search errored."""
    value = capacity["capacity"].astype(float)
    return value.where(capacity["status"] != "below_min", 0.0)


def ratios_frame(grid: pd.DataFrame, capacity: pd.DataFrame, references: list[str]) -> pd.DataFrame:
    """Each reference against every other variant at every grid rate (seed means), one row per pair and rate."""
    caps = capacity.assign(value=capacity_value(capacity)).groupby("variant", sort=False)["value"].mean()
    rows = []
    for reference in references:
        ref = grid[grid.variant == reference].set_index("rate")
        if ref.empty:
            continue
        for base_name, base in grid[grid.variant != reference].groupby("variant", sort=False):
            both = ref.join(base.set_index("rate"), rsuffix="_base", how="inner")
            out = pd.DataFrame({"reference": reference, "baseline": base_name, "rate": both.index})
            for column, _, metric, how, _ in CLAIMS:
                if metric == "capacity":
                    out[column] = float(ratio(caps.get(reference, np.nan), caps.get(base_name, np.nan)))
                    continue
                a, b = both[metric].to_numpy(float), both[f"{metric}_base"].to_numpy(float)
                out[column] = {"lower_x": ratio(b, a), "x": ratio(a, b), "pp": 100.0 * (a - b),
                               "rel": 100.0 * (ratio(a, b) - 1.0)}[how]
            rows.append(out)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _show(value: float, how: str) -> str:
    if np.isnan(value):
        return "n/a"
    if how in ("pp", "rel"):
        # Rounded first so that a difference of -1e-15 shows as +0.0, not -0.0.
        return "+∞%" if np.isinf(value) else f"{round(value, 1) + 0.0:+.1f}{'%' if how == 'rel' else ' pp'}"
    return "∞" if np.isinf(value) else f"{value:.2f}×"


def claim_cell(group: pd.DataFrame, column: str, how: str) -> str:
    """"up to" (max over the grid, at its rate) and the min–max range; capacity has one value."""
    values = group[["rate", column]].dropna()
    if values.empty:
        return "n/a"
    if how == "x":  # capacity: one value per pair
        return _show(float(values[column].iloc[0]), how)
    best = values.loc[values[column].idxmax()]
    return (f"{_show(best[column], how)} @ {best.rate:g} "
            f"({_show(values[column].min(), how)} … {_show(values[column].max(), how)})")


def claims_table(ratios: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per claim, one column per baseline: max over rates @ rate (min … max)."""
    table = {"metric": [c[1] for c in CLAIMS], "abstract": [c[4] for c in CLAIMS]}
    for base, group in ratios[ratios.reference == reference].groupby("baseline", sort=False):
        table[f"vs {base}"] = [claim_cell(group, column, how) for column, _, _, how, _ in CLAIMS]
    return pd.DataFrame(table)


def capacity_table(capacity: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean and min–max over seeds ("none" where attainment stayed below target at --min-rate)."""
    rows = []
    for variant, group in capacity.groupby("variant", sort=False):
        value = capacity_value(group)
        shown = ["none" if s == "below_min" else ("error" if np.isnan(v) else f"{v:.3f}")
                 for v, s in zip(value, group.status)]
        rows.append(dict(variant=variant, mean=value.mean(), min=value.min(), max=value.max(),
                         per_seed=" ".join(shown), statuses=" ".join(group.status.astype(str)),
                         evaluations=int(group.evaluations.fillna(0).sum()),
                         monotonic=bool(group.monotonic.fillna(False).all())))
    return pd.DataFrame(rows)


def rate_table(grid: pd.DataFrame, metric: str, fmt: str) -> pd.DataFrame | None:
    """Variants x rates of one metric (seed means); None when no variant reports it."""
    if metric not in grid or grid[metric].isna().all():
        return None
    wide = grid.pivot_table(index="variant", columns="rate", values=metric, sort=False)
    wide = wide.dropna(how="all")
    show = (lambda v: f"{1000 * v:.0f}") if fmt == "ms" else fmt.format
    out = pd.DataFrame({"variant": wide.index})
    for rate in wide.columns:
        out[f"{rate:g}"] = [("" if np.isnan(v) else show(v)) for v in wide[rate]]
    return out


def padding_table(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The padding each CacheOPT-like variant applies per application: R and R_up (tokens) of seed 0."""
    cols = sorted(c for c in frame.columns if c.startswith("cacheopt_padding[groups][app:") and
                  (c.endswith("[R]") or c.endswith("[R_up]")))
    if not cols:
        return None
    first = frame[frame[cols].notna().any(axis=1)].drop_duplicates("variant")
    keep = ["variant", *[c for c in ("cacheopt_padding[mode]", "cacheopt_padding[predictor]") if c in frame]]
    out = first[keep + cols].rename(columns=lambda c: c.replace("cacheopt_padding[groups][app:", "")
                                    .replace("][", " ").replace("cacheopt_padding[", "").rstrip("]"))
    return out.reset_index(drop=True)


def plot_metrics(frame: pd.DataFrame, path: Path, target: float, title: str) -> None:
    """One PNG: every panel metric against the rate, seed mean with a min–max band per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = frame.groupby(["variant", "rate"], sort=False)
    mean, lo, hi = stats.mean(numeric_only=True), stats.min(numeric_only=True), stats.max(numeric_only=True)
    variants = list(dict.fromkeys(frame.variant))
    ncols = 4
    nrows = -(-len(PANELS) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), constrained_layout=True)
    for ax, (metric, label, log_span) in zip(axes.flat, PANELS):
        if metric not in mean:
            ax.set_visible(False)
            continue
        for i, variant in enumerate(variants):
            if variant not in mean.index.get_level_values(0):
                continue
            m, a, b = mean.loc[variant][metric], lo.loc[variant][metric], hi.loc[variant][metric]
            style = "-" if i < 10 else "--"  # a 16-variant suite runs out of the 10 default colours
            ax.plot(m.index, m.to_numpy(), style, color=f"C{i % 10}", marker="o", ms=3, label=variant)
            ax.fill_between(m.index, a.to_numpy(), b.to_numpy(), color=f"C{i % 10}", alpha=0.15, lw=0)
        ax.set(title=label, xlabel="arrival rate, Gamma cv = 3 (req/s)", ylabel=label)
        if log_span is None:
            ax.axhline(target, color="grey", lw=0.8, ls="--")
            ax.set_ylim(-0.02, 1.02)
        else:
            positive = mean[metric][mean[metric] > 0]
            if not positive.empty and positive.max() / positive.min() > log_span:
                ax.set_yscale("log")
    for ax in list(axes.flat)[len(PANELS):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, ncol=2 if len(variants) > 8 else 1)
    fig.suptitle(title)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_capacity(table: pd.DataFrame, path: Path, target: float, title: str) -> None:
    """Bars of the mean capacity with min–max over seeds; "none" written where no rate sustained the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(table) + 2), 4.5), constrained_layout=True)
    x = np.arange(len(table))
    mean = table["mean"].fillna(0).to_numpy()
    err = np.vstack([mean - table["min"].fillna(0).to_numpy(), table["max"].fillna(0).to_numpy() - mean])
    ax.bar(x, mean, yerr=err, capsize=4, color=[f"C{i % 10}" for i in range(len(table))])
    for i, row in enumerate(table.itertuples()):
        ax.text(i, row.max if row.max > 0 else 0, "none" if row.max == 0 else f"{row.mean:.2f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, table.variant, rotation=30, ha="right")
    ax.set(ylabel=f"capacity (req/s): highest Gamma rate\nwith SLO attainment ≥ {target:.0%}", title=title)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="main")
    parser.add_argument("--variants", nargs="+", default=[], metavar="NAME=OVERRIDE,OVERRIDE",
                        help="extra variants (overrides separated by commas)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these variants")
    parser.add_argument("--references", nargs="+", metavar="NAME",
                        help="variants compared with every other one (default: cacheopt and accelgen_cacheopt)")
    parser.add_argument("--rates", nargs="+", type=float, help="Gamma arrival rates, req/s")
    parser.add_argument("--seeds", type=int, help=f"seeds 0..N-1 per rate (spec: {SPEC_SEEDS})")
    parser.add_argument("--capacity-seeds", type=int, help="capacity searches on seeds 0..N-1 (default: --seeds)")
    parser.add_argument("--num-requests", type=int, help=f"requests per run (spec: {SPEC_NUM_REQUESTS})")
    parser.add_argument("--target", type=float, default=0.90, help="SLO attainment that defines capacity")
    parser.add_argument("--rtol", type=float)
    parser.add_argument("--max-evaluations", type=int, help="runs per capacity search at most")
    parser.add_argument("--start-rate", type=float, default=1.0, help="first rate of each capacity search")
    parser.add_argument("--min-rate", type=float, default=0.05)
    parser.add_argument("--max-rate", type=float, default=64.0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (1: in-process)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replot", action="store_true",
                        help="no runs: summary.md, ratios.csv and plots again from --out's runs.csv and capacity.csv")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {' and '.join(QUICK_VARIANTS)}, 2 rates, 1 seed, 150 requests")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and args.only is None:
        args.only = [v for v in QUICK_VARIANTS if v in SUITES[args.suite]]
    if args.capacity_seeds is None:
        args.capacity_seeds = args.seeds
    if args.references is None:
        args.references = REFERENCES[args.suite]
    if args.out is None:
        name = "cacheopt_vs_baselines" + ("" if args.suite == "main" else f"_{args.suite}") + (
            "_quick" if args.quick else "")
        args.out = REPO_ROOT / "bench" / "results" / name
    return args


def select_variants(args) -> dict[str, list[str]]:
    return _select_variants(args, SUITES)


def simulate_all(args, variants, seeds, cap_seeds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every capacity search and grid run on one process pool: (runs, capacity) frames."""
    search_kw = dict(target=args.target, rtol=args.rtol, min_rate=args.min_rate, max_rate=args.max_rate,
                     max_evaluations=args.max_evaluations,
                     start_rate=min(max(args.start_rate, args.min_rate), args.max_rate))
    cap_keys = [(v, s) for v in variants for s in cap_seeds]
    grid_keys = [(v, float(r), s) for v in variants for r in args.rates for s in seeds]
    # Searches first: each is a chain of runs, so started last they would leave one core idle at the end.
    tasks = [("search", dict(overrides=run_overrides(variants[v], args.num_requests, s), rate_key=RATE_KEY,
                             search=search_kw)) for v, s in cap_keys]
    tasks += [("run", run_overrides(variants[v], args.num_requests, s, r)) for v, r, s in grid_keys]
    print(f"{len(variants)} variants, rates {args.rates}, {args.num_requests} requests per run "
          f"(spec: {SPEC_NUM_REQUESTS}), {len(seeds)} seed(s) (spec: {SPEC_SEEDS}), capacity on "
          f"{len(cap_seeds)} seed(s), {args.jobs} jobs")
    results = run_all(job, tasks, args.jobs, "searches + runs")
    capacity = pd.DataFrame([dict(variant=v, seed=s, **res) for (v, s), res in zip(cap_keys, results)])
    drop = {"workload", "model", "hardware", "seed"}
    frame = pd.DataFrame([dict(variant=v, rate=r, seed=s, **{k: x for k, x in flatten(res).items() if k not in drop})
                          for (v, r, s), res in zip(grid_keys, results[len(cap_keys):])])
    return frame, capacity


def load_results(args, variants) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``--replot``: a previous run's frames from ``--out``, with its rates, seeds and size put back into ``args``
    (so the summary describes the data, not this command line) and its command line from command.txt."""
    frame, capacity = pd.read_csv(args.out / "runs.csv"), pd.read_csv(args.out / "capacity.csv")
    missing = sorted(set(frame.variant) - set(variants))
    if missing:
        raise ConfigError(f"--replot: {args.out / 'runs.csv'} has variants {missing} outside --suite {args.suite}")
    args.rates = sorted(set(frame.rate))
    args.seeds = int(frame.seed.max()) + 1
    args.capacity_seeds = int(capacity.seed.max()) + 1
    args.num_requests = int(frame.num_requests.iloc[0])
    command = args.out / "command.txt"
    shown = command.read_text().split() if command.exists() else ["(unknown: no command.txt)"]
    return frame, capacity, shown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    variants = select_variants(args)
    references = [r for r in args.references if r in variants]
    seeds, cap_seeds = list(range(args.seeds)), list(range(args.capacity_seeds))
    args.out.mkdir(parents=True, exist_ok=True)

    argv_shown = sys.argv[1:] if argv is None else argv
    if args.replot:
        frame, capacity, argv_shown = load_results(args, variants)
        variants = {v: variants[v] for v in dict.fromkeys(frame.variant)}
    else:
        frame, capacity = simulate_all(args, variants, seeds, cap_seeds)
        atomic_write(args.out / "command.txt", lambda p: p.write_text(" ".join(argv_shown) + "\n"))
        write_csv(args.out / "capacity.csv", capacity)
        write_csv(args.out / "runs.csv", frame)

    grid = frame.groupby(["variant", "rate"], sort=False).mean(numeric_only=True).reset_index()
    caps = capacity_table(capacity)
    ratios = ratios_frame(grid, capacity, references)
    if not ratios.empty:
        write_csv(args.out / "ratios.csv", ratios)
    else:
        (args.out / "ratios.csv").unlink(missing_ok=True)  # a previous run's would contradict summary.md
    title = f"experiment=cacheopt_vs_baselines ({args.suite}), {args.num_requests} requests, {args.seeds} seed(s)"
    plot_metrics(frame, args.out / "metrics.png", args.target, title)
    plot_capacity(caps, args.out / "capacity.png", args.target, title)
    report = summary_markdown(args, argv_shown, variants, references, caps, capacity, grid, ratios, frame)
    atomic_write(args.out / "summary.md", lambda p: p.write_text(report))

    wall = frame["wall_s"].dropna() if "wall_s" in frame else pd.Series(dtype=float)
    print(f"\n{len(frame)} grid runs + {int(capacity.evaluations.fillna(0).sum())} capacity runs in "
          f"{time.perf_counter() - t0:.1f} s (mean {wall.mean():.2f} s per grid run) -> {args.out}")
    print(caps.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for reference in references:
        print(f"\n{reference} against each variant: max over rates @ rate (min … max):")
        print(claims_table(ratios, reference).to_string(index=False))
    return 0


def summary_markdown(args, argv, variants, references, caps, capacity, grid, ratios, frame) -> str:
    lines = [
        f"# CacheOPT vs baselines ({args.suite} suite)", "",
        f"`python bench/cacheopt_vs_baselines.py {' '.join(argv)}`", "",
        f"`{EXPERIMENT}` (kv.num_blocks_scale 0.25, mixed_gamma cv 3); {len(frame)} grid runs, "
        f"{args.num_requests} requests each (spec: {SPEC_NUM_REQUESTS}), seeds 0–{args.seeds - 1} "
        f"(spec: {SPEC_SEEDS}); rates {', '.join(f'{r:g}' for r in args.rates)} req/s. Capacity: the largest rate "
        f"with SLO attainment ≥ {args.target} (rtol {args.rtol}, at most {args.max_evaluations} runs, seeds "
        f"0–{args.capacity_seeds - 1}, from {args.start_rate} req/s).", "",
        "Variants: " + "; ".join(f"**{n}** `{' '.join(o)}`" for n, o in variants.items()), "",
        "## Capacity (req/s)", "",
        "Mean and min–max over seeds; `none`: attainment < target even at "
        f"{args.min_rate} req/s (counted as 0).", "",
        markdown_table(caps), "",
    ]
    if "error" in frame and frame["error"].notna().any():
        failed = frame[frame["error"].notna()]
        lines += ["## Failed runs", "", markdown_table(failed[["variant", "rate", "seed", "error"]]), ""]
    lines += ["## Seed means at each rate (req/s)", ""]
    for metric, label, fmt in RATE_TABLES:
        table = rate_table(grid, metric, fmt)
        if table is not None:
            lines += [f"**{label}**", "", markdown_table(table), ""]
    pads = padding_table(frame)
    if pads is not None:
        lines += ["## Padding per application (tokens; R = error range p1–p99, R_up = p99 of the positive error)",
                  "", markdown_table(pads), ""]
    lines += ["## Monotonicity of SLO attainment over the grid", ""]
    notes = [f"- {v}: {x}" for v, g in grid.groupby("variant", sort=False)
             for x in find_violations(zip(g.rate, g.slo_attainment), target=args.target)]
    lines += notes or ["No violations (tolerance 0.01)."]
    lines.append("")
    for reference in references:
        lines += [f"## {reference} against each variant", "",
                  "Seed means at the same rate. Lower tail = baseline / reference; pp = 100 (reference − baseline); "
                  "relative = reference / baseline − 1. Cells: the largest value over the grid @ its rate "
                  "(min … max over the grid).", "", markdown_table(claims_table(ratios, reference)), ""]
    if not references:
        lines += ["No ratios: none of the references was run.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AccelgenError as error:
        sys.exit(f"cacheopt_vs_baselines: error: {error}")
