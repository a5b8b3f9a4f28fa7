"""Sweep reports: one comparison table from the ``summary.json`` of every job of a multirun.

``ComparisonCallback`` is a Hydra callback (see ``conf/hydra/default.yaml``): at the end of a multirun it reads
each job's summary, prints a table and writes ``comparison.csv`` in the sweep directory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

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


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every collected column, the headline ones first (this is what comparison.csv holds)."""
    if frame.empty:
        return frame
    extra = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    first = [c for c in ["job", "overrides", *COLUMNS[:7], *extra, *COLUMNS[7:]] if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def format_table(frame: pd.DataFrame) -> str:
    """The headline columns as aligned text (the full table is in comparison.csv)."""
    extra = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    cols = [c for c in SHOWN[:3] + extra + SHOWN[3:] if c in frame.columns]
    shown = frame[cols].rename(columns=lambda c: c.replace("slo_attainment[", "slo[").replace("_attainment", ""))
    if "overrides" in shown:
        # Only what varies between jobs tells them apart.
        items = [set(o.split()) for o in shown["overrides"].fillna("")]
        common = set.intersection(*items) if items else set()
        varying = [" ".join(i for i in o.split() if i not in common and not i.startswith("scheduler="))
                   for o in shown["overrides"].fillna("")]
        shown = shown.assign(overrides=varying)
        if not any(varying):
            shown = shown.drop(columns="overrides")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = comparison_table(collect_summaries(sweep_dir))
        if table.empty:
            print(f"no summary.json found under {sweep_dir}")
            return
        table.to_csv(sweep_dir / "comparison.csv", index=False)
        print(f"\nComparison ({len(table)} runs) -> {sweep_dir / 'comparison.csv'}")
        print(format_table(table))
