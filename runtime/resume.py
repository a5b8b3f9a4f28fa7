"""Resumable sweeps: a sweep job whose result already exists for the same resolved config is not run again.

Every run's ``summary.json`` carries ``config_hash``: the SHA-256 of the resolved experiment config as canonical
JSON (sorted keys), without the keys that cannot change a result:

* ``progress`` (a progress bar), ``logger`` (where results are also sent), ``tags``, ``task_name`` (the output
  folder's name), ``paths`` (where the shared data lives, not what it holds), ``resume`` itself.

A multirun job first looks for a ``summary.json`` with its hash in any job folder of the sweep directory
(``hydra.sweep.dir``); when one exists it prints where and returns that result instead of running. Re-running a
sweep into the same folder therefore runs only the jobs that have no complete result:

    accelgen -m scheduler=vllm,sarathi workload.arrival.rate=1,2,3 hydra.sweep.dir=multirun/my_sweep
    # interrupted (Ctrl-C, a killed node, a crashed job): run the same command again

Job folders are named by job number and overrides, so adding a value to a sweep renumbers later jobs; the match
is by hash over the whole sweep directory, not by folder name, so renumbered jobs are still found. A result is
complete only when ``summary.json`` exists: it is written last and atomically (``runtime.core.run_log``), so a job
killed mid-run leaves none and is run again. ``resume=false`` runs every job regardless.

Crash safety. A run's tables and ``summary.json`` (and a sweep's ``comparison.csv`` and ``timings.csv``) are written
as a hidden temporary ``.<name>.tmp`` and renamed into place, so a job killed at any point (even SIGKILL, mid-write)
leaves each of them either absent or complete; only the hidden temporary of the write in progress can be left. A
job folder is a *result* only when it holds ``summary.json``, and then every table beside it is complete. A folder
without one holds at most complete tables of an unfinished run: it is no result, and the job runs again into the
same folder, overwriting them. Each job first removes the stale temporaries in its own folder
(``remove_stale_temporaries``); other jobs' folders are left alone, since under a parallel launcher their
temporaries may be writes in progress.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: Top-level keys that do not change a run's results.
NOT_HASHED = ("progress", "logger", "tags", "task_name", "paths", "resume")
SUMMARY_FILE = "summary.json"
#: ``runtime.core.run_log.atomic_write``'s temporaries: ``.<name>.tmp`` beside the file being written.
TEMPORARY_GLOB = ".?*.tmp"


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 (hex) of the resolved config without the ``NOT_HASHED`` keys."""
    container = OmegaConf.to_container(cfg, resolve=True)
    kept = {k: v for k, v in container.items() if k not in NOT_HASHED and k != "hydra"}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def find_result(sweep_dir: Path, digest: str, *, own_dir: Path | None = None) -> Path | None:
    """The ``summary.json`` of a completed job with this config hash anywhere in the sweep directory.

    ``own_dir`` (the job's own folder) is looked at first: re-running an unchanged sweep finds every result there,
    so each job reads one file instead of every job's (a sweep of N jobs would otherwise read N² summaries). A
    file that does not contain the digest as text is skipped without parsing it."""
    candidates = sorted(Path(sweep_dir).glob(f"*/{SUMMARY_FILE}"))
    if own_dir is not None:
        own = (Path(own_dir) / SUMMARY_FILE).resolve()
        candidates = [own] + [path for path in candidates if path.resolve() != own]
    for path in candidates:
        try:
            text = path.read_text()
            if digest not in text:
                continue
            summary = json.loads(text)
        except (OSError, ValueError):
            continue  # absent or unreadable: not a result (atomic writes make this rare), so the job runs again
        if isinstance(summary, dict) and summary.get("config_hash") == digest:
            return path
    return None


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the temporaries a killed run left in ``output_dir`` (its own job folder); returns what it removed.

    Called when a job starts, before it writes anything: nothing else writes into a job's folder, so every
    temporary found there is stale."""
    removed = []
    for path in sorted(Path(output_dir).glob(TEMPORARY_GLOB)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
