"""Sweeps through Hydra launchers: the same comparison.csv serially, with joblib and with Ray, and resumption.

Each sweep is a real ``accelgen -m`` subprocess (launchers spawn processes or Ray workers, which an in-process
``hydra.compose`` cannot exercise).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ACCELGEN = str(Path(sys.executable).with_name("accelgen"))
SWEEP = ["scheduler=vllm,sarathi", "workload.arrival.rate=2,4", "workload.num_requests=80", "progress=false"]


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}


def sweep(sweep_dir: Path, *extra: str, args=SWEEP, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [ACCELGEN, "-m", *args, *extra, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "sweep"
    sweep(out)
    return out


def test_serial_sweep_writes_comparison_and_timings(serial):
    table = pd.read_csv(serial / "comparison.csv")
    assert len(table) == 4
    assert sorted(zip(table.scheduler, table.arrival_rate)) == [("sarathi", 2.0), ("sarathi", 4.0), ("vllm", 2.0),
                                                                ("vllm", 4.0)]
    # Wall-clock columns are kept apart, so the comparison is a pure function of the configs.
    assert "wall_s" not in table and table.config_hash.nunique() == 4
    timings = pd.read_csv(serial / "timings.csv")
    assert list(timings.job) == list(table.job) and (timings.wall_s > 0).all()


def test_joblib_sweep_gives_the_same_comparison(serial, tmp_path):
    out = tmp_path / "joblib"
    sweep(out, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert (out / "comparison.csv").read_bytes() == (serial / "comparison.csv").read_bytes()


def test_ray_sweep_on_a_local_cluster(serial, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs the ray extra: pip install -e '.[ray]'")
    out = tmp_path / "ray"
    # Two jobs on a local Ray cluster that this sweep starts and stops (address null); no dashboard, 2 CPUs.
    args = ["scheduler=vllm,sarathi", "workload.arrival.rate=2", "workload.num_requests=80", "progress=false"]
    sweep(out, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
          "+hydra.launcher.ray.init.include_dashboard=false", args=args, timeout=600)
    table = pd.read_csv(out / "comparison.csv")
    expected = pd.read_csv(serial / "comparison.csv").set_index("config_hash")
    assert len(table) == 2
    # The same configs give the same results on Ray workers as in the serial sweep.
    for row in table.itertuples():
        assert row.config_hash in expected.index
        ref = expected.loc[row.config_hash]
        assert (row.scheduler, row.slo_attainment, row.goodput_rps) == (ref.scheduler, ref.slo_attainment,
                                                                          ref.goodput_rps)


def test_submitit_sweep_runs_jobs_as_the_slurm_launcher_does(serial, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra: pip install -e '.[slurm]'")
    out = tmp_path / "submitit"
    # submitit_local: the submitit launcher's own job submission, pickling and result collection, with local
    # processes in place of SLURM (which CI does not have).
    sweep(out, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert (out / "comparison.csv").read_bytes() == (serial / "comparison.csv").read_bytes()


def _summaries(sweep_dir: Path) -> dict[str, float]:
    """Job folder -> mtime of its summary.json (the completed jobs)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}


def test_interrupted_sweep_resumes_without_rerunning_finished_jobs(serial, tmp_path):
    out = tmp_path / "interrupted"
    args = ["scheduler=vllm,sarathi,accelgen", "workload.arrival.rate=2,4", "workload.num_requests=600",
            "progress=false"]
    cmd = [ACCELGEN, "-m", *args, f"hydra.sweep.dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not _summaries(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a killed node would: no clean-up, no end-of-sweep report
        proc.wait()
    done = _summaries(out)
    assert done, "no job finished before the kill"
    assert len(done) < 6, "the sweep finished before it could be interrupted: make its jobs longer"
    assert not (out / "comparison.csv").exists()

    proc = sweep(out, args=args)
    # Jobs finished before the kill were found, not run again: their files are untouched.
    skipped = [line for line in proc.stdout.splitlines() if "already done" in line]
    assert len(skipped) == len(done)
    after = _summaries(out)
    assert {k: after[k] for k in done} == done
    assert len(after) == 6
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 6 and table.config_hash.nunique() == 6
    for path in out.glob("*/summary.json"):
        assert json.loads(path.read_text())["num_finished"] == 600


def test_resume_false_runs_every_job_again(tmp_path):
    out = tmp_path / "again"
    args = ["scheduler=sarathi", "workload.num_requests=40", "progress=false"]
    sweep(out, args=args)
    first = _summaries(out)
    proc = sweep(out, "resume=false", args=args)
    assert "already done" not in proc.stdout
    # The same config ran again, in its own job folder (resume=false is one more override in the folder name).
    after = _summaries(out)
    assert len(after) == 2 and {k: after[k] for k in first} == first
