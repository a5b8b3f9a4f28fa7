"""The per-iteration goodput Oracle end to end against the heuristics (issue #4), through the real configs.

On the default workload (``mixed``, Llama-2-7B on A100-80GB, the default SLO classes) it runs ``scheduler=oracle``
and every heuristic (``accelgen``, ``sarathi``, ``vllm``, ``orca``) at each ``--rates`` x ``--seeds``. Each run is
``runtime.cli.run`` on a composed config (``progress=false``), i.e. exactly what ``accelgen <overrides>`` computes,
and keeps its run directory (``runs/<scheduler>__rate<r>__seed<s>/``) for the per-step tables. The heuristics run
with ``oracle.gap_accounting=true``: the Oracle is also solved on the state each of their steps faced
(``oracle_gap.parquet``; ``oracle.gap_every`` = ``--gap-every`` bounds the cost by solving every k-th step only, the
heuristic itself still schedules every step, so its run is the same whatever k is).

It reports, per rate (mean over seeds; every seed in ``runs.csv``): goodput, SLO attainment (overall and per
class), throughput, mean JCT, p99 TBT; for the heuristics the per-iteration gap (mean, p50, p99, share of steps at
zero gap) and which steps carry it (heavy steps, steps whose batch scores below zero, preempting steps, decode-only
steps); for the Oracle its fallback rate, the reasons of its fallbacks and its solve time. AccelGen's goodput is
compared with the Oracle's, rate by rate, against the target "within 5% of the Oracle's".

    .venv/bin/python bench/oracle_vs_heuristics.py                       # 3 rates x 3 seeds x 5 schedulers
    .venv/bin/python bench/oracle_vs_heuristics.py --rates 3.5 5.5 --seeds 0 1 --gap-every 1
    .venv/bin/python bench/oracle_vs_heuristics.py --quick               # smoke run: 1 rate, 1 seed, 300 requests

Determinism: ``--oracle-time-limit`` defaults to none (``oracle.time_limit_s=null``), so every Oracle solve (the
Oracle's own and gap accounting's) runs to optimality and reruns are identical whatever the machine's load; the
solve times are reported, never used. Pass ``--oracle-time-limit 0.05`` for the config's default.

Outputs in ``--out`` (default ``bench/results/oracle_vs_heuristics``): ``runs.csv`` (one row per scheduler x rate x
seed), ``summary.json``, ``summary.md`` and ``oracle_vs_heuristics.png`` (goodput and attainment against the rate
per scheduler, the mean per-iteration gap per heuristic).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tqdm.auto import tqdm

from accelgen_vs_baselines import flatten  # bench/ is on sys.path when a bench runs as a script
from runtime.cli import CONF_DIR, REPO_ROOT, run
from runtime.core.errors import AccelgenError, ConfigError
from runtime.core.run_log import atomic_write, write_json

ORACLE = "oracle"
HEURISTICS = ("accelgen", "sarathi", "vllm", "orca")
REFERENCE = "accelgen"
TARGET_RATIO = 0.95  # "AccelGen's end-to-end goodput within 5% of the Oracle's"
FULL = dict(rates=[3.5, 4.5, 5.5], seeds=[0, 1, 2], num_requests=1000)
QUICK = dict(rates=[3.5], seeds=[0], num_requests=300)
METRICS = [("goodput_rps", "goodput (req/s)"), ("slo_attainment", "SLO att."), ("slo_attainment[tight]", "tight"),
           ("slo_attainment[medium]", "medium"), ("slo_attainment[loose]", "loose"),
           ("throughput_rps", "throughput (req/s)"), ("jct_mean_s", "mean JCT (s)"), ("tbt_p99_s", "p99 TBT (ms)")]
GAP_KEYS = ["oracle_gap_mean", "oracle_gap_p50", "oracle_gap_p99", "oracle_gap_zero_share"]
ORACLE_KEYS = ["oracle_fallback_rate", "oracle_solve_time_p50_s", "oracle_solve_time_p99_s"]
# Step categories of the gap breakdown (columns of a run's joined gap table).
CATEGORIES = [
    ("heavy", "heavy step (took longer than the tight class's TBT SLO)"),
    ("negative", "the heuristic's batch scores below zero (its SLO penalties exceed its progress)"),
    ("preempting", "the heuristic preempted in this step"),
    ("decode_only", "decode-only step (no prefill tokens)"),
    ("with_waiting", "requests were waiting when the step was decided"),
    ("waiting_not_admitting", "requests were waiting and the heuristic started none of them in this step"),
]


def compose_cfg(overrides) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def run_name(scheduler: str, rate: float, seed: int) -> str:
    return f"{scheduler}__rate{rate:g}__seed{seed}"


def overrides_of(scheduler: str, rate: float, seed: int, args) -> list[str]:
    limit = "null" if args.oracle_time_limit is None else repr(float(args.oracle_time_limit))
    out = [f"scheduler={scheduler}", f"workload.num_requests={args.num_requests}",
           f"workload.arrival.rate={float(rate)!r}", f"seed={seed}", f"oracle.time_limit_s={limit}"]
    if scheduler != ORACLE:
        out += ["oracle.gap_accounting=true", f"oracle.gap_every={args.gap_every}"]
    return out


# Per-run analysis of the step tables (in the worker, beside the run) ------------------------------------------------
def oracle_checks(run_dir: Path) -> dict:
    """The Oracle's decisions: every fallback must carry a recorded reason; reasons, statuses, time limits."""
    frame = pd.read_parquet(run_dir / "oracle.parquet")
    fell = frame[frame["fallback"]]
    reasons = fell["reason"].fillna("").value_counts().to_dict()
    partly = int((~frame["fallback"] & (frame["reason"] == "plan partly ran")).sum())
    return {
        "oracle_check_steps": int(len(frame)),
        "oracle_check_fallbacks": int(len(fell)),
        "oracle_check_fallbacks_without_reason": int((fell["reason"].fillna("") == "").sum()),
        "oracle_check_fallback_reasons": reasons,
        "oracle_check_partly_ran": partly,
        "oracle_check_time_limit_steps": int((frame["status"] == "time_limit").sum()),
        "oracle_solve_time_max_s": float(frame["solve_time_s"].max()) if len(frame) else None,
        "oracle_decision_time_p50_s": float(frame["decision_time_s"].median()) if len(frame) else None,
        "oracle_candidates_mean": float(frame["num_candidates"].mean()) if len(frame) else None,
    }


