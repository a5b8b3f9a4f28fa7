"""Weights & Biases logging of a finished run (``accelgen logger=wandb``).

The CLI calls ``WandbLogger.log_run(cfg, output_dir, summary, sweep_dir=...)`` after a run has written its files, so
W&B only ever gets a copy: the run's results are the files in ``output_dir``. One W&B run per accelgen run holds:

* config: the resolved Hydra config (``OmegaConf.to_container(cfg, resolve=True)``);
* history: per-iteration series from ``iterations.parquet`` under ``iteration/``, plotted against
  ``iteration/start_time`` (simulated or wall seconds): ``duration_s``, ``batch_tokens`` (= ``prefill_tokens`` +
  ``decode_tokens``, both also logged), ``kv_utilization`` (``kv_blocks_used / kv_num_blocks``), ``num_waiting``
  (the queue length, where the log has it), ``slo_attainment`` (running: of the requests finished by the end of
  that iteration, the fraction that met their SLO; rejected requests never finish, so they are not counted) and
  ``index`` (the iteration number). A run can have 100k+ iterations, so at most ``max_points`` rows are logged,
  picked evenly with the first and last kept. They are samples, not bin averages: a single slow step can fall
  between them, and ``iterations.parquet`` keeps every row;
* summary: every scalar of ``summary.json``, nested dicts flattened with ``/`` (``slo_attainment_by_class/tight``);
* ``slo_classes``: a table with one row per SLO class (requests, SLO/TTFT/TBT attainment, TTFT p50/p99);
* ``plots/<name>``: the figures of ``runtime.plots.run_figures(output_dir)``, as images.

The run is named after ``output_dir``, tagged ``scheduler:<name>``, ``workload:<name>`` and ``cfg.tags``, grouped by
the sweep directory's name in a multirun (``group`` overrides it), and its ``job_type`` is the runtime (sim or live).

Mode: ``offline`` by default (``WANDB_MODE``; ``WANDB_PROJECT`` and ``WANDB_ENTITY`` are read too, see
``conf/logger/wandb.yaml``). W&B's files go under the run's own directory, so an offline run is uploaded later with::

    wandb sync <output_dir>/wandb/offline-run-*          # one run
    wandb sync multirun/<task>/<time>/*/wandb/offline-run-*   # a whole sweep

``WANDB_MODE=disabled`` logs nothing and does not import wandb.

Failure policy: logging never fails a run and never stalls it. Any error gives one warning and ``log_run`` returns
(the run's files are already written). In ``online`` mode the W&B server (``WANDB_BASE_URL``, else wandb's default)
must first answer one HTTP request, any status, within ``connect_timeout_s`` (through ``HTTPS_PROXY`` where set).
When it does not, or when the online ``wandb.init`` fails anyway (bad API key; no answer within
``init_timeout_s``), the run is logged ``offline`` instead, so it is kept for a later ``wandb sync``, and the warning
says so. ``finish_timeout_s`` bounds the final upload of an online run; what is not sent stays on disk. When
``log_run`` returns, an offline run's files are complete (see the note in ``_log``).
"""
from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

MAX_TAG_LEN = 64  # W&B rejects longer tags.


