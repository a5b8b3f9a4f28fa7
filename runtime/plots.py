"""Standard figures of runs and sweeps: pure functions from run outputs to matplotlib Figures.

The sweep report (``sweep_figures``, called by ``runtime.report.ComparisonCallback``), the W&B logger
(``run_figures``) and the notebooks (``notebooks/``) all draw with these functions, so a figure looks the same
wherever it appears.

The loaders (``load_sweep``, ``load_requests``, ``load_iterations``, ``load_gaps``, ``with_series``) are
``runtime.run_tables``'s, available here too. Figures group rows by ``series`` (the scheduler plus whatever else the
sweep varies apart from the arrival rate and the seed; ``runtime.run_tables``). Runs of one series at one rate are
replicates (seeds): curves show their mean with a min–max band. Every figure function takes ``by=`` to group by
another column instead (``by="runtime"`` for sim vs live).

Figures are ``matplotlib.figure.Figure`` objects built without pyplot: no global figure registry to fill during a
long sweep and no backend switch (``savefig`` renders PNG with Agg). In a notebook, ``display(fig)`` shows one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from runtime.core.run_log import atomic_write
# The loaders live in runtime.run_tables; they are re-exported so notebooks need one import.
from runtime.run_tables import load_gaps, load_iterations, load_requests, load_sweep, with_series  # noqa: F401

#: One colour per scheduler in every figure; the Oracle, the reference, in black.
_SCHEDULER_COLORS = {"vllm": "tab:red", "vllm_swap": "tab:pink", "orca": "tab:brown", "sarathi": "tab:blue",
                     "accelgen": "tab:green", "cacheopt": "tab:purple", "accelgen_cacheopt": "tab:olive",
                     "oracle": "black"}
_CLASS_ORDER = ["tight", "medium", "loose"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 110


# Choosing what to draw.

def pick_rate(frame: pd.DataFrame, by: str = "series") -> float | None:
    """The highest arrival rate at which every series ran (failing that, at which most did); None without rates."""
    if "arrival_rate" not in frame or frame["arrival_rate"].isna().all():
        return None
    counts = frame.dropna(subset=["arrival_rate"]).groupby("arrival_rate")[_by(frame, by)].nunique()
    return float(counts[counts == counts.max()].index.max())


# Helpers shared by the figures.

def _by(frame: pd.DataFrame, by: str) -> str:
    return by if by in frame or by != "series" else "scheduler"


def _legend_title(by: str) -> str | None:
    return None if by == "series" else by


def _figure_legend(fig: Figure, ax, title: str | None) -> None:
    """The figure's one legend: right of the panels, or below them when its labels are long."""
    handles, labels = ax.get_legend_handles_labels()
    if max(map(len, labels), default=0) <= 24:
        fig.legend(handles, labels, loc="outside right upper", title=title)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), title=title)


def _colors(labels) -> dict:
    labels = list(dict.fromkeys(labels))
    if all(label in _SCHEDULER_COLORS for label in labels):
        return {label: _SCHEDULER_COLORS[label] for label in labels}
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _at_rate(frame: pd.DataFrame, by: str, rate: float | None) -> tuple[pd.DataFrame, float | None]:
    rate = pick_rate(frame, by) if rate is None else rate
    return (frame if rate is None else frame[np.isclose(frame["arrival_rate"], rate)]), rate


def _rate_text(rate: float | None) -> str:
    return "" if rate is None or np.isnan(rate) else f" at {rate:g} req/s"


def _class_columns(table: pd.DataFrame) -> list[str]:
    names = [c[len("slo_attainment["):-1] for c in table.columns if c.startswith("slo_attainment[")]
    names.sort(key=lambda n: (_CLASS_ORDER.index(n) if n in _CLASS_ORDER else len(_CLASS_ORDER), n))
    return [f"slo_attainment[{n}]" for n in names]