def gap_table(run_dir: Path, tight_tbt_s: float) -> pd.DataFrame:
    """Gap rows solved to optimality, joined with the step they were taken at (``iterations.parquet``)."""
    gap = pd.read_parquet(run_dir / "oracle_gap.parquet")
    steps = pd.read_parquet(run_dir / "iterations.parquet")
    gap = gap[(gap["status"] == "optimal") & gap["gap"].notna()]
    joined = gap.merge(steps[["iteration", "duration_s", "prefill_tokens", "decode_tokens", "batch_size"]],
                       on="iteration", how="left", validate="one_to_one")
    # Requests waiting when the step was decided: arrived by then, first scheduled at that step or later (requests
    # preempted back to the queue are not counted). Admitting: some request was first scheduled at that step.
    requests = pd.read_parquet(run_dir / "requests.parquet")
    arrival = np.sort(requests["arrival_time"].to_numpy())
    first = np.sort(requests["first_scheduled_time"].to_numpy())
    t = joined["time"].to_numpy()
    started_before = np.searchsorted(first, t - 1e-12, side="left")
    joined["waiting"] = np.searchsorted(arrival, t, side="right") - started_before
    joined["admitting"] = np.searchsorted(first, t + 1e-12, side="right") > started_before
    joined["heavy"] = joined["duration_s"] > tight_tbt_s
    joined["negative"] = joined["heuristic_objective"] < 0
    joined["preempting"] = joined["heuristic_preempted"] > 0
    joined["decode_only"] = joined["prefill_tokens"] == 0
    joined["with_waiting"] = joined["waiting"] > 0
    joined["waiting_not_admitting"] = joined["with_waiting"] & ~joined["admitting"]
    return joined