@dataclass
class WandbLogger:
    """Logs one finished run to W&B; the keys of ``conf/logger/wandb.yaml``."""

    mode: str = "offline"  # online, offline or disabled (W&B's aliases dryrun and run are accepted)
    project: str = "accelgen"
    entity: str | None = None
    group: str | None = None  # None: the sweep directory's name in a multirun, no group in a single run
    tags: list[str] = field(default_factory=list)  # added to scheduler:, workload: and cfg.tags
    max_points: int = 5000
    connect_timeout_s: float = 3.0
    init_timeout_s: float = 30.0
    finish_timeout_s: float = 60.0

    def log_run(self, cfg: DictConfig, output_dir: Path, summary: dict, *,
                sweep_dir: Path | None = None) -> str | None:
        """Log the run in ``output_dir``; returns the W&B run directory (for ``wandb sync``), None if nothing was
        logged. Never raises."""
        mode = str(self.mode).lower()
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if mode == "disabled":
            return None
        try:
            if mode not in ("online", "offline"):
                raise ValueError(f"logger.mode must be online, offline or disabled, got {self.mode!r}")
            return self._log(cfg, Path(output_dir), summary, sweep_dir, mode)
        except Exception as error:  # NOTE(wandb): the run's files are written; a logging failure must not cost it.
            _warn(f"W&B logging failed: {_one_line(error)}")
            return None

    def _log(self, cfg: DictConfig, output_dir: Path, summary: dict, sweep_dir: Path | None, mode: str) -> str | None:
        import wandb

        fallback = None
        if mode == "online" and not _reachable(url := _base_url(), self.connect_timeout_s):
            fallback = f"{url} did not answer within {self.connect_timeout_s:g} s"
            mode = "offline"
        if mode == "offline":
            _no_analytics()
        kwargs = dict(
            project=self.project or None, entity=self.entity or None, dir=str(output_dir), name=output_dir.name,
            group=self.group or (Path(sweep_dir).name if sweep_dir is not None else None),
            job_type=summary.get("runtime") or cfg.get("task_name"), tags=self._tags(cfg, summary),
            config=_config(cfg), reinit="create_new",  # never finish a run the caller has open (notebooks)
        )
        try:
            run = wandb.init(mode=mode, settings=self._settings(wandb), **kwargs)
        except Exception as error:
            if mode != "online":
                raise
            fallback = f"online init failed ({_one_line(error)})"
            _no_analytics()
            run = wandb.init(mode="offline", settings=self._settings(wandb), **kwargs)
        if fallback is not None:
            _warn(f"W&B: {fallback}; logged offline instead, upload later with `wandb sync {run.settings.sync_dir}`")
        try:
            self._log_contents(wandb, run, output_dir, summary)
        finally:
            run.finish()
            # NOTE(wandb): finish() returns before wandb's service has closed the run's files (that message is
            # fire-and-forget; wandb completes it at interpreter exit). Stopping the service, unless the caller has
            # a run of its own open, makes an offline run complete on disk when log_run returns, even if a
            # launcher then kills this worker. Online runs are left alone: their upload may still be going on.
            if run.settings.mode in ("offline", "dryrun") and wandb.run is None:
                wandb.teardown()
        return str(run.settings.sync_dir)

    def _settings(self, wandb):
        # Everything is logged after the run, in one go: console capture, system metrics and a pip freeze of the
        # logging process would describe the logger, not the run.
        return wandb.Settings(init_timeout=self.init_timeout_s, login_timeout=self.init_timeout_s,
                              finish_timeout=self.finish_timeout_s, console="off", quiet=True,
                              x_disable_stats=True, x_save_requirements=False)

    def _tags(self, cfg: DictConfig, summary: dict) -> list[str]:
        tags = [f"scheduler:{summary.get('scheduler')}", f"workload:{summary.get('workload')}",
                *(cfg.get("tags") or []), *self.tags]
        return list(dict.fromkeys(str(t)[:MAX_TAG_LEN] for t in tags if str(t)))

    def _log_contents(self, wandb, run, output_dir: Path, summary: dict) -> None:
        iterations_path, requests_path = output_dir / "iterations.parquet", output_dir / "requests.parquet"
        requests = pd.read_parquet(requests_path) if requests_path.exists() else None
        if iterations_path.exists():
            series = iteration_series(pd.read_parquet(iterations_path), requests,
                                      kv_num_blocks=summary.get("kv_num_blocks"), max_points=self.max_points)
            run.define_metric("iteration/start_time")
            run.define_metric("iteration/*", step_metric="iteration/start_time")
            for row in series.to_dict("records"):
                run.log({f"iteration/{k}": v for k, v in row.items() if not _is_nan(v)})
        run.summary.update(flatten(summary))
        media = {}
        if requests is not None:
            classes = class_table(requests)
            media["slo_classes"] = wandb.Table(dataframe=classes.reset_index())
        media.update({f"plots/{name}": image for name, image in _figures(wandb, output_dir).items()})
        if media:
            run.log(media)


def iteration_series(iterations: pd.DataFrame, requests: pd.DataFrame | None, *, kv_num_blocks: int | None,
                     max_points: int) -> pd.DataFrame:
    """The per-iteration series W&B gets: at most ``max_points`` rows, evenly spaced, first and last kept."""
    it = iterations
    series = pd.DataFrame({"index": it["iteration"] if "iteration" in it else np.arange(len(it)),
                           "start_time": it["start_time"], "duration_s": it["duration_s"],
                           "batch_tokens": it["prefill_tokens"] + it["decode_tokens"],
                           "prefill_tokens": it["prefill_tokens"], "decode_tokens": it["decode_tokens"]})
    if kv_num_blocks:
        series["kv_utilization"] = it["kv_blocks_used"] / kv_num_blocks
    if "num_waiting" in it:  # NOTE(wandb): older iterations.parquet files have no queue length.
        series["num_waiting"] = it["num_waiting"]
    if requests is not None and len(it):
        series["slo_attainment"] = running_attainment(requests, (it["start_time"] + it["duration_s"]).to_numpy())
    if len(series) > max_points:
        keep = np.unique(np.linspace(0, len(series) - 1, max(max_points, 2)).round().astype(np.int64))
        series = series.iloc[keep]
    return series.reset_index(drop=True)


