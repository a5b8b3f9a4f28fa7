"""Renders ``bench/sim_vs_live.py``'s results from what its ``--out`` holds: ``table.md`` (the comparison, the speed
probe's and the elasticities' tables), the plot (measured against predicted step times, run-level metrics simulated
over live) and the BENCHMARKS.md-ready section (machine, commands, cost model, tables and notes)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from runtime.core.run_log import atomic_write  # noqa: E402

REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "sim_vs_live"
# (summary key, label); all compared as relative difference sim vs live.
METRICS = [("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("tbt_p50_s", "TBT p50"),
           ("tbt_p99_s", "TBT p99"), ("goodput_rps", "goodput")]
MAPE_TARGET, METRIC_TOL = 10.0, 0.15
KINDS = ("decode", "prefill", "mixed")


def scaled_mape(steps: pd.DataFrame, factor) -> float:
    """Replay MAPE (%) with every prediction multiplied by ``factor`` (a number, or one per step)."""
    return float(((steps.predicted_s * factor - steps.measured_s).abs() / steps.measured_s).mean() * 100)


def within_tolerance(rels) -> bool:
    """Every relative difference finite and within ``METRIC_TOL``."""
    return all(np.isfinite(r) and abs(r) <= METRIC_TOL for r in rels)


def with_level(comp: pd.DataFrame, iters: pd.DataFrame) -> pd.DataFrame:
    """Add each run's speed level: ``level`` = median of measured / predicted over its live steps, and
    ``level_mape_pct``, the replay MAPE with every prediction scaled by it.

    A level that moves between runs of one experiment is the machine's speed moving (on a shared host: other
    tenants' use of the cache and memory), which no fixed cost model follows; the MAPE at the run's own level is
    what is left, the error of the cost model's shape. Diagnostic only: the targets are on the unscaled figures.
    """
    rows = []
    for (sched, rate), g in iters.groupby(["scheduler", "rate"], sort=False):
        level = float((g.measured_s / g.predicted_s).median())
        rows.append(dict(scheduler=sched, rate=rate, level=level, level_mape_pct=scaled_mape(g, level)))
    return comp.drop(columns=["level", "level_mape_pct"], errors="ignore").merge(
        pd.DataFrame(rows), on=["scheduler", "rate"], how="left")


def _fmt_pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:+.1%}".replace("%", " %")


def _fmt_s(x) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _fmt_num(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3g}"


def markdown_table(comp: pd.DataFrame) -> str:
    head = ("| scheduler | rate (req/s) | live steps | iter MAPE (decode / prefill / mixed) | live / predicted "
            "(MAPE at that level) | engine gap | "
            + " | ".join(f"{label} live → sim" for _, label in METRICS) + " | targets |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in comp.itertuples():
        d = r._asdict()
        per_kind = " / ".join("–" if not np.isfinite(d[f"iter_mape_{k}_pct"]) else f"{d[f'iter_mape_{k}_pct']:.1f}"
                              for k in KINDS)
        cells = []
        for key, _ in METRICS:
            live, sim, rel = d[f"{key}_live"], d[f"{key}_sim"], d[f"{key}_rel"]
            fmt = _fmt_num if key == "goodput_rps" else _fmt_s
            cells.append(f"{fmt(live)} → {fmt(sim)} ({_fmt_pct(rel)})")
        ok = ("MAPE ✓" if r.iter_ok else "MAPE ✗") + ", " + ("metrics ✓" if r.metrics_ok else "metrics ✗")
        level = f"×{r.level:.2f} ({r.level_mape_pct:.1f} %)" if np.isfinite(d.get("level", math.nan)) else "–"
        lines.append(f"| {r.scheduler} | {r.rate:g} | {r.num_live_steps} | **{r.iter_mape_pct:.1f} %** ({per_kind}) | "
                     f"{level} | {r.engine_gap_median_ms:.2f} ms | " + " | ".join(cells) + f" | {ok} |")
    return "\n".join(lines) + "\n"


def sensitivity_table(comp: pd.DataFrame) -> str:
    """Elasticities per pair (``elasticities``), empty without ``--sensitivity``."""
    cols = [f"{k}_elasticity" for k, _ in METRICS]
    if not set(cols) <= set(comp.columns):
        return ""
    head = "| scheduler | rate (req/s) | " + " | ".join(f"{label}" for _, label in METRICS) + " |"
    lines = ["Elasticity of each simulated metric to the step times (`--sensitivity`: % change per % of step time):",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in comp.itertuples():
        d = r._asdict()
        lines.append(f"| {r.scheduler} | {r.rate:g} | " + " | ".join(
            "–" if not np.isfinite(d[c]) else f"{d[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _with_factor(comp: pd.DataFrame) -> pd.DataFrame:
    """Outputs written before the profile kept its own probe level scaled by the probe level itself."""
    return comp if "probe_factor" in comp else comp.assign(probe_factor=comp.probe_level)


def probe_table(comp: pd.DataFrame) -> str:
    """The speed probe's columns (``sim_vs_live``'s docstring): empty when the run had no probe."""
    if "probe_level" not in comp or comp["probe_level"].isna().all():
        return ""
    comp = _with_factor(comp)
    head = ("| scheduler | rate (req/s) | probe level before → after | probe factor | live / predicted | iter MAPE "
            "at the probe factor | " + " | ".join(f"{label} sim@probe vs live" for _, label in METRICS)
            + " | targets at the probe factor |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in comp.itertuples():
        d = r._asdict()
        cells = [_fmt_pct(d[f"{key}_rel_probe"]) for key, _ in METRICS]
        ok = (("MAPE ✓" if r.probe_iter_ok else "MAPE ✗") + ", "
              + ("metrics ✓" if r.probe_metrics_ok else "metrics ✗"))
        level = f"×{r.level:.2f}" if np.isfinite(d.get("level", math.nan)) else "–"
        lines.append(f"| {r.scheduler} | {r.rate:g} | ×{r.probe_level_before:.2f} → ×{r.probe_level_after:.2f} | "
                     f"×{r.probe_factor:.2f} | {level} | {r.probe_mape_pct:.1f} % | " + " | ".join(cells)
                     + f" | {ok} |")
    return "\n".join(lines) + "\n"


def plot(comp: pd.DataFrame, iters: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.35]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (sched, sub) in enumerate(iters.groupby("scheduler", sort=False)):
        ax1.scatter(sub.measured_s * 1e3, sub.predicted_s * 1e3, s=5, alpha=0.35, color=colors[i % len(colors)],
                    label=f"{sched} (MAPE {sub.ape_pct.mean():.1f} %)", rasterized=True)
    lo = max(min(iters.measured_s.min(), iters.predicted_s.min()) * 1e3 * 0.8, 1e-3)
    hi = max(iters.measured_s.max(), iters.predicted_s.max()) * 1e3 * 1.25
    xs = np.array([lo, hi])
    ax1.plot(xs, xs, "k-", lw=1, label="predicted = measured")
    ax1.fill_between(xs, xs * 0.9, xs * 1.1, color="k", alpha=0.08, label="±10 %")
    ax1.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured live step time (ms)",
            ylabel="cost model prediction of the same batch (ms)",
            title=f"Per-iteration latency, {len(iters):,} live steps (MAPE {iters.ape_pct.mean():.1f} %)")
    ax1.legend(fontsize=8, loc="upper left")
    labels = [f"{r.scheduler}\n{r.rate:g}/s" for r in comp.itertuples()]
    x = np.arange(len(comp))
    width = 0.8 / len(METRICS)
    for j, (key, label) in enumerate(METRICS):
        ratios = (1 + comp[f"{key}_rel"]).to_numpy(dtype=float)
        ax2.bar(x + (j - (len(METRICS) - 1) / 2) * width, ratios, width, label=label, color=colors[j % len(colors)])
    ax2.axhspan(1 - METRIC_TOL, 1 + METRIC_TOL, color="g", alpha=0.1, label="±15 %")
    ax2.axhline(1.0, color="k", lw=1)
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set(ylabel="simulated / live", title="Run-level metrics, simulation over live")
    ax2.legend(fontsize=8, ncol=3, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def profile_command(model: str, source: str, default_threads: int | None = None, out: str | None = None) -> str:
    """The accelgen-profile command that wrote a cost model, read back from its ``source`` line.

    ``runtime.threads`` is spelled out when the profile ran with other than ``default_threads`` (torch's default on
    the machine), ``profile.out`` when the YAML was not written to ``conf/cost_model`` (``out``: its folder).
    """
    found = re.search(r"\((median|min) of (\d+) after (\d+) warmup", source or "")
    grid = re.search(r"; (full|quick) grid", source or "")
    threads = re.search(r"(\d+) torch threads", source or "")
    command = f"accelgen-profile model={model}"
    if threads and default_threads is not None and int(threads.group(1)) != default_threads:
        command += f" runtime.threads={threads.group(1)}"
    command += (f" profile.out={out}" if out else "") + " profile.overwrite=true"
    if found:
        stat, repeats, warmup = found.group(1), int(found.group(2)), int(found.group(3))
        command += f" profile.stat={stat}" if stat != "median" else ""
        command += f" profile.repeats={repeats}" if repeats != 5 else ""
        command += f" profile.warmup={warmup}" if warmup != 1 else ""
    if grid and grid.group(1) != "full":
        command += f" profile.grid={grid.group(1)}"
    served = re.search(r"with (\S+) at (\S+) req/s", source or "")
    if served:
        rates = served.group(2).replace("/", ",")
        command += f" 'profile.serve_rates=[{rates}]'"
        if served.group(1) != "sarathi/vllm":
            command += f" 'profile.serve_schedulers=[{served.group(1).replace('/', ',')}]'"
    return command


def section(meta: dict, comp: pd.DataFrame, iters: pd.DataFrame, out: Path = DEFAULT_OUT) -> str:
    """The BENCHMARKS.md-ready section, from the run's meta.json and tables (in ``out``)."""
    cm, m = meta["cost_model"], meta["machine"]
    e = cm.get("fit_error") or {}
    threads = meta["threads"] or m["default_threads"]
    n_ok = int((comp.iter_ok & comp.metrics_ok).sum())
    rel_cols = [f"{k}_rel" for k, _ in METRICS]
    within = int((comp[rel_cols].abs() <= METRIC_TOL).to_numpy().sum())
    others = meta.get("other_cores", math.nan)
    bias = ((iters.predicted_s - iters.measured_s) / iters.measured_s).mean()
    lines = [
        f"## Simulator against the live runtime ({meta['model']} on CPU)",
        "",
        f"The same `workload=live_small` experiment ({meta['num_requests']} requests, Poisson, seed {meta['seed']}) "
        f"run live (`runtime=live`: a real {meta['model']} forward pass per step, wall clock) and simulated "
        f"(`runtime=sim hardware=cpu cost_model={meta['cost_model_name']}`: the `accelgen-profile` fit of that forward "
        "pass on this machine, with the live run's KV block counts). Per-iteration error: every live step's exact "
        "composition replayed through the cost model. Run-level: each run's own summary, simulated vs live "
        "(relative difference in brackets). Targets: MAPE < 10 %, every metric within 15 %.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, torch {m['torch']}, "
        f"{threads} torch threads, float32. Run {meta['started']} ({meta['wall_s'] / 60:.1f} min); other processes "
        f"used {others:.2f} of the {m['cores']} cores on average meanwhile"
        + (" (**the machine was shared: timings are noisy**)." if others > 0.25 else " (a quiet machine)."),
        "",
        "```",
        profile_command(meta["model"], cm.get("source", ""), m["default_threads"],
                        str(Path(meta["cost_model_file"]).parent) if meta.get("cost_model_file") else None),
        meta["command"],
        "```",
        "",
        f"Cost model `{meta['cost_model_name']}`: β0 {cm['beta0'] * 1e3:.3f} ms, β1 {cm['beta1'] * 1e6:.2f} "
        f"µs/token (n_knee {cm['n_knee']:g}), β2 {cm['beta2'] * 1e9:.2f} ns/token², β3 {cm['beta3'] * 1e9:.1f} "
        f"ns/context token, β4 {cm['beta4'] * 1e6:.1f} µs/sequence"
        + (f" (+ β5 {cm['beta5'] * 1e6:.1f} µs for each of the first {cm['s_knee']} sequences)"
           if cm.get("beta5") else "") + ", engine_overhead_s "
        f"{cm.get('engine_overhead_s', 0):g}; held-out profile MAPE {e.get('iteration', math.nan):.1f} % (decode "
        f"{e.get('iteration_decode', math.nan):.1f}, prefill {e.get('iteration_prefill', math.nan):.1f}, mixed "
        f"{e.get('iteration_mixed', math.nan):.1f})"
        + (f"; settling: a decode-only step k steps after a prefill takes ×(1 + {cm['settle_amplitude']:.3f}·"
           f"{cm['settle_decay']:g}^k)." if cm.get("settle_amplitude") else "; no settling term."),
        "",
        *([f"Re-simulated {meta['resimulated']} from the live runs stored in `{meta['resimulated_from']}` "
           "(`--resimulate`: no model ran; the live columns are that run's).", ""]
          if meta.get("resimulated_from") else []),
        markdown_table(comp),
        f"Over all {len(iters):,} live steps the replay MAPE is **{iters.ape_pct.mean():.1f} %** (p90 "
        f"{np.percentile(iters.ape_pct, 90):.1f} %, mean signed error {bias:+.1%}); {within} of {comp[rel_cols].size} "
        f"run-level comparisons are within 15 %; {n_ok} of {len(comp)} scheduler/rate pairs meet both targets. The "
        "engine gap is the host time between two live steps (scheduling, bookkeeping), "
        f"{np.nanmedian(iters.gap_s) * 1e3:.2f} ms at the median, {comp.engine_gap_share.mean():.1%} of the busy time "
        "on average; the cost model (engine_overhead_s = 0) leaves it out.",
        "",
        history_note(iters),
        "",
        *([probe_note(comp, iters, e)] if probe_note(comp, iters, e) else []),
        *([sensitivity_table(comp), ""] if sensitivity_table(comp) else []),
        "![simulated vs live](docs/sim_vs_live.png)",
        "",
        f"Files: `{_shown(out)}/` (`comparison.csv`, `runs.csv`, `iterations.parquet`, `table.md`, `meta.json`).",
        "",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as BENCHMARKS.md cites files)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT.resolve())) if path.is_relative_to(REPO_ROOT.resolve()) else str(path)