def _log_ticks(axis) -> None:
    """Plain numbers on a log axis (0.05, 0.1, 0.2 rather than 5×10⁻²), 1-2-5 ticks when it spans few decades."""
    low, high = sorted(axis.get_view_interval())
    decades = np.log10(high / low) if low > 0 else np.inf
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _step_cdf(ax, values: np.ndarray, total: int, **style) -> None:
    """Fraction of ``total`` at or below x; values missing from ``values`` keep the curve below 1."""
    values = np.sort(values[np.isfinite(values) & (values > 0)])
    if values.size:
        ax.step(values, np.arange(1, values.size + 1) / max(total, 1), where="post", **style)


# Sweep figures.

def rate_curves(table: pd.DataFrame, by: str = "series") -> Figure:
    """Goodput, throughput and SLO attainment against the configured arrival rate, one line per series (mean
    over seeds, min–max band when there are several)."""
    by = _by(table, by)
    data = table.dropna(subset=["arrival_rate"])
    if data.empty:
        raise ValueError("rate curves need arrival_rate in the table (a rate sweep)")
    rates = sorted(data["arrival_rate"].unique())
    colors = _colors(data[by])
    num_seeds = int(data.groupby([by, "arrival_rate"]).size().max())
    fig = Figure(figsize=(13.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [("goodput_rps", "goodput (req/s)", "Goodput"), ("throughput_rps", "throughput (req/s)", "Throughput"),
              ("slo_attainment", "SLO attainment (% of requests)", "SLO attainment")]
    for ax, (col, ylabel, title) in zip(axes, panels):
        scale = 100.0 if col == "slo_attainment" else 1.0
        for i, (name, group) in enumerate(data.groupby(by, sort=False)):
            stats = group.groupby("arrival_rate")[col].agg(["mean", "min", "max"]).sort_index() * scale
            # Distinct markers, larger first: equal values (one rate, or curves that meet) stay visible.
            ax.plot(stats.index, stats["mean"], marker=_MARKERS[i % len(_MARKERS)], ms=max(9 - 1.2 * i, 4),
                    color=colors[name], label=str(name))
            if num_seeds > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colors[name], alpha=0.15, lw=0)
        ax.set(xlabel="arrival rate (req/s)", ylabel=ylabel, title=title)
        if len(rates) <= 12:
            ax.set_xticks(rates)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 103)
    seeds = f" (mean of {num_seeds} seeds, band: min–max)" if num_seeds > 1 else ""
    fig.suptitle(f"Load sweep: requests meeting their SLO (goodput) and finished (throughput) per second, and "
                 f"SLO attainment{seeds}")
    _figure_legend(fig, axes[0], _legend_title(by))
    return fig


def latency_cdfs(requests: pd.DataFrame, by: str = "series", rate: float | None = None, tbt: str = "max") -> Figure:
    """CDFs of TTFT and of each request's TBT (``tbt="max"``: its largest gap between tokens; ``"p99"``: the p99
    of its gaps), one line per series, log x, with each SLO class's target as a dashed line.

    ``rate=None`` picks ``pick_rate``: the highest arrival rate at which every series ran (runs of several seeds
    are pooled). A curve counts every request that arrived, so rejected or unfinished ones keep it below 1."""
    by = _by(requests, by)
    data, rate = _at_rate(requests, by, rate)
    if tbt not in ("max", "p99"):
        raise ValueError(f"tbt must be 'max' or 'p99', got {tbt!r}")
    tbt_col, tbt_label = {"max": ("tbt_max_s", "largest gap between tokens of a request (s)"),
                          "p99": ("tbt_p99_s", "p99 gap between tokens of a request (s)")}[tbt]
    colors = _colors(data[by])
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = [("ttft_s", "time to first token, TTFT (s)", "ttft_slo_s", "TTFT"),
              (tbt_col, tbt_label, "tbt_slo_s", "Time between tokens")]
    for ax, (col, xlabel, slo_col, title) in zip(axes, panels):
        for name, group in data.groupby(by, sort=False):
            # A one-token request has no gap: it is not part of the TBT curve.
            total = len(group) if col == "ttft_s" else int((group["num_output_tokens"] != 1).sum())
            _step_cdf(ax, group[col].to_numpy(float), total, color=colors[name], lw=1.6, label=str(name))
        if slo_col in data:
            slos = data.groupby("slo_class")[slo_col].median().sort_values()
            for (cls, value), style in zip(slos.items(), ["--", "-.", ":", (0, (5, 5))] * 4):
                ax.axvline(value, color="dimgrey", ls=style, lw=1.1, label=f"SLO {cls}: {value:.3g} s")
        ax.set(xscale="log", xlabel=xlabel, ylabel="fraction of requests (CDF)", ylim=(0, 1.02), title=title)
        _log_ticks(ax.xaxis)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Latency distributions per request{_rate_text(rate)}")
    return fig


