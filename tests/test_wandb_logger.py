"""``logger=wandb``: what a run logs to W&B, read back from the offline run's own transaction log, and that a W&B
that cannot be reached, or is switched off, never costs the experiment.

Nothing here reaches beyond 127.0.0.1: runs are offline, and the online cases point ``WANDB_BASE_URL`` at local
ports that refuse, stay silent or answer 401.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from runtime.cli import run
from runtime.wandb_logger import flatten, iteration_series, running_attainment
from tests.conftest import compose_config

ITERATION_KEYS = {"iteration/start_time", "iteration/duration_s", "iteration/batch_tokens",
                  "iteration/prefill_tokens", "iteration/decode_tokens", "iteration/kv_utilization",
                  "iteration/num_waiting", "iteration/slo_attainment", "iteration/index"}
BAD_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, the shape of a real key


# --- Reading an offline run back --------------------------------------------------------------------------------

def read_records(path: Path) -> list:
    """The ``wandb_internal_pb2.Record``s of a ``run-<id>.wandb`` file.

    wandb 0.31 has no Python reader (``wandb sync`` reads it in wandb-core), so this follows the format: a 7-byte
    header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each a 7-byte header (CRC32, length
    as uint16, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block tail under 7 bytes is padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    block, pos, pending, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _put(target: dict, item) -> None:
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        target = target.setdefault(part, {})
    # History items may carry a typed value instead of JSON; config and summary items only have JSON.
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    target[path[-1]] = json.loads(item.value_json) if kind is None else getattr(item, kind)


def read_offline_run(output_dir: Path) -> dict:
    """The one offline W&B run under ``output_dir``: its run record, config, history rows and final summary."""
    files = list(Path(output_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run_record, config, history, summary = None, {}, [], {}
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_record = record.run
            for item in record.run.config.update:
                _put(config, item)
        elif kind == "config":
            for item in record.config.update:
                _put(config, item)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                _put(row, item)
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(summary, item)
    assert run_record is not None
    return dict(run=run_record, config=config, history=history, summary=summary)


# --- Fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """Offline W&B with its config, cache and data dirs in tmp_path; any stray request would go to 127.0.0.1:9."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb_{name.lower()}"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    for name in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)


def accelgen(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed ``accelgen`` command (env from os.environ, as set by ``wandb_env`` and the test)."""
    exe = Path(sys.executable).with_name("accelgen")
    return subprocess.run([str(exe), *args, "progress=false"], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


# --- End to end through the CLI ---------------------------------------------------------------------------------

def test_cli_offline_run_holds_config_iterations_and_summary(tmp_path, wandb_env):
    out = tmp_path / "run"
    done = accelgen("logger=wandb", "scheduler=vllm", "seed=3", "workload.num_requests=40", "logger.max_points=200",
                    f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    iterations = pd.read_parquet(out / "iterations.parquet")
    assert len(iterations) > 200  # so the series is down-sampled
    logged = read_offline_run(out)

    assert logged["config"]["scheduler"]["name"] == "vllm" and logged["config"]["seed"] == 3
    assert logged["config"]["workload"]["num_requests"] == 40 and logged["config"]["logger"]["mode"] == "offline"
    assert logged["run"].display_name == "run" and logged["run"].project == "accelgen"
    assert logged["run"].job_type == "sim" and logged["run"].run_group == ""

    rows = [r for r in logged["history"] if "iteration/index" in r]
    assert len(rows) == 200
    # No request has finished when the first iteration ends: no attainment yet.
    assert ITERATION_KEYS - {"iteration/slo_attainment"} <= set(rows[0])
    assert ITERATION_KEYS <= set(rows[-1])
    index = [r["iteration/index"] for r in rows]
    assert index[0] == 0 and index[-1] == len(iterations) - 1 and index == sorted(set(index))
    last = iterations.iloc[-1]
    assert rows[-1]["iteration/start_time"] == pytest.approx(last["start_time"])
    assert rows[-1]["iteration/batch_tokens"] == last["prefill_tokens"] + last["decode_tokens"]
    assert rows[-1]["iteration/kv_utilization"] == pytest.approx(last["kv_blocks_used"] / summary["kv_num_blocks"])
    assert rows[-1]["iteration/num_waiting"] == last["num_waiting"]
    # Every request has finished by the last iteration's end: the running attainment is the run's.
    assert rows[-1]["iteration/slo_attainment"] == pytest.approx(summary["slo_attainment"])

    assert logged["summary"]["goodput_rps"] == pytest.approx(summary["goodput_rps"])
    assert logged["summary"]["num_iterations"] == summary["num_iterations"]
    for name, value in summary["slo_attainment_by_class"].items():
        assert logged["summary"][f"slo_attainment_by_class/{name}"] == pytest.approx(value)
    tables = [r["slo_classes"] for r in logged["history"] if "slo_classes" in r]
    assert len(tables) == 1 and tables[0]["_type"] == "table-file" and tables[0]["nrows"] == len(
        summary["slo_attainment_by_class"])


class _Unauthorized(BaseHTTPRequestHandler):
    def _deny(self):
        body = b'{"errors": [{"message": "invalid api key"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _deny

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(params=["refused", "silent", "unauthorized"])
def unreachable_wandb(request):
    """A W&B URL on 127.0.0.1 that refuses connections, accepts them and never answers, or answers 401; and the
    reason the warning should give."""
    if request.param == "refused":
        yield "http://127.0.0.1:9", "did not answer"
    elif request.param == "silent":
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", "did not answer"
    else:
        # It answers, so the probe passes and wandb.init itself fails on the key.
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}", "online init failed"
        server.shutdown()
        server.server_close()


def test_cli_finishes_when_wandb_cannot_be_reached(tmp_path, wandb_env, monkeypatch, unreachable_wandb):
    url, reason = unreachable_wandb
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", BAD_KEY)
    out = tmp_path / "run"
    # The timeout is the guard against a stall (init_timeout_s alone would be 30 s); no timing is asserted.
    done = accelgen("logger=wandb", "workload.num_requests=40", "logger.connect_timeout_s=1",
                    "logger.init_timeout_s=10", f"hydra.run.dir={out}", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["num_requests"] == 40
    warning = [line for line in done.stderr.splitlines() if "logged offline instead" in line]
    assert len(warning) == 1 and reason in warning[0], done.stderr
    # The fallback keeps the run for a later `wandb sync`.
    logged = read_offline_run(out)
    assert logged["summary"]["num_requests"] == 40


def test_disabled_mode_logs_nothing(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_config(["logger=wandb", "workload.num_requests=20"])
    summary = run(cfg, tmp_path)
    assert instantiate(cfg.logger).log_run(cfg, tmp_path, summary, sweep_dir=None) is None
    assert not (tmp_path / "wandb").exists()


def test_sweep_run_is_grouped_by_sweep_and_tagged(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "accelgen-sweeps")
    cfg = compose_config(["logger=wandb", "scheduler=orca", "workload.num_requests=20", "tags=[rate_sweep]"])
    sweep_dir = tmp_path / "2026-11-21_23-02-11"
    out = sweep_dir / "0_scheduler=orca"
    summary = run(cfg, out)
    sync_dir = instantiate(cfg.logger).log_run(cfg, out, summary, sweep_dir=sweep_dir)
    assert sync_dir is not None and Path(sync_dir).parent == out / "wandb"
    logged = read_offline_run(out)
    assert logged["run"].run_group == "2026-11-21_23-02-11"
    assert set(logged["run"].tags) == {"scheduler:orca", "workload:mixed", "rate_sweep"}
    assert logged["run"].display_name == "0_scheduler=orca" and logged["run"].project == "accelgen-sweeps"
    # Fewer iterations than max_points: every one is logged.
    assert len([r for r in logged["history"] if "iteration/index" in r]) == summary["num_iterations"]
    # The run's own figures, where runtime.plots exists (test_plots_are_logged_as_images stands one in).
    try:
        from runtime.plots import run_figures
    except ImportError:
        expected = set()
    else:
        expected = {f"plots/{name}" for name in run_figures(out)}
    assert {key for row in logged["history"] for key in row if key.startswith("plots/")} == expected


def test_plots_are_logged_as_images(tmp_path, wandb_env, monkeypatch):
    import types

    from matplotlib.figure import Figure

    def run_figures(run_dir):
        figure = Figure()
        figure.subplots().plot(pd.read_parquet(Path(run_dir) / "iterations.parquet")["duration_s"])
        return {"iteration_time": figure}

    # runtime.plots is another module's job: stand one in, with the agreed run_figures(run_dir) signature.
    monkeypatch.setitem(sys.modules, "runtime.plots", types.SimpleNamespace(run_figures=run_figures))
    cfg = compose_config(["logger=wandb", "workload.num_requests=10", "logger.group=mine"])
    summary = run(cfg, tmp_path)
    instantiate(cfg.logger).log_run(cfg, tmp_path, summary, sweep_dir=tmp_path / "sweep")
    logged = read_offline_run(tmp_path)
    images = [r["plots/iteration_time"] for r in logged["history"] if "plots/iteration_time" in r]
    assert len(images) == 1 and images[0]["_type"] == "image-file"
    assert logged["run"].run_group == "mine"  # logger.group overrides the sweep's name


# --- The series and summary, without W&B ------------------------------------------------------------------------

def _iterations(n: int, with_queue: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({"iteration": np.arange(n), "start_time": np.arange(n) * 0.1,
                          "duration_s": np.full(n, 0.1), "prefill_tokens": np.arange(n) % 3,
                          "decode_tokens": np.full(n, 4), "kv_blocks_used": np.arange(n) % 10})
    if with_queue:
        frame["num_waiting"] = np.arange(n) % 5
    return frame


def test_series_is_down_sampled_evenly_keeping_first_and_last():
    series = iteration_series(_iterations(100_001), None, kv_num_blocks=10, max_points=5000)
    assert len(series) == 5000
    assert series["index"].iloc[0] == 0 and series["index"].iloc[-1] == 100_000
    gaps = np.diff(series["index"].to_numpy())
    assert gaps.min() >= 20 and gaps.max() <= 21  # 100000 / 4999 = 20.004
    assert (series["batch_tokens"] == series["prefill_tokens"] + series["decode_tokens"]).all()
    assert series["kv_utilization"].max() == pytest.approx(0.9)


def test_series_keeps_every_row_when_short_and_tolerates_a_log_without_queue_length():
    series = iteration_series(_iterations(30, with_queue=False), None, kv_num_blocks=None, max_points=5000)
    assert len(series) == 30 and list(series["index"]) == list(range(30))
    assert "num_waiting" not in series and "kv_utilization" not in series and "slo_attainment" not in series


def test_running_attainment_counts_requests_finished_by_each_time():
    requests = pd.DataFrame({"finished_time": [1.0, 2.0, 3.0, np.nan],  # the last one was rejected
                             "met_slo": [True, False, True, False]})
    got = running_attainment(requests, np.array([0.5, 1.0, 2.5, 3.0, 9.0]))
    np.testing.assert_allclose(got, [np.nan, 1.0, 0.5, 2 / 3, 2 / 3])


def test_summary_is_flattened_to_scalars():
    flat = flatten({"goodput_rps": 1.5, "scheduler": "vllm", "config_hash": None, "ids": [1, 2],
                    "slo_attainment_by_class": {"tight": 0.5}, "slo_classes_s": {"tight": {"ttft_slo_s": 1.0}},
                    "num": np.int64(3)})
    assert flat == {"goodput_rps": 1.5, "scheduler": "vllm", "slo_attainment_by_class/tight": 0.5,
                    "slo_classes_s/tight/ttft_slo_s": 1.0, "num": 3}
    assert type(flat["num"]) is int