def gap_breakdown(joined: pd.DataFrame) -> dict:
    """Per category: share of steps, mean gap inside and outside, share of the total gap."""
    out = {"gap_rows": int(len(joined)), "gap_sum": float(joined["gap"].sum()),
           "gap_large_share": float((joined["gap"] > 0.5).mean()) if len(joined) else None}
    total = joined["gap"].sum()
    for name, _ in CATEGORIES:
        inside = joined[joined[name]]
        outside = joined[~joined[name]]
        out[f"{name}_step_share"] = float(len(inside) / len(joined)) if len(joined) else None
        out[f"{name}_gap_mean"] = float(inside["gap"].mean()) if len(inside) else None
        out[f"{name}_gap_mean_else"] = float(outside["gap"].mean()) if len(outside) else None
        out[f"{name}_gap_mass_share"] = float(inside["gap"].sum() / total) if total > 0 else None
    return out


def one_run(task: dict) -> dict:
    """One run: its summary flattened, plus the Oracle's checks or the heuristic's gap breakdown."""
    run_dir = Path(task["run_dir"])
    try:
        summary = run(compose_cfg(task["overrides"]), output_dir=run_dir)
    except AccelgenError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    row = {k: v for k, v in flatten(summary).items()
           if not k.startswith(("slo_classes_s", "slo_reference_s")) and k not in ("seed", "scheduler")}
    if task["scheduler"] == ORACLE:
        checks = oracle_checks(run_dir)
        row.update({k: v for k, v in checks.items() if not isinstance(v, dict)})
        row["oracle_check_fallback_reasons"] = "; ".join(
            f"{k or '(none)'}: {v}" for k, v in checks["oracle_check_fallback_reasons"].items())
    else:
        tight = summary["slo_classes_s"]["tight"]["tbt_slo_s"]
        row.update({f"gapx_{k}": v for k, v in gap_breakdown(gap_table(run_dir, tight)).items()})
    return row


def run_all(tasks: list[dict], jobs: int) -> list[dict]:
    """``[one_run(t) for t in tasks]`` on ``jobs`` processes, in task order whatever order they finish in."""
    results: list = [None] * len(tasks)
    # Longest first (high rates; Oracle and whole-prompt baselines with gap accounting) for a short tail.
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i]["rate"])
    with tqdm(total=len(tasks), desc="runs", unit="run", dynamic_ncols=True) as bar:
        if jobs <= 1:
            for i in order:
                results[i] = one_run(tasks[i])
                bar.set_postfix_str(tasks[i]["name"], refresh=False)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(one_run, tasks[i]): i for i in order}
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    bar.set_postfix_str(tasks[i]["name"], refresh=False)
                    bar.update()
    return results


# Aggregation ---------------------------------------------------------------------------------------------------------
def ratio_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """AccelGen goodput / Oracle goodput per rate: of the seed means, and per seed (min, max)."""
    rows = []
    for rate, group in frame.groupby("rate", sort=True):
        ref = group[group.scheduler == REFERENCE].set_index("seed")["goodput_rps"]
        orc = group[group.scheduler == ORACLE].set_index("seed")["goodput_rps"]
        both = ref.to_frame("ref").join(orc.to_frame("oracle"), how="inner")
        if both.empty:
            continue
        per_seed = both["ref"] / both["oracle"]
        mean_ratio = both["ref"].mean() / both["oracle"].mean()
        rows.append(dict(rate=rate, accelgen_goodput_rps=both["ref"].mean(), oracle_goodput_rps=both["oracle"].mean(),
                         ratio=mean_ratio, ratio_seed_min=per_seed.min(), ratio_seed_max=per_seed.max(),
                         seeds_within_5pct=int((per_seed >= TARGET_RATIO).sum()), seeds=len(per_seed),
                         within_5pct=bool(mean_ratio >= TARGET_RATIO),
                         accelgen_beats_oracle=bool(mean_ratio > 1.0)))
    return pd.DataFrame(rows)