def probe_note(comp: pd.DataFrame, iters: pd.DataFrame, fit_error: dict | None = None) -> str:
    """The speed-probe paragraph and table (empty without a probe); ``fit_error`` is the cost model's, whose
    ``probe_level`` (the same probe, taken during the profile) is the reference for the machine's speed."""
    table = probe_table(comp)
    if not table:
        return ""
    comp = _with_factor(comp)
    factors = iters.merge(comp[["scheduler", "rate", "probe_factor"]], on=["scheduler", "rate"],
                          how="left").probe_factor
    mape = scaled_mape(iters, factors.to_numpy())
    probes = comp[["probe_level_before", "probe_level_after"]].to_numpy().ravel()
    n_ok = int((comp.probe_iter_ok & comp.probe_metrics_ok).sum())
    rels = comp[[f"{k}_rel_probe" for k, _ in METRICS]].abs().to_numpy()
    within = int((rels <= METRIC_TOL).sum())
    return (f"**Speed probe** (`runtime.live.probe`): fixed compositions timed on a separate live executor right "
            f"before and after each live run, over the cost model's predictions. Its level ranged ×{probes.min():.2f}"
            f"–×{probes.max():.2f} over the bench (×1.00: as fast as the profile predicts)"
            + (f"; during the profile it was ×{ref:.2f} (spread {fit_error.get('probe_spread_pct', math.nan):.1f} %), "
               f"so the machine ran at ×{probes.min() / ref:.2f}–×{probes.max() / ref:.2f} of its speed then"
               if (ref := (fit_error or {}).get("probe_level")) else "")
            + ". `sim@probe` is the simulation with every step time multiplied by the geometric mean of the two "
            + ("levels over the profile's (the probe factor)" if ref else "levels") + ", a speed measured outside the "
            "run; against the live runs "
            f"its replay MAPE is {mape:.1f} % over all steps, {within} of {rels.size} run-level metrics are within "
            f"15 %, and {n_ok} of {len(comp)} pairs meet both targets. "
            "Diagnostic only: the targets are judged on the plain simulation above.\n\n" + table)