def attainment_by_class(table: pd.DataFrame, by: str = "series") -> Figure:
    """SLO attainment overall and per SLO class: grouped bars per series, one panel per arrival rate (mean over
    seeds, min–max error bars when there are several)."""
    by = _by(table, by)
    columns = ["slo_attainment", *_class_columns(table)]
    labels = ["all"] + [c[len("slo_attainment["):-1] for c in columns[1:]]
    rates = sorted(table["arrival_rate"].dropna().unique()) or [np.nan]
    series = list(dict.fromkeys(table[by]))
    ncols = min(len(rates), 4)
    nrows = -(-len(rates) // ncols)
    width = max(4.0, 0.8 + 0.32 * len(series) * len(columns))
    fig = Figure(figsize=(width * ncols + 1.2, 3.9 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    bar = 0.8 / len(columns)
    palette = ["dimgrey", "tab:orange", "gold", "tab:cyan", "tab:olive", "tab:pink"]
    for ax, rate in zip(axes, rates):
        rows = table if np.isnan(rate) else table[np.isclose(table["arrival_rate"], rate)]
        stats = rows.groupby(by, sort=False)[columns].agg(["mean", "min", "max"]).reindex(series) * 100.0
        x = np.arange(len(series))
        for i, (col, label) in enumerate(zip(columns, labels)):
            mean = stats[(col, "mean")].to_numpy()
            err = np.vstack([mean - stats[(col, "min")], stats[(col, "max")] - mean])
            ax.bar(x + (i - (len(columns) - 1) / 2) * bar, mean, bar, color=palette[i % len(palette)], label=label,
                   yerr=err if len(rows) > len(series) else None, capsize=2)
        tilt = max(len(str(s)) for s in series) * len(series) > 40
        ax.set_xticks(x, [str(s) for s in series], rotation=20 if tilt else 0, ha="right" if tilt else "center")
        ax.set(title="all rates" if np.isnan(rate) else f"arrival rate {rate:g} req/s", ylim=(0, 105),
               xlabel="scheduler" if by in ("series", "scheduler") else by)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[::ncols]:
        ax.set_ylabel("SLO attainment (% of requests)")
    for ax in axes[len(rates):]:
        ax.set_visible(False)
    fig.suptitle("SLO attainment by SLO class")
    _figure_legend(fig, axes[0], "SLO class")
    return fig


def oracle_gap_histogram(gaps: pd.DataFrame, by: str = "series") -> Figure:
    """Histogram of the per-step relative gap to the per-iteration optimum (``oracle_gap.parquet``, steps solved
    to optimality; all rates pooled), as a share of each series' steps, log y."""
    by = _by(gaps, by)
    solved = gaps[(gaps["status"] == "optimal") & gaps["gap"].notna()] if len(gaps) else gaps
    if solved.empty:
        raise ValueError("no solved steps in the gap data (run with oracle.gap_accounting=true)")
    colors = _colors(solved[by])
    # The gap is in [-1, 1] (solvers.gap.relative_gap); slightly negative values are solver tolerance.
    top = min(max(float(solved["gap"].max()) * 100.0, 1.0), 100.0)
    pct = (solved["gap"].clip(lower=0.0) * 100.0).clip(upper=top)
    bins = np.linspace(0.0, top, 41)
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for name, group in solved.groupby(by, sort=False):
        values = pct[group.index]
        zero = float((group["gap"] <= 1e-9).mean())
        ax.hist(values, bins=bins, weights=np.full(len(values), 100.0 / len(values)), histtype="step", lw=1.8,
                color=colors[name], label=f"{name}: {len(values)} steps, {zero:.0%} at the optimum")
    ax.set(yscale="log", xlabel="relative gap to the per-step optimum, (J* − J) / (max(J*, J, 0) − min(J*, J, 0)) "
           "(%; 100 %: the batch scored ≤ 0)",
           ylabel="share of solved steps (%, log)", title="Per-step gap to the Oracle's optimum (all rates pooled)")
    _log_ticks(ax.yaxis)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, title=_legend_title(by))
    return fig


def oracle_gap_over_time(gaps: pd.DataFrame, by: str = "series", rate: float | None = None,
                         window: int = 50) -> Figure:
    """The per-step gap over a run (rolling mean over ``window`` steps) and the cumulative per-step objective of
    the heuristic's batches against the optimum's, one line per run at ``rate`` (``pick_rate`` when None)."""
    by = _by(gaps, by)
    data, rate = _at_rate(gaps[gaps["gap"].notna()], by, rate)
    if data.empty:
        raise ValueError("no solved steps in the gap data (run with oracle.gap_accounting=true)")
    colors = _colors(data[by])
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    runs_of = data.groupby(by)["job"].nunique()
    for job, run in data.groupby("job", sort=False):
        name = run[by].iloc[0]
        # Several runs of one series at this rate are seeds: name them by seed when the runs record it.
        seed = run["seed"].iloc[0] if "seed" in run else None
        label = str(name) if runs_of[name] == 1 else f"{name}, seed {seed}" if seed is not None else f"{name}, {job}"
        run = run.sort_values("time")
        # Capped as in the histogram: one batch of negative objective would otherwise hide the rest of the run.
        gap = run["gap"].clip(lower=0.0, upper=1.0).rolling(window, min_periods=1).mean() * 100.0
        left.plot(run["time"], gap, color=colors[name], lw=1.3, label=label)
        right.plot(run["time"], run["optimal_objective"].cumsum(), color=colors[name], ls="--", lw=1.3)
        right.plot(run["time"], run["heuristic_objective"].cumsum(), color=colors[name], lw=1.6, label=label)
    right.plot([], [], color="grey", lw=1.6, label="its batches")
    right.plot([], [], color="grey", ls="--", lw=1.3, label="the optimum")
    left.set(xlabel="time (s)", ylabel=f"relative gap (%, capped at 100; mean of {window} steps)",
             title="Per-step gap over the run")
    right.set(xlabel="time (s)", ylabel="cumulative per-step objective J",
              title="Objective of the heuristic's batches vs the optimum")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Gap to the per-iteration optimum over time{_rate_text(rate)}")
    return fig


def goodput_vs_oracle(table: pd.DataFrame, by: str = "series") -> Figure:
    """Each heuristic's goodput as a share of the Oracle's (``scheduler=oracle`` runs) at the same rate and seed."""
    by = _by(table, by)
    oracle = table[table["scheduler"] == "oracle"]
    if oracle.empty:
        raise ValueError("no scheduler=oracle run in the table")
    keys = [k for k in ("arrival_rate", "seed") if k in table and table[k].notna().any()]
    ref = oracle.groupby(keys)["goodput_rps"].mean().rename("oracle_rps") if keys else None
    rows = table[table["scheduler"] != "oracle"]
    rows = rows.join(ref, on=keys) if keys else rows.assign(oracle_rps=oracle["goodput_rps"].mean())
    rows = rows.assign(share=100.0 * rows["goodput_rps"] / rows["oracle_rps"])
    rates = sorted(rows["arrival_rate"].dropna().unique()) or [np.nan]
    series = list(dict.fromkeys(rows[by]))
    colors = _colors(series)
    fig = Figure(figsize=(max(6.5, 1.2 + 0.45 * len(rates) * len(series)), 4.4), layout="constrained")
    ax = fig.subplots()
    bar = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        share = rows[rows[by] == name].groupby("arrival_rate", dropna=False)["share"].mean()
        values = [share.get(r, np.nan) if not np.isnan(r) else share.mean() for r in rates]
        bars = ax.bar(np.arange(len(rates)) + (i - (len(series) - 1) / 2) * bar, values, bar, color=colors[name],
                      label=str(name))
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.axhline(100.0, color="black", ls="--", lw=1, label="Oracle")
    ax.set_xticks(np.arange(len(rates)), ["all" if np.isnan(r) else f"{r:g}" for r in rates])
    ax.set(xlabel="arrival rate (req/s)", ylabel="goodput, % of the Oracle's",
           title="Goodput relative to the per-iteration Oracle", ylim=(0, max(110.0, 1.08 * rows["share"].max())))
    ax.grid(axis="y", alpha=0.3)
    _figure_legend(fig, ax, None)
    return fig


def iteration_latency(iterations: pd.DataFrame, by: str = "series") -> Figure:
    """Per-iteration latency: CDFs of step time for decode-only steps and steps with prefill, and step time
    against tokens in the step, one colour per series."""
    by = _by(iterations, by)
    colors = _colors(iterations[by])
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for name, group in iterations.groupby(by, sort=False):
        ms = group["duration_s"].to_numpy(float) * 1e3
        prefill = group["prefill_tokens"].to_numpy() > 0
        for ax, mask in ((axes[0], ~prefill), (axes[1], prefill)):
            _step_cdf(ax, ms[mask], int(mask.sum()), color=colors[name], lw=1.6, label=f"{name} ({mask.sum()} steps)")
        tokens = (group["prefill_tokens"] + group["decode_tokens"]).to_numpy()
        axes[2].scatter(tokens[tokens > 0], ms[tokens > 0], s=5, alpha=0.35, color=colors[name], label=str(name),
                        rasterized=True)
    for ax, title in zip(axes[:2], ["Decode-only steps", "Steps with prefill tokens"]):
        ax.set(xscale="log", xlabel="iteration time (ms)", ylabel="fraction of steps (CDF)", ylim=(0, 1.02),
               title=title)
        _log_ticks(ax.xaxis)
    axes[2].set(xscale="log", yscale="log", xlabel="tokens in the step (prefill + decode)",
                ylabel="iteration time (ms)", title="Iteration time vs tokens")
    _log_ticks(axes[2].xaxis)
    _log_ticks(axes[2].yaxis)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, markerscale=3)
    fig.suptitle("Per-iteration latency")
    return fig


def save_figure(fig: Figure, figures_dir: str | Path | None, name: str) -> Path | None:
    """``fig`` as ``<figures_dir>/<name>.png`` (the directory is created); nothing when ``figures_dir`` is None."""
    if figures_dir is None:
        return None
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format="png"))
    return path


