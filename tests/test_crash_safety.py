"""Crash-safe outputs (issue #8): a sweep SIGKILLed at random points, mid-write included, leaves no partial result
file, and running it again completes it with the comparison.csv of an uninterrupted sweep.

What "no partial result file" means (``runtime.resume``, module docstring):

* every visible file a run or a sweep writes (``*.parquet``, ``summary.json``, ``comparison.csv``,
  ``timings.csv``) is complete whenever it exists: parquet files read back whole, JSON and CSV parse;
* a job folder is a result only when it holds ``summary.json``; then ``requests.parquet`` and
  ``iterations.parquet`` are there too, with the row counts the summary states (``num_requests``,
  ``num_iterations``). A killed job's folder may hold complete tables without a summary: that is no result, and
  the resumed sweep runs the job again;
* only hidden temporaries (``.<name>.tmp``) may be left half-written, and the resumed job removes those in its
  folder: when the resumed sweep ends, no temporary is left anywhere.

To land kills mid-write, the killed sweeps run under a shim that makes every parquet write slow (the bytes of the
real file, written in chunks with pauses, through ``pyarrow.parquet.write_table``, which pandas calls). The code
under test is unchanged: ``atomic_write`` decides which path those bytes go to, so a write that bypassed it would
leave a truncated ``*.parquet`` behind and fail here. ``ACCELGEN_CRASH_SEED`` picks other kill points.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

ACCELGEN = str(Path(sys.executable).with_name("accelgen"))
SWEEP = ["scheduler=vllm,sarathi", "workload.arrival.rate=2,4", "workload.num_requests=300", "progress=false"]
NUM_JOBS = 4
SEED = int(os.environ.get("ACCELGEN_CRASH_SEED", "8"))
# accelgen, with every parquet file written in 8 chunks, 25 ms apart (about 0.2 s per file).
SLOW_WRITES = textwrap.dedent("""
    import sys, time
    import pyarrow.parquet as pq

    _write_table = pq.write_table

    def slow_write_table(table, where, *args, **kwargs):
        import pyarrow as pa
        sink = pa.BufferOutputStream()
        _write_table(table, sink, *args, **kwargs)
        data = sink.getvalue().to_pybytes()
        out = where if hasattr(where, "write") else open(where, "wb")
        step = max(1, len(data) // 8)
        for i in range(0, len(data), step):
            out.write(data[i:i + step])
            out.flush()
            time.sleep(0.025)
        if out is not where:
            out.close()

    pq.write_table = slow_write_table
    from runtime.cli import main
    sys.argv = ["accelgen", *sys.argv[1:]]
    main()
""")


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}


def _sweep(out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([ACCELGEN, "-m", *SWEEP, f"hydra.sweep.dir={out}"], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(".*.tmp") if p.is_file())


def _parquet_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith((".parquet", ".parquet.tmp"))]


def _kill_at_random_point(out: Path, rng: random.Random, *, mid_write: bool) -> str:
    """Start the slow-writing sweep and SIGKILL it: after a random delay, or a random instant into the first
    parquet write it makes (``mid_write``). Returns where the kill landed, for the failure messages."""
    cmd = [sys.executable, "-c", SLOW_WRITES, "-m", *SWEEP, f"hydra.sweep.dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    start = time.monotonic()
    try:
        if mid_write:
            # The first parquet file this attempt starts writing: its temporary, or the file itself for a writer
            # that bypassed atomic_write.
            before = set(_parquet_files(out))
            while proc.poll() is None and time.monotonic() - start < 120:
                if set(_parquet_files(out)) - before:
                    time.sleep(rng.uniform(0.0, 0.15))
                    break
                time.sleep(0.001)
        else:
            # At the latest when all but one job are done, so that the sweep is still unfinished.
            delay = rng.uniform(0.0, 8.0)
            while (proc.poll() is None and time.monotonic() - start < delay
                   and len(list(out.glob("*/summary.json"))) < NUM_JOBS - 1):
                time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # as a killed node would: no clean-up, no end-of-sweep report
        proc.wait()
    return f"killed after {time.monotonic() - start:.3f} s ({'mid-write' if mid_write else 'random delay'})"


def _check_no_partial_result(out: Path, where: str) -> None:
    """The guarantee of the module docstring, on the state a kill left."""
    if not out.exists():
        return  # killed before Hydra made the sweep folder
    for path in out.rglob("*.parquet"):
        pq.read_table(path)  # raises on a truncated file (no footer) or a corrupt page
    for job in (p for p in out.iterdir() if p.is_dir()):
        summary_path = job / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        assert summary["config_hash"], where
        assert pq.read_metadata(job / "requests.parquet").num_rows == summary["num_requests"], (job, where)
        assert pq.read_metadata(job / "iterations.parquet").num_rows == summary["num_iterations"], (job, where)
    for name in ("comparison.csv", "timings.csv"):
        if (out / name).exists():
            pd.read_csv(out / name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "sweep"
    _sweep(out)
    return out


def test_sigkill_at_random_points_leaves_no_partial_result_and_resume_completes(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(SEED)
    kills, left_mid_write = [], []
    # One kill after a random delay, then kills at random instants into a parquet write; each later attempt
    # resumes the sweep the previous kill left.
    for mid_write in (False, True, True, True):
        where = f"seed {SEED}, kill {len(kills) + 1}: " + _kill_at_random_point(out, rng, mid_write=mid_write)
        kills.append(where)
        _check_no_partial_result(out, where)
        left_mid_write += [(where, p.name) for p in _temporaries(out) if p.name.endswith(".parquet.tmp")]
    # The kills did land mid-write: a half-written temporary was left, and no visible file was half-written.
    assert left_mid_write, f"no kill landed mid-write: {kills}"
    assert len(list(out.glob("*/summary.json"))) < NUM_JOBS, f"the sweep finished before the last kill: {kills}"

    done = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    proc = _sweep(out)  # the same command again: resumes
    # Results finished before a kill were found, not run again.
    assert proc.stdout.count("already done") == len(done)
    assert {p: p.stat().st_mtime_ns for p in done} == done
    _check_no_partial_result(out, "after resume")
    assert not _temporaries(out), f"stale temporaries after the resumed sweep: {_temporaries(out)}"
    assert len(list(out.glob("*/summary.json"))) == NUM_JOBS
    assert (out / "comparison.csv").read_bytes() == (uninterrupted / "comparison.csv").read_bytes()
    for png in out.glob("*.png"):  # the plots are redrawn whole at the end of the resumed sweep
        assert png.read_bytes().endswith(b"IEND\xaeB`\x82"), png


def test_stale_temporaries_are_removed_when_a_job_starts(tmp_path):
    from runtime.resume import remove_stale_temporaries

    (tmp_path / ".requests.parquet.tmp").write_bytes(b"PAR1 half")
    (tmp_path / ".summary.json.tmp").write_text("{")
    (tmp_path / "requests.parquet").write_bytes(b"kept")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "notes.tmp").write_text("not ours: not hidden")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".requests.parquet.tmp", ".summary.json.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "notes.tmp", "requests.parquet"]
    assert remove_stale_temporaries(tmp_path / "missing") == []
