"""How far the live runtime is from itself: the live runs of stored ``bench/sim_vs_live.py`` outputs, compared.

    .venv/bin/python bench/live_vs_live.py bench/results/sim_vs_live_2thread_{n,o,p,q}
    .venv/bin/python bench/live_vs_live.py A B --out /tmp/lvl        # also writes CSVs, table.md and a plot

Each folder is an ``--out`` of ``bench/sim_vs_live.py``: the same experiments (model, requests, seed, threads, the
scheduler/rate pairs) run live and simulated. For every two folders A, B (in the order given) and every
scheduler/rate pair both ran, the relative difference of B's live run-level metrics from A's, ``(B − A) / A``, with
the metrics and the 15 % tolerance ``bench/sim_vs_live.py`` judges the simulator by. Next to it, each folder's own
simulated-against-live count. Two live runs of one configuration differ only by the machine (its speed, what else
ran, which steps the host interrupted): if the simulator, on a profile taken right before, is as close to its live
run as two live runs are to each other, what is left of its error is the machine's, not the model's.

Folders that ran different experiments (model, requests, seed or threads differ) are refused: their live runs are
not repeats of each other. With ``--out``: ``pairs.csv`` (every live-against-live difference), ``sims.csv`` (every
folder's simulated-against-live difference), ``summary.csv``, ``table.md`` and ``live_vs_live.png`` (each metric's
differences, live against live beside simulated against live, with the tolerance drawn).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from accelgen_vs_baselines import markdown_table  # noqa: E402
from runtime.core.errors import ConfigError  # noqa: E402
from runtime.core.run_log import atomic_write  # noqa: E402
from sim_vs_live_report import METRIC_TOL, METRICS  # noqa: E402

#: What makes two bench outputs runs of the same experiment (``meta.json``).
SAME = ("model", "num_requests", "seed", "threads")
KEYS = ["scheduler", "rate"]


def load(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``meta.json``, the live rows of ``runs.csv`` and ``comparison.csv`` of one bench output."""
    files = [folder / name for name in ("meta.json", "runs.csv", "comparison.csv")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"{folder}: not a bench/sim_vs_live.py output (missing {', '.join(missing)})")
    meta = json.loads(files[0].read_text())
    runs = pd.read_csv(files[1])
    return meta, runs[runs.runtime == "live"].set_index(KEYS), pd.read_csv(files[2]).set_index(KEYS)


def check_same(metas: dict[str, dict]) -> None:
    first_name, first = next(iter(metas.items()))
    for name, meta in metas.items():
        differ = [k for k in SAME if meta.get(k) != first.get(k)]
        if differ:
            what = ", ".join(f"{k} {first.get(k)!r} in {first_name} but {meta.get(k)!r}" for k in differ)
            raise ConfigError(f"{name} ran another experiment than {first_name} ({what}): its live runs are not "
                              "repeats")


def within(rels: np.ndarray) -> int:
    return int((np.isfinite(rels) & (np.abs(rels) <= METRIC_TOL)).sum())


