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


def collect_summaries(sweep_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/summary.json")):
        summary = json.loads(path.read_text())
        row = {"job": path.parent.name, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}}
        for cls, value in sorted((summary.get("slo_attainment_by_class") or {}).items()):
            row[f"slo_attainment[{cls}]"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    extra = sorted(c for c in frame.columns if c.startswith("slo_attainment["))
    cols = [c for c in ["job", *COLUMNS[:7], *extra, *COLUMNS[7:]] if c in frame.columns]
    return frame[cols]


def format_table(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=[c for c in ("job", "seed") if c in frame.columns])
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
