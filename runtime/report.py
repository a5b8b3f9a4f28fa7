"""Sweep reports: one comparison table from the ``summary.json`` of every job of a multirun.

``ComparisonCallback`` is a Hydra callback (see ``conf/hydra/default.yaml``): at the end of a multirun it reads
each job's summary, prints a table and writes, in the sweep directory:

* ``comparison.csv``: one row per completed job (every job folder with a ``summary.json``, in job order; a result
  found twice for one config hash, ``runtime.resume``, counts once). It holds only what the config and seed
  determine, so a sweep gives the same file byte for byte whichever launcher ran it and in whatever order the
  jobs finished; the measured wall-clock columns (``wall_s``, the Oracle's solve times) go to ``timings.csv``.
* ``comparison.png`` and the standard plots of ``runtime.plots.sweep_figures``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from runtime.core.run_log import atomic_write

#: Written instead of summary.json by a sweep job that stopped on a configuration or input error.
FAILED_FILE = "failed.json"

COLUMNS = [
    "scheduler", "workload", "seed", "num_requests", "num_finished", "num_rejected", "slo_attainment",
    "goodput_rps", "goodput_tps", "throughput_rps", "throughput_tps", "ttft_p50_s", "ttft_p99_s", "tbt_p50_s",
    "tbt_p99_s", "jct_mean_s", "jct_p99_s", "num_preemptions", "wall_s",
]


SHOWN = [
    "scheduler", "overrides", "slo_attainment", "goodput_rps", "throughput_rps", "ttft_p99_s", "tbt_p99_s",
    "jct_mean_s", "num_preemptions", "num_rejected",
]


def _job_overrides(job_dir: Path) -> str:
    """The job's command-line overrides (Hydra records them in .hydra/overrides.yaml)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    items = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return " ".join(items)


def _job_number(job_dir: Path) -> tuple[int, str]:
    head = job_dir.name.split("_", 1)[0]
    return (int(head), job_dir.name) if head.isdigit() else (1 << 30, job_dir.name)


def collect_summaries(sweep_dir: Path) -> pd.DataFrame:
    """One row per job of a sweep directory, in job order, with its overrides and flattened per-class attainment."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/summary.json"), key=lambda p: _job_number(p.parent)):
        summary = json.loads(path.read_text())
        row = {"job": path.parent.name, "overrides": _job_overrides(path.parent)}
        row.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
        for cls, value in sorted((summary.get("slo_attainment_by_class") or {}).items()):
            row[f"slo_attainment[{cls}]"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def is_timing(column: str) -> bool:
    """Columns measured on the wall clock: they differ between two runs of the same config."""
    return column == "wall_s" or "solve_time" in column or column.endswith("_wall_s")


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every collected column, the headline ones first, timings last (this is what comparison.csv holds)."""
    if frame.empty:
        return frame
    if "config_hash" in frame:
        # The same config twice (a result found again by a resumed sweep) is one result: keep the first job.
        frame = frame[~(frame["config_hash"].notna() & frame["config_hash"].duplicated())]
    extra = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    capacity = [c for c in frame.columns if c.startswith("capacity_")]
    first = [c for c in ["job", "overrides", *COLUMNS[:3], "arrival_rate", *capacity, *COLUMNS[3:7], *extra,
                         *COLUMNS[7:]] if c in frame.columns]
    ordered = first + [c for c in frame.columns if c not in first]
    return frame[[c for c in ordered if not is_timing(c)] + [c for c in ordered if is_timing(c)]].reset_index(drop=True)


def split_timings(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(deterministic columns, ``job`` + the wall-clock ones)."""
    timing = [c for c in table.columns if is_timing(c)]
    return table.drop(columns=timing), table[[c for c in ("job",) if c in table] + timing]


def format_table(frame: pd.DataFrame) -> str:
    """The headline columns as aligned text (the full table is in comparison.csv)."""
    extra = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    cols = [c for c in SHOWN[:3] + extra + SHOWN[3:] if c in frame.columns]
    # Only what varies between jobs tells them apart.
    shown = _labelled(frame)[cols].rename(columns=lambda c: c.replace("slo_attainment[", "slo[").replace("_attainment", ""))
    if "overrides" in shown and not shown["overrides"].astype(bool).any():
        shown = shown.drop(columns="overrides")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def plot_comparison(frame: pd.DataFrame, path: Path) -> Path:
    """Bar charts of SLO attainment (overall and per class), goodput and p99 TBT, one bar group per job."""
    import matplotlib

    matplotlib.use("Agg")  # files only: sweeps run headless
    import matplotlib.pyplot as plt

    labels = [f"{row.scheduler}\n{row.overrides}" if getattr(row, "overrides", "") else str(row.scheduler)
              for row in _labelled(frame).itertuples()]
    classes = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    fig, axes = plt.subplots(1, 3, figsize=(3 * max(3.5, 0.7 * len(frame)), 4.0), constrained_layout=True)
    x = range(len(frame))
    width = 0.8 / (1 + len(classes))
    for i, col in enumerate(["slo_attainment", *classes]):
        label = "all" if col == "slo_attainment" else col[len("slo_attainment["):-1]
        axes[0].bar([v + i * width for v in x], frame[col], width, label=label)
    axes[0].set(title="SLO attainment", ylim=(0, 1.05))
    axes[0].legend(fontsize=7)
    axes[1].bar(list(x), frame["goodput_rps"], color="tab:green")
    axes[1].set(title="goodput (req/s)")
    axes[2].bar(list(x), frame["tbt_p99_s"] * 1e3, color="tab:red")
    axes[2].set(title="p99 TBT (ms)")
    for ax in axes:
        ax.set_xticks([v + (width * len(classes) / 2 if ax is axes[0] else 0) for v in x], labels, fontsize=7,
                      rotation=30, ha="right")
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``overrides`` reduced to what varies between jobs (as in the printed table)."""
    if "overrides" not in frame:
        return frame
    items = [set(o.split()) for o in frame["overrides"].fillna("")]
    common = set.intersection(*items) if items else set()
    varying = [" ".join(i for i in o.split() if i not in common and not i.startswith("scheduler="))
               for o in frame["overrides"].fillna("")]
    return frame.assign(overrides=varying)


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(Path(sweep_dir).glob(f"*/{FAILED_FILE}"), key=lambda p: _job_number(p.parent))
        try:
            self._report(sweep_dir)
        finally:
            if failed:
                print(f"\n{len(failed)} job(s) failed:", file=sys.stderr)
                for path in failed:
                    print(f"  {path.parent.name}: {json.loads(path.read_text())['error']}", file=sys.stderr)
        if failed:
            raise SystemExit(2)

    def _report(self, sweep_dir: Path) -> None:
        table = comparison_table(collect_summaries(sweep_dir))
        if table.empty:
            print(f"no summary.json found under {sweep_dir}")
            return
        results, timings = split_timings(table)
        atomic_write(sweep_dir / "comparison.csv", lambda p: results.to_csv(p, index=False))
        atomic_write(sweep_dir / "timings.csv", lambda p: timings.to_csv(p, index=False))
        plot = plot_comparison(table, sweep_dir / "comparison.png")
        from runtime.plots import sweep_figures  # matplotlib-heavy; only at the end of a sweep

        figures = [plot.name, *(path.name for path in sweep_figures(sweep_dir, table).values())]
        print(f"\nComparison ({len(table)} runs) -> {sweep_dir / 'comparison.csv'}, {', '.join(figures)}")
        print(format_table(table))