# Per-run figures.

def run_timeline(iterations: pd.DataFrame, summary: dict | None = None) -> Figure:
    """One run over time: iteration time, tokens per step, KV blocks in use and waiting requests (when the log
    has ``num_waiting``)."""
    summary = summary or {}
    t = iterations["start_time"].to_numpy(float)
    panels = 4 if "num_waiting" in iterations else 3
    fig = Figure(figsize=(12, 2.1 * panels + 0.6), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True)
    axes[0].plot(t, iterations["duration_s"] * 1e3, lw=0.6, color="tab:blue")
    axes[0].set(ylabel="iteration time (ms)", yscale="log")
    _log_ticks(axes[0].yaxis)
    # Decodes are one token each and far fewer than prefill tokens: they get their own scale, on the right.
    axes[1].plot(t, iterations["prefill_tokens"], lw=0.6, color="tab:orange")
    axes[1].set_ylabel("prefill tokens per step", color="tab:orange")
    decodes = axes[1].twinx()
    decodes.plot(t, iterations["decode_tokens"], lw=1.0, color="tab:green")
    decodes.set_ylabel("decodes per step", color="tab:green")
    decodes.set_ylim(bottom=0)
    blocks = iterations["kv_blocks_used"].to_numpy(float)
    total = summary.get("kv_num_blocks")
    if total:
        axes[2].plot(t, 100.0 * blocks / total, lw=0.8, color="tab:purple")
        axes[2].set(ylabel="KV cache in use (%)", ylim=(0, 102))
    else:
        axes[2].plot(t, blocks, lw=0.8, color="tab:purple")
        axes[2].set(ylabel="KV blocks in use")
    if panels == 4:
        axes[3].plot(t, iterations["num_waiting"], lw=0.8, color="tab:red", drawstyle="steps-post")
        axes[3].set(ylabel="waiting requests")
        axes[3].yaxis.set_major_locator(MaxNLocator(integer=True))
    clock = {"sim": "simulated time (s)", "live": "wall-clock time (s)"}.get(summary.get("runtime"), "time (s)")
    axes[-1].set_xlabel(clock)
    for ax in axes:
        ax.grid(alpha=0.3)
    what = " on ".join(str(summary[k]) for k in ("scheduler", "workload") if k in summary)
    fig.suptitle(f"Per-iteration timeline{': ' + what if what else ''} ({len(iterations)} iterations)")
    return fig