def compare(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(pairs: one row per two folders and scheduler/rate pair, each metric's live-against-live relative difference;
    summary: one row per two folders; sims: one row per folder and pair, each metric's simulated-against-live
    difference as the bench recorded it; own: one row per folder, its simulated-against-live count)."""
    loaded = {str(f): load(f) for f in folders}
    check_same({name: meta for name, (meta, _, _) in loaded.items()})
    keys = [k for k, _ in METRICS]
    rows, summary = [], []
    for (a, (meta_a, live_a, _)), (b, (meta_b, live_b, _)) in itertools.combinations(loaded.items(), 2):
        common = live_a.index.intersection(live_b.index)
        rel = (live_b.loc[common, keys] - live_a.loc[common, keys]) / live_a.loc[common, keys]
        for (scheduler, rate), values in rel.iterrows():
            rows.append(dict(a=a, b=b, scheduler=scheduler, rate=rate, **{f"{k}_rel": values[k] for k in keys}))
        apart = (datetime.fromisoformat(meta_b["started"]) - datetime.fromisoformat(meta_a["started"]))
        summary.append(dict(a=a, b=b, minutes_apart=apart.total_seconds() / 60, pairs=len(common),
                            within=within(rel.to_numpy()), metrics=rel.size,
                            **{f"{k}_max_abs_rel": float(rel[k].abs().max()) for k in keys}))
    sims = pd.concat([comp[[f"{k}_rel" for k in keys]].reset_index().assign(folder=name, started=meta["started"])
                      for name, (meta, _, comp) in loaded.items()], ignore_index=True)
    own = pd.DataFrame([dict(folder=name, started=g.started.iloc[0], within=within(g.filter(like="_rel").to_numpy()),
                             metrics=g.filter(like="_rel").size) for name, g in sims.groupby("folder", sort=False)])
    return pd.DataFrame(rows), pd.DataFrame(summary), sims, own


def plot(pairs: pd.DataFrame, sims: pd.DataFrame, path: Path) -> None:
    """Each metric's |relative difference|: every live-against-live pair beside every simulated-against-live one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)  # jitter only; the same picture every time
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    for offset, frame, colour, label in ((-0.18, pairs, "0.45", "live B against live A"),
                                         (0.18, sims, "C0", "simulated against its live run")):
        for i, (key, _) in enumerate(METRICS):
            y = frame[f"{key}_rel"].abs().to_numpy(float) * 100
            x = i + offset + rng.uniform(-0.08, 0.08, len(y))
            ax.scatter(x, y, s=10, color=colour, alpha=0.6, label=label if i == 0 else None)
    ax.axhline(METRIC_TOL * 100, color="C3", lw=0.8, ls="--", label=f"tolerance ({METRIC_TOL:.0%})")
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_yscale("symlog", linthresh=10)  # linear under 10 %, where the tolerance sits; the tails run to 200 %
    largest = max(pairs.filter(like="_rel").abs().max().max(), sims.filter(like="_rel").abs().max().max())
    ax.set_ylim(0, max(100 * largest, 2 * METRIC_TOL * 100) * 1.5)
    ax.set(ylabel="|relative difference| (%)",
           title=f"the live runtime against itself and the simulator against it ({sims.folder.nunique()} bench runs)")
    ax.legend(fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def render(summary: pd.DataFrame, own: pd.DataFrame) -> str:
    labels = dict(METRICS)
    live = summary.assign(**{
        "live B against live A": summary.a.map(_short) + " → " + summary.b.map(_short),
        "apart": summary.minutes_apart.map(lambda m: f"{m:.0f} min"),
        f"within {METRIC_TOL:.0%}": summary.within.astype(str) + " of " + summary.metrics.astype(str),
        **{f"largest {labels[k]} difference": summary[f"{k}_max_abs_rel"].map(lambda x: f"{x:.1%}")
           for k, _ in METRICS}})
    cols = ["live B against live A", "apart", f"within {METRIC_TOL:.0%}",
            *[f"largest {labels[k]} difference" for k, _ in METRICS]]
    sim = own.assign(**{"bench output": own.folder.map(_short),
                        f"simulated against its live run, within {METRIC_TOL:.0%}":
                            own.within.astype(str) + " of " + own.metrics.astype(str)})
    return "\n\n".join([markdown_table(live[cols]),
                        markdown_table(sim[["bench output", "started",
                                            f"simulated against its live run, within {METRIC_TOL:.0%}"]])])


def _short(folder: str) -> str:
    return Path(folder).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="bench/sim_vs_live.py outputs (--out), two or more")
    parser.add_argument("--out", type=Path, help="write pairs.csv, summary.csv and table.md here")
    args = parser.parse_args(argv)
    if len(args.folders) < 2:
        parser.error("give two or more bench outputs")
    try:
        pairs, summary, sims, own = compare(args.folders)
    except ConfigError as error:
        print(f"live_vs_live: error: {error}", file=sys.stderr)
        return 2
    text = render(summary, own)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "pairs.csv", lambda p: pairs.to_csv(p, index=False))
        atomic_write(args.out / "summary.csv", lambda p: summary.to_csv(p, index=False))
        atomic_write(args.out / "sims.csv", lambda p: sims.to_csv(p, index=False))
        plot(pairs, sims, args.out / "live_vs_live.png")
        atomic_write(args.out / "table.md", lambda p: p.write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
