"""Run outputs as tables: a sweep directory (one job directory per run, as ``accelgen -m`` writes it) or one run
directory, read into pandas frames for figures (``runtime.plots``) and notebooks.

``load_sweep`` gives one row per run (the flat summary keys, as in ``comparison.csv``); ``load_requests``,
``load_iterations`` and ``load_gaps`` concatenate every run's ``requests.parquet``, ``iterations.parquet`` or
``oracle_gap.parquet``, each row tagged with its run's ``job``, ``series``, ``scheduler``, ``runtime``, ``seed`` and
``arrival_rate``.

``series`` says what one line stands for: the scheduler plus whatever else the sweep varies apart from the arrival
rate and the seed (``sarathi``, or ``sarathi runtime=live``); just the scheduler's name when that already tells the
runs apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from runtime.report import collect_summaries, comparison_table

#: Overrides that never name a series: the x axis, replicates, and switches that do not change any schedule.
_NOT_SERIES = ("scheduler=", "workload.arrival.rate=", "workload.target_rate=", "seed=", "progress=", "oracle.gap_",
               "logger", "hydra.")
_RATE_KEYS = ("workload.arrival.rate=", "workload.target_rate=")
_TAGS = ["job", "series", "scheduler", "runtime", "seed", "arrival_rate"]

def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run: ``comparison.csv`` when the sweep has one, else every ``*/summary.json``; a run directory
    gives its one row. Adds ``series`` and fills ``arrival_rate`` from the overrides for sweeps older than it."""
    path = Path(sweep_dir)
    if (path / "summary.json").exists():
        table = pd.DataFrame([_summary_row(path)])
    elif (path / "comparison.csv").exists():
        table = pd.read_csv(path / "comparison.csv")
    else:
        table = comparison_table(collect_summaries(path))
    if table.empty:
        raise FileNotFoundError(f"no runs under {path} (no comparison.csv, summary.json or */summary.json)")
    return with_series(table)


def _summary_row(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    overrides = run_dir / ".hydra" / "overrides.yaml"
    items = overrides.read_text().splitlines() if overrides.exists() else []
    row = {"job": run_dir.name, "overrides": " ".join(i[2:].strip() for i in items if i.startswith("- "))}
    row.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
    for cls, value in sorted((summary.get("slo_attainment_by_class") or {}).items()):
        row[f"slo_attainment[{cls}]"] = value
    return row


def with_series(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``series`` (module docstring) and ``arrival_rate`` (parsed from the overrides if absent)."""
    table = table.copy()
    overrides = table["overrides"].fillna("").astype(str) if "overrides" in table else pd.Series("", table.index)
    if "arrival_rate" not in table:
        table["arrival_rate"] = np.nan
    parsed = [next((float(i.split("=", 1)[1]) for i in o.split() if i.startswith(_RATE_KEYS)), np.nan)
              for o in overrides]
    table["arrival_rate"] = table["arrival_rate"].astype(float).fillna(pd.Series(parsed, table.index))
    if "series" not in table:
        items = [[i for i in o.split() if not i.startswith(_NOT_SERIES)] for o in overrides]
        common = set.intersection(*map(set, items)) if items else set()
        varying = [tuple(i for i in it if i not in common) for it in items]
        names = table["scheduler"].astype(str)
        # The scheduler's name alone when it already tells the variants apart (ablations name theirs).
        needed = pd.Series(varying, table.index).groupby(names).nunique().gt(1).any()
        table["series"] = [" ".join([s, *v]) if needed else s for s, v in zip(names, varying)]
    return table


def _load_table(sweep_dir: str | Path, name: str, table: pd.DataFrame | None) -> pd.DataFrame:
    path = Path(sweep_dir)
    table = load_sweep(path) if table is None else with_series(table)
    single = (path / "summary.json").exists()
    frames = []
    for tags in table[[c for c in _TAGS if c in table]].to_dict("records"):
        file = (path if single else path / str(tags["job"])) / name
        if file.exists():
            frames.append(pd.read_parquet(file).assign(**tags))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_TAGS)


def load_requests(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every run's ``requests.parquet``, tagged with its run (``table``: ``load_sweep``'s, to avoid reading it)."""
    return _load_table(sweep_dir, "requests.parquet", table)


def load_iterations(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every run's ``iterations.parquet``, tagged with its run."""
    return _load_table(sweep_dir, "iterations.parquet", table)


def load_gaps(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every run's ``oracle_gap.parquet`` (runs with ``oracle.gap_accounting=true``), tagged with its run."""
    return _load_table(sweep_dir, "oracle_gap.parquet", table)