def running_attainment(requests: pd.DataFrame, times: np.ndarray) -> np.ndarray:
    """For each time t: of the requests finished by t, the fraction that met their SLO (NaN before the first)."""
    done = requests[requests["finished_time"].notna()].sort_values("finished_time")
    num_met = np.concatenate([[0], np.cumsum(done["met_slo"].to_numpy(dtype=np.int64))])
    num_done = np.searchsorted(done["finished_time"].to_numpy(), times, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_done > 0, num_met[num_done] / num_done, np.nan)


def class_table(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per SLO class: requests, SLO/TTFT/TBT attainment (over every arrival), TTFT p50/p99 (finished)."""
    by_class = requests.groupby("slo_class", sort=True)
    return pd.DataFrame({
        "requests": by_class.size(),
        "slo_attainment": by_class["met_slo"].mean(),
        "ttft_attainment": by_class["met_ttft"].mean(),
        "tbt_attainment": by_class["met_tbt"].mean(),
        "ttft_p50_s": by_class["ttft_s"].quantile(0.5),
        "ttft_p99_s": by_class["ttft_s"].quantile(0.99),
    })


def flatten(summary: dict, prefix: str = "") -> dict:
    """Scalars of ``summary``, nested dicts flattened with ``/``; lists and None are left out."""
    flat = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str, np.generic)):
            flat[name] = value.item() if isinstance(value, np.generic) else value
    return flat


def _config(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside a Hydra app: keep the config as written
        return OmegaConf.to_container(cfg, resolve=False)


def _figures(wandb, output_dir: Path) -> dict:
    """``runtime.plots.run_figures`` as W&B images; nothing when that module or function is not there."""
    try:
        from runtime.plots import run_figures
    except ImportError:
        return {}
    from PIL import Image

    images = {}
    try:
        for name, figure in run_figures(output_dir).items():
            # NOTE(wandb): rendered here, because wandb.Image(figure) reads matplotlib.pyplot without importing it.
            png = io.BytesIO()
            figure.savefig(png, format="png")
            png.seek(0)
            images[name] = wandb.Image(Image.open(png))
            if getattr(figure.canvas, "manager", None) is not None:  # made by pyplot, which keeps it until closed
                import matplotlib.pyplot as plt

                plt.close(figure)
    except Exception as error:
        _warn(f"W&B: plots skipped: {_one_line(error)}")
    return images


def _base_url() -> str:
    import wandb

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def _reachable(url: str, timeout_s: float) -> bool:
    """Whether the server at ``url`` answers an HTTP request (any status) within ``timeout_s``, DNS included."""
    import requests  # a dependency of wandb; it also honours HTTP(S)_PROXY as wandb does

    answered = threading.Event()

    def probe() -> None:
        try:
            requests.get(url, timeout=timeout_s, stream=True).close()
            answered.set()
        except Exception:
            pass

    # NOTE(wandb): an HTTP request, not just a TCP connect: a host that accepts connections but never answers
    # would hold wandb.init for init_timeout_s and then wandb's own error report for ~20 s at interpreter exit.
    # NOTE(wandb): a daemon thread, because requests' timeout does not cover name resolution, which can hang.
    worker = threading.Thread(target=probe, daemon=True, name="wandb-probe")
    worker.start()
    worker.join(timeout_s)
    return answered.is_set()


def _no_analytics() -> None:
    """Turn off wandb's own usage analytics for this process, as wandb does for offline runs.

    NOTE(wandb): wandb 0.31 builds its process-wide analytics from the environment's settings (online unless
    WANDB_MODE says otherwise), not from the offline run's, and at interpreter exit posts them to the W&B server with
    a 10 s timeout per request: where a firewall drops packets, every offline run would hang ~20 s at exit.
    """
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()
    except Exception:  # another wandb version: nothing to turn off, or nothing we know how to
        pass


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