def history_note(iters: pd.DataFrame) -> str:
    """Signed error of decode-only steps by what ran just before them; ``predicted_s`` includes the settling factor
    where the cost model has one (``runtime.sim.settle``), so what is left here is what it does not capture."""
    prev = iters.groupby(["scheduler", "rate"], sort=False).kind.shift(1)
    dec = iters.kind == "decode"
    err = (iters.predicted_s - iters.measured_s) / iters.measured_s
    after_dec, after_other = err[dec & (prev == "decode")], err[dec & prev.notna() & (prev != "decode")]
    if not len(after_dec) or not len(after_other):
        return ""
    return (f"Decode-only steps that follow another decode-only step are predicted {after_dec.mean():+.1%} on average "
            f"({len(after_dec):,} steps), those right after a prefill or mixed step {after_other.mean():+.1%} "
            f"({len(after_other):,}): on this CPU a step right after a different one runs slower for several steps "
            "(`runtime/sim/settle.py`); the settling factor, where the cost model has one, is in these predictions.")


def render(out: Path, plot_path: Path, section_path: Path) -> str:
    """table.md, the plot and the section from what ``out`` holds (also ``--render-only``)."""
    import json

    meta = json.loads((out / "meta.json").read_text())
    iters = pd.read_parquet(out / "iterations.parquet")
    comp = with_level(pd.read_csv(out / "comparison.csv"), iters)
    table = markdown_table(comp)
    if probe_table(comp):
        table += "\n" + probe_table(comp)
    if sensitivity_table(comp):
        table += "\n" + sensitivity_table(comp)
    atomic_write(out / "table.md", lambda p: p.write_text(table))
    plot(comp, iters, plot_path)
    text = section(meta, comp, iters, out)
    section_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(section_path, lambda p: p.write_text(text))
    return table