def breakdown_frame(frame: pd.DataFrame, by=("scheduler", "rate")) -> pd.DataFrame:
    """Gap breakdown per ``by`` group of heuristic runs, pooled over its runs (weighted by the rows each solved)."""
    rows = []
    heur = frame[frame.scheduler != ORACLE]
    for key, group in heur.groupby(list(by), sort=False):
        n = group["gapx_gap_rows"].to_numpy(dtype=float)
        mass = group["gapx_gap_sum"].to_numpy(dtype=float)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), steps=int(n.sum()),
                   gap_mean=float(mass.sum() / n.sum()) if n.sum() else np.nan,
                   gap_large_share=float(np.nansum(group["gapx_gap_large_share"] * n) / n.sum()) if n.sum() else np.nan)
        for name, _ in CATEGORIES:
            share = group[f"gapx_{name}_step_share"].to_numpy(dtype=float)
            inside_n = share * n
            inside_mass = np.nan_to_num(group[f"gapx_{name}_gap_mass_share"].to_numpy(dtype=float)) * mass
            row[f"{name}_step_share"] = float(inside_n.sum() / n.sum()) if n.sum() else np.nan
            row[f"{name}_gap_mean"] = float(inside_mass.sum() / inside_n.sum()) if inside_n.sum() else np.nan
            out_n = n.sum() - inside_n.sum()
            row[f"{name}_gap_mean_else"] = float((mass.sum() - inside_mass.sum()) / out_n) if out_n else np.nan
            row[f"{name}_gap_mass_share"] = float(inside_mass.sum() / mass.sum()) if mass.sum() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def oracle_check_summary(frame: pd.DataFrame) -> dict:
    orc = frame[frame.scheduler == ORACLE]
    if orc.empty:
        return {}
    reasons: dict[str, int] = {}
    for text in orc["oracle_check_fallback_reasons"].fillna(""):
        for part in filter(None, text.split("; ")):
            key, _, count = part.rpartition(": ")
            reasons[key] = reasons.get(key, 0) + int(count)
    steps = int(orc["oracle_check_steps"].sum())
    fallbacks = int(orc["oracle_check_fallbacks"].sum())
    return dict(runs=len(orc), steps=steps, fallbacks=fallbacks, fallback_rate=fallbacks / steps if steps else None,
                fallbacks_without_reason=int(orc["oracle_check_fallbacks_without_reason"].sum()),
                fallback_reasons=reasons, partly_ran=int(orc["oracle_check_partly_ran"].sum()),
                time_limit_steps=int(orc["oracle_check_time_limit_steps"].sum()),
                solve_time_max_s=float(orc["oracle_solve_time_max_s"].max()),
                all_fallbacks_recorded=bool(orc["oracle_check_fallbacks_without_reason"].sum() == 0))


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return dict(nproc=os.cpu_count(), cpu=cpu, machine=platform.machine(), python=platform.python_version(),
                ortools=version("ortools"), pyscipopt=version("pyscipopt"), numpy=np.__version__)