def run_figures(run_dir: str | Path) -> dict[str, Figure]:
    """The figures of one run directory: ``timeline``, ``latency_cdf`` and, with gap accounting, ``oracle_gap``
    (the caller saves or logs them; they hold no pyplot state). A figure whose table the run did not write
    (``results.mode=summary``) is left out."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    figures = {}
    if (run_dir / "iterations.parquet").exists():
        figures["timeline"] = run_timeline(pd.read_parquet(run_dir / "iterations.parquet"), summary)
    if (run_dir / "requests.parquet").exists():
        requests = pd.read_parquet(run_dir / "requests.parquet").assign(series=summary.get("scheduler", run_dir.name))
        figures["latency_cdf"] = latency_cdfs(requests)
    if (run_dir / "oracle_gap.parquet").exists():
        gaps = pd.read_parquet(run_dir / "oracle_gap.parquet").assign(series=summary.get("scheduler"), job=run_dir.name,
                                                                      seed=summary.get("seed"))
        if gaps["gap"].notna().any():
            figures["oracle_gap"] = oracle_gap_over_time(gaps)
    return figures


def sweep_figures(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write the standard PNGs of a sweep into its directory and return them by name:

    * ``rates.png`` (``rate_curves``) when the runs have arrival rates and more than one (series, rate) point;
    * ``latency_cdf.png`` (``latency_cdfs`` at ``pick_rate``) when the runs wrote ``requests.parquet``;
    * ``attainment_by_class.png`` when the summaries have per-class attainment;
    * ``oracle_gap.png`` (``oracle_gap_histogram``) when some run wrote ``oracle_gap.parquet`` with solved steps.

    A figure whose data is absent is skipped. ``table``: ``load_sweep``'s frame (or ``comparison_table``'s), when
    the caller has it already."""
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else with_series(table)
    by = _by(table, "series")
    builders = {}
    rated = table.dropna(subset=["arrival_rate"])
    if len(rated) and rated.groupby([by, "arrival_rate"]).ngroups > 1:
        builders["rates"] = lambda: rate_curves(table)
    requests = load_requests(sweep_dir, table)
    if len(requests):
        builders["latency_cdf"] = lambda: latency_cdfs(requests)
    if _class_columns(table):
        builders["attainment_by_class"] = lambda: attainment_by_class(table)
    gaps = load_gaps(sweep_dir, table)
    if len(gaps) and ((gaps["status"] == "optimal") & gaps["gap"].notna()).any():
        builders["oracle_gap"] = lambda: oracle_gap_histogram(gaps)
    paths = {}
    for name, build in builders.items():
        paths[name] = sweep_dir / f"{name}.png"
        atomic_write(paths[name], lambda p, figure=build(): figure.savefig(p, dpi=DPI, format="png"))
    return paths