# Report --------------------------------------------------------------------------------------------------------------
def _cell(value, digits: int = 3) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub table (pandas' to_markdown needs tabulate, which this project does not install)."""
    rows = [list(frame.columns), ["---"] * frame.shape[1],
            *[[_cell(v, digits) for v in row] for row in frame.itertuples(index=False)]]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def rate_table(means: pd.DataFrame, rate: float) -> pd.DataFrame:
    group = means[means.rate == rate].set_index("scheduler")
    rows = []
    for scheduler in group.index:
        g = group.loc[scheduler]
        row = {"scheduler": scheduler}
        for key, label in METRICS:
            value = g.get(key, np.nan)
            row[label] = value * 1e3 if key == "tbt_p99_s" else value
        if scheduler == ORACLE:
            row["gap mean / p50 / p99 / zero share"] = "—"
            row["Oracle fallback rate, solve p50 / p99 (ms)"] = (
                f"{g['oracle_fallback_rate']:.4f}, {1e3 * g['oracle_solve_time_p50_s']:.2f} / "
                f"{1e3 * g['oracle_solve_time_p99_s']:.1f}")
        else:
            row["gap mean / p50 / p99 / zero share"] = " / ".join(f"{g[k]:.3f}" for k in GAP_KEYS)
            row["Oracle fallback rate, solve p50 / p99 (ms)"] = "—"
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(argv, args, frame, means, ratios, breakdown, pooled, checks, machine, wall_s) -> str:
    lines = [
        "# Oracle vs heuristics (issue #4)", "",
        f"`.venv/bin/python bench/oracle_vs_heuristics.py {' '.join(argv)}`", "",
        f"Workload `mixed` (defaults: Llama-2-7B on A100-80GB, default SLO classes), {args.num_requests} requests per "
        f"run, rates {args.rates} req/s, seeds {args.seeds}; {len(frame)} runs in {wall_s / 60:.1f} min on "
        f"{args.jobs} process(es). Oracle solves: `oracle.time_limit_s="
        f"{'null' if args.oracle_time_limit is None else args.oracle_time_limit}`; gap accounting on every k-th "
        f"heuristic step, k = {args.gap_every} (`oracle.gap_every={args.gap_every}`).",
        "",
        f"Machine: {machine['nproc']} cores ({machine['cpu']}, {machine['machine']}), Python {machine['python']}, "
        f"OR-Tools {machine['ortools']}.", "",
    ]
    if "error" in frame and frame["error"].notna().any():
        failed = frame[frame["error"].notna()]
        lines += ["## Failed runs", "", markdown_table(failed[["scheduler", "rate", "seed", "error"]]), ""]
    lines += ["## Per rate (mean over seeds)", "",
              "Gap: per-iteration `(J* − J) / (max(J*, J, 0) − min(J*, J, 0))` (`solvers.gap.relative_gap`: `(J* − J) / J*` "
              "for a batch scoring ≥ 0, 1 for one scoring ≤ 0 < J*) on the steps solved (`oracle_gap_*`; mean over seeds of "
              "each run's statistic). p99 TBT in ms.", ""]
    for rate in sorted(means.rate.unique()):
        lines += [f"### {rate:g} req/s", "", markdown_table(rate_table(means, rate)), ""]
    if not ratios.empty:
        show = ratios.copy()
        show["within 5%"] = np.where(show.within_5pct, "yes", "no")
        show = show[["rate", "accelgen_goodput_rps", "oracle_goodput_rps", "ratio", "ratio_seed_min", "ratio_seed_max",
                     "seeds_within_5pct", "seeds", "within 5%"]]
        lines += ["## AccelGen goodput / Oracle goodput", "",
                  f"Target: AccelGen's end-to-end goodput within 5% of the Oracle's (ratio ≥ {TARGET_RATIO}). "
                  "`ratio` is of the seed means; min/max over the per-seed ratios.", "", markdown_table(show, 4), ""]
    if not breakdown.empty:
        lines += ["## Where the gap is", "",
                  "Categories of step (a step can be in several):", ""]
        lines += [f"- `{name}`: {text}" for name, text in CATEGORIES]
        long = []
        for row in pooled.to_dict("records"):
            for name, _ in CATEGORIES:
                long.append({"heuristic": row["scheduler"], "category": name, "steps solved": row["steps"],
                             "share of steps": row[f"{name}_step_share"], "mean gap in": row[f"{name}_gap_mean"],
                             "mean gap outside": row[f"{name}_gap_mean_else"],
                             "share of total gap": row[f"{name}_gap_mass_share"]})
        lines += ["", "All rates and seeds pooled: per category its share of the solved steps, the mean gap inside "
                  "and outside it, and its share of the summed gap.", "", markdown_table(pd.DataFrame(long)), ""]
        cols = ["scheduler", "rate", "steps", "gap_mean", "gap_large_share",
                *[f"{name}_gap_mass_share" for name, _ in CATEGORIES]]
        lines += ["Per rate (seeds pooled): each category's share of the summed gap; `gap_large_share`: steps with "
                  "gap > 0.5. Shares of steps and means per category are in `summary.json` (`gap_breakdown`).", "",
                  markdown_table(breakdown[cols].rename(columns=lambda c: c.removesuffix("_gap_mass_share"))), ""]
    if checks:
        lines += ["## Oracle fallbacks", "",
                  f"{checks['steps']} Oracle steps over {checks['runs']} runs: {checks['fallbacks']} fallbacks (rate "
                  f"{checks['fallback_rate']:.5f}), {checks['fallbacks_without_reason']} without a recorded reason; "
                  f"reasons {checks['fallback_reasons'] or '{}'}; {checks['partly_ran']} steps where the plan only "
                  f"partly ran (recorded, not a fallback); {checks['time_limit_steps']} solves stopped by the time "
                  f"limit; slowest solve {checks['solve_time_max_s'] * 1e3:.1f} ms.", ""]
    return "\n".join(lines)


def plot(means: pd.DataFrame, frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    order = [ORACLE, *HEURISTICS]
    for i, scheduler in enumerate(order):
        group = means[means.scheduler == scheduler].sort_values("rate")
        if group.empty:
            continue
        style = dict(color="black", lw=2.2, ls="--") if scheduler == ORACLE else dict(color=f"C{i}")
        seeds = frame[frame.scheduler == scheduler]
        for ax, key in zip(axes[:2], ("goodput_rps", "slo_attainment")):
            ax.plot(group.rate, group[key], marker="o", label=scheduler, **style)
            ax.scatter(seeds.rate, seeds[key], s=10, alpha=0.5, color=style["color"])
        if scheduler != ORACLE:
            axes[2].plot(group.rate, group["oracle_gap_mean"], marker="o", label=f"{scheduler} mean", **style)
            axes[2].plot(group.rate, group["oracle_gap_p50"], marker=".", ls=":", color=style["color"],
                         label=f"{scheduler} p50")
    axes[0].set(title="goodput (req/s)", xlabel="arrival rate (req/s)")
    axes[1].set(title="SLO attainment", xlabel="arrival rate (req/s)", ylim=(-0.02, 1.02))
    axes[2].set(title="per-iteration gap to the Oracle (solvers.gap.relative_gap)", xlabel="arrival rate (req/s)")
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7, ncol=2)
    fig.suptitle("Oracle vs heuristics — mixed, Llama-2-7B / A100 (dots: seeds)")
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", nargs="+", type=float, help=f"arrival rates, req/s (default {FULL['rates']})")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"seeds (default {FULL['seeds']})")
    parser.add_argument("--num-requests", type=int, help=f"requests per run (default {FULL['num_requests']})")
    parser.add_argument("--schedulers", nargs="+", default=[ORACLE, *HEURISTICS], choices=[ORACLE, *HEURISTICS])
    parser.add_argument("--gap-every", type=int, default=5,
                        help="oracle.gap_every for the heuristics: solve the Oracle on every k-th step (default 5)")
    parser.add_argument("--oracle-time-limit", type=float, default=None,
                        help="oracle.time_limit_s in seconds (default: none, so that runs are reproducible)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (1: in-process)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "oracle_vs_heuristics")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 rate, 1 seed, 300 requests")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.gap_every < 1:
        raise ConfigError(f"--gap-every must be >= 1, got {args.gap_every}")
    if args.num_requests < 1:
        raise ConfigError(f"--num-requests must be >= 1, got {args.num_requests}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [dict(name=run_name(s, r, seed), scheduler=s, rate=float(r), seed=seed,
                  overrides=overrides_of(s, r, seed, args), run_dir=str(args.out / "runs" / run_name(s, r, seed)))
             for r in args.rates for seed in args.seeds for s in args.schedulers]
    print(f"{len(args.schedulers)} schedulers x {len(args.rates)} rates x {len(args.seeds)} seeds, "
          f"{args.num_requests} requests per run, gap_every={args.gap_every}, "
          f"oracle.time_limit_s={args.oracle_time_limit}, {args.jobs} jobs -> {args.out}")
    results = run_all(tasks, args.jobs)
    frame = pd.DataFrame([dict(scheduler=t["scheduler"], rate=t["rate"], seed=t["seed"],
                               run_dir=os.path.relpath(t["run_dir"], args.out), **res)
                          for t, res in zip(tasks, results)])
    atomic_write(args.out / "runs.csv", lambda p: frame.to_csv(p, index=False))

    ok = frame[frame["error"].isna()] if "error" in frame else frame
    order = {s: i for i, s in enumerate([ORACLE, *HEURISTICS])}
    means = (ok.groupby(["scheduler", "rate"], sort=False).mean(numeric_only=True).drop(columns="seed")
             .reset_index().sort_values(["rate", "scheduler"], key=lambda c: c.map(order) if c.name == "scheduler"
                                        else c, kind="stable").reset_index(drop=True))
    ratios = ratio_frame(ok)
    breakdown = breakdown_frame(ok)
    pooled = breakdown_frame(ok, by=("scheduler",))
    checks = oracle_check_summary(ok)
    machine = machine_info()
    wall = time.perf_counter() - t0
    keep = ["scheduler", "rate", *[k for k, _ in METRICS], "tbt_p50_s", "jct_p99_s", "num_preemptions",
            *GAP_KEYS, *ORACLE_KEYS, "oracle_solve_time_max_s", "wall_s"]
    summary = dict(
        command=f".venv/bin/python bench/oracle_vs_heuristics.py {' '.join(argv)}".strip(),
        settings=dict(workload="mixed", model="llama2_7b", hardware="a100_80g", rates=args.rates, seeds=args.seeds,
                      num_requests=args.num_requests, gap_every=args.gap_every,
                      oracle_time_limit_s=args.oracle_time_limit, jobs=args.jobs),
        machine=machine, wall_s=wall,
        per_rate=means[[k for k in keep if k in means.columns]].to_dict("records"),
        accelgen_over_oracle=ratios.to_dict("records"),
        target=dict(text="AccelGen's end-to-end goodput within 5% of the Oracle's", ratio_at_least=TARGET_RATIO,
                    met_at_rates=[float(r) for r in ratios.loc[ratios.within_5pct, "rate"]] if len(ratios) else []),
        gap_breakdown=breakdown.to_dict("records"),
        gap_breakdown_pooled=pooled.to_dict("records"),
        oracle_fallbacks=checks,
    )
    write_json(args.out / "summary.json", summary)
    report = summary_markdown(argv, args, frame, means, ratios, breakdown, pooled, checks, machine, wall)
    atomic_write(args.out / "summary.md", lambda p: p.write_text(report))
    plot(means, ok, args.out / "oracle_vs_heuristics.png")

    print(f"\n{len(frame)} runs in {wall / 60:.1f} min -> {args.out}")
    show = means[["scheduler", "rate", "goodput_rps", "slo_attainment", "throughput_rps", "jct_mean_s", "tbt_p99_s",
                  *[k for k in GAP_KEYS if k in means], *[k for k in ORACLE_KEYS if k in means]]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if not ratios.empty:
        print("\nAccelGen / Oracle goodput:")
        print(ratios.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if checks:
        print(f"\nOracle fallbacks: {checks['fallbacks']} of {checks['steps']} steps, "
              f"{checks['fallbacks_without_reason']} without a reason; reasons {checks['fallback_reasons']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AccelgenError as error:
        sys.exit(f"oracle_vs_heuristics: error: {error}")
