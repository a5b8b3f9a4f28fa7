"""Workloads: the simulator's and the live runtime's ``RequestSource``.

A ``Workload`` holds plain arrays (arrival time, prompt and output lengths, application index), 28 bytes a
request (28 MB for 1M requests); ``Request`` objects are created only when the engine asks for the arrivals up to
its clock, from the released slice of the arrays. Three builders, used as Hydra ``_target_``s, make one:

* ``mixed_workload``: applications mixed by weight, lengths from the shipped percentile tables
  (``runtime.sim.length_tables``), Poisson or Gamma arrivals. Needs no data outside the package.
* ``trace_workload``: replay of an Azure 2023 trace (arrivals and lengths), time-scaled and truncated.
* ``length_trace_workload``: lengths from a ShareGPT/arXiv length trace, synthetic arrivals.

The YAML gives the scalars and dicts; the CLI passes the run-time objects ``slo_classes``, ``max_model_len`` and
``seed`` as keywords. ``length_policy`` decides what happens to a request longer than ``max_model_len``:

* ``"clip"`` (default): ``o = min(o, max_model_len - 1)``, then ``p = min(p, max_model_len - o)``, so
  ``p + o <= max_model_len`` with ``p, o >= 1``. The output is kept over the prompt because output length drives
  decode time and KV growth, which is what the schedulers compete on; a long prompt loses its head, as vLLM's
  prompt truncation does. ``Workload.num_clipped`` counts the requests changed.
* ``"keep"``: lengths are left as they are; the scheduler rejects what cannot fit, with a reason.

**Training split.** Policies that learn output lengths offline (CacheOPT's predictors, algorithms.md section 7.1)
read ``Workload.training_frame()``: a DataFrame with columns ``app``, ``slo_class``, ``num_prompt_tokens``,
``num_output_tokens`` of requests that are *not* replayed, or None. Each builder takes ``num_train_requests``
(default 2000; 0 = no split) and applies the same ``length_policy`` to the split as to the replay:

* ``mixed_workload`` draws that many extra requests from the same tables and weights, from a second RNG stream
  ``default_rng([seed, 0x7E57])``, so the replayed requests are byte-identical whatever ``num_train_requests`` is.
* The trace builders take trace rows that are not replayed, at most ``num_train_requests``: first the rows before
  the first replayed row (the latest of them: the history just before the replay, as a deployed predictor would
  see), then the remaining unreplayed rows in file order. A replay that uses every row has no split (None).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runtime.core.errors import ConfigError, WorkloadError
from runtime.core.request import Request, SLOClass
from runtime.sim.arrivals import check_positive, sample_arrivals
from runtime.sim.length_tables import LengthTable
from runtime.sim.traces import read_azure_trace, read_length_trace, rescale_arrivals, select_window

LENGTH_POLICIES = ("clip", "keep")
TRAINING_COLUMNS = ("app", "slo_class", "num_prompt_tokens", "num_output_tokens")
# Second seed word (arbitrary) of the training split's RNG stream, so it never shares draws with the replay.
_TRAIN_STREAM = 0x7E57


class Workload:
    """Requests in arrival order, released lazily by ``arrivals_until(now)`` (implements ``RequestSource``).

    Request ``i`` (0-based, arrival order) gets ``req_id = f"r{i}"``, its application's name and SLO class, and
    that class's ``ttft_slo_s``/``tbt_slo_s``. Equal arrival times keep array order. ``training`` is the optional
    training split (module docstring), returned by ``training_frame()``.
    """

    def __init__(
        self,
        *,
        name: str,
        arrival_time: np.ndarray,
        num_prompt_tokens: np.ndarray,
        num_output_tokens: np.ndarray,
        app_index: np.ndarray,
        apps: Sequence[str],
        app_slo_classes: Sequence[str],
        slo_classes: Mapping[str, SLOClass],
        num_clipped: int = 0,
        training: pd.DataFrame | None = None,
    ) -> None:
        self.name = name
        self.arrival_time = np.asarray(arrival_time, dtype=np.float64)
        self.num_prompt_tokens = np.asarray(num_prompt_tokens, dtype=np.int64)
        self.num_output_tokens = np.asarray(num_output_tokens, dtype=np.int64)
        self.app_index = np.asarray(app_index, dtype=np.int32)
        self.apps = tuple(apps)
        self.app_slo_classes = tuple(app_slo_classes)
        self.num_clipped = int(num_clipped)
        n = len(self.arrival_time)
        if n == 0:
            raise WorkloadError(f"workload {name!r} has no requests")
        if not (len(self.num_prompt_tokens) == len(self.num_output_tokens) == len(self.app_index) == n):
            raise WorkloadError(f"workload {name!r}: arrival, length and app arrays differ in length")
        if len(self.apps) != len(self.app_slo_classes):
            raise WorkloadError(f"workload {name!r}: apps and app_slo_classes differ in length")
        bad_time = ~np.isfinite(self.arrival_time) | (self.arrival_time < 0)
        _check_first(name, bad_time, "arrival_time", "is not finite and >= 0")
        _check_first(name, np.diff(self.arrival_time) < 0, "arrival_time", "decreases", offset=1)
        _check_first(name, self.num_prompt_tokens < 1, "num_prompt_tokens", "must be >= 1")
        _check_first(name, self.num_output_tokens < 1, "num_output_tokens", "must be >= 1")
        _check_first(name, (self.app_index < 0) | (self.app_index >= len(self.apps)), "app_index", "is out of range")
        classes = _as_slo_classes(slo_classes)
        # Per app: (app, slo class name, ttft, tbt), looked up once instead of per request.
        self._app_info = [
            (app, slo, classes[slo].ttft_slo_s, classes[slo].tbt_slo_s)
            for app, slo in zip(self.apps, (_check_slo_class(s, classes) for s in self.app_slo_classes))
        ]
        self._training = _check_training(name, training)
        self._cursor = 0
        self._num = n
        # The next unreleased arrival as a Python float: the engine asks every step, and most steps see none.
        self._next_time = float(self.arrival_time[0])

    # RequestSource -------------------------------------------------------------------------------------------------
    def has_pending(self) -> bool:
        return self._cursor < self._num

    def next_arrival_time(self) -> float:
        return self._next_time

    def arrivals_until(self, now: float) -> list[Request]:
        """Every not-yet-released request with ``arrival_time <= now``, in arrival order; each is released once."""
        if now < self._next_time:
            return []
        start = self._cursor
        # NOTE(workload): searchsorted over the whole array equals bisect from the cursor (times never decrease),
        # and only the released slice becomes Python objects: no per-request Python rows are kept (1M requests
        # would cost ~110 MB of lists).
        end = int(np.searchsorted(self.arrival_time, now, side="right"))
        self._cursor = end
        self._next_time = float(self.arrival_time[end]) if end < self._num else float("inf")
        return self._requests(start, end)

    # Inspection ----------------------------------------------------------------------------------------------------
    @property
    def num_requests(self) -> int:
        return len(self.arrival_time)

    def __len__(self) -> int:
        return len(self.arrival_time)

    def reset(self) -> None:
        """Release the requests again from the start (a new run over the same arrays)."""
        self._cursor = 0
        self._next_time = float(self.arrival_time[0])

    def to_frame(self) -> pd.DataFrame:
        apps = np.asarray(self.apps, dtype=object)[self.app_index]
        slos = np.asarray(self.app_slo_classes, dtype=object)[self.app_index]
        return pd.DataFrame({
            "req_id": [f"r{i}" for i in range(len(self))],
            "arrival_time": self.arrival_time,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "app": apps,
            "slo_class": slos,
        })

    def training_frame(self) -> pd.DataFrame | None:
        """The training split (columns ``TRAINING_COLUMNS``, requests not replayed), or None; a copy."""
        return None if self._training is None else self._training.copy()

    def __repr__(self) -> str:
        return f"Workload({self.name!r}, num_requests={len(self)}, apps={self.apps}, released={self._cursor})"

    def _requests(self, start: int, end: int) -> list[Request]:
        # Python lists of the slice: per-element numpy indexing costs more than building the Request itself.
        arrival = self.arrival_time[start:end].tolist()
        prompt = self.num_prompt_tokens[start:end].tolist()
        output = self.num_output_tokens[start:end].tolist()
        info = self._app_info
        requests = []
        for k, app_index in enumerate(self.app_index[start:end].tolist()):
            app, slo, ttft, tbt = info[app_index]
            requests.append(Request(f"r{start + k}", arrival_time=arrival[k], num_prompt_tokens=prompt[k],
                                    max_tokens=output[k], app=app, slo_class=slo, ttft_slo_s=ttft, tbt_slo_s=tbt))
        return requests


# Builders (Hydra targets) ----------------------------------------------------------------------------------------
def mixed_workload(
    *,
    name: str = "mixed",
    num_requests: int,
    arrival: Mapping[str, Any],
    applications: Mapping[str, Mapping[str, Any]],
    length_policy: str = "clip",
    num_train_requests: int = 2000,
    length_scale: float = 1.0,
    slo_classes: Mapping[str, SLOClass],
    max_model_len: int,
    seed: int | None,
) -> Workload:
    """Applications drawn by weight, lengths from each application's table, arrivals from ``arrival``.

    ``length_scale`` multiplies every drawn prompt and output length (rounded, at least 1), before the length
    policy: the tables' shapes at a size a small model on a CPU serves in minutes (``workload=live_small``).

    ``applications``: ``{app: {lengths: <table name>, slo_class: <class>, weight: <float >= 0>}}``; a weight of 0
    switches an application off. Draws from one ``default_rng(seed)`` in a fixed order: (1) the application of
    every request, (2) the lengths of each application's requests, applications in config order, (3) the
    arrival times. Arrivals come last, so a rate sweep with one seed keeps the same requests and only rescales
    their gaps. The training split (``num_train_requests`` requests) repeats steps (1) and (2) on its own stream
    ``default_rng([seed, 0x7E57])`` (fresh entropy when ``seed`` is None).
    """
    num_requests = _check_num_requests(num_requests)
    num_train = _check_num_train(num_train_requests)
    classes = _as_slo_classes(slo_classes)
    scale = length_scale
    if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"workload.length_scale must be a finite number > 0, got {length_scale!r}")
    scale = float(scale)
    if not applications:
        raise ConfigError("workload.applications is empty; give at least one {lengths, slo_class, weight}")
    apps = list(applications)
    tables, app_slo, weights = [], [], []
    for app in apps:
        spec = applications[app]
        missing = {"lengths", "slo_class"} - set(spec)
        unknown = set(spec) - {"lengths", "slo_class", "weight"}
        if missing or unknown:
            raise ConfigError(
                f"workload.applications.{app}: missing {sorted(missing)} / unknown {sorted(unknown)} keys; "
                "expected lengths, slo_class, weight"
            )
        tables.append(LengthTable.load(spec["lengths"]))
        app_slo.append(_check_slo_class(spec["slo_class"], classes, key=f"workload.applications.{app}.slo_class"))
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"workload.applications.{app}.weight must be a finite number >= 0, got {weight!r}")
        weights.append(float(weight))
    total = sum(weights)
    if not total > 0:
        raise ConfigError(f"workload.applications: weights must sum to > 0, got {dict(zip(apps, weights))}")

    probs = np.asarray(weights) / total

    def draw_requests(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # (1) applications, (2) lengths per application: this order is part of the seed contract.
        app_index = rng.choice(len(apps), size=n, p=probs)
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        for k, table in enumerate(tables):
            mask = app_index == k
            prompt[mask], output[mask] = table.sample(int(mask.sum()), rng)
        if scale != 1.0:
            prompt = np.maximum(1, np.rint(prompt * scale)).astype(np.int64)
            output = np.maximum(1, np.rint(output * scale)).astype(np.int64)
        return app_index, prompt, output

    rng = np.random.default_rng(seed)
    app_index, prompt, output = draw_requests(num_requests, rng)
    # (3) arrivals.
    arrival_time = sample_arrivals(num_requests, arrival, rng)
    training = None
    if num_train > 0:
        # A separate stream, drawn after the replay: the replayed requests never depend on num_train_requests.
        train_rng = np.random.default_rng(None if seed is None else [int(seed), _TRAIN_STREAM])
        t_app, t_prompt, t_output = draw_requests(num_train, train_rng)
        training = _training_frame(t_prompt, t_output, np.asarray(apps, dtype=object)[t_app],
                                   np.asarray(app_slo, dtype=object)[t_app], length_policy, max_model_len)
    return _build(name, arrival_time, prompt, output, app_index, apps, app_slo, classes, length_policy, max_model_len,
                  training)


def trace_workload(
    *,
    name: str,
    path: str | Path,
    slo_class: str,
    app: str,
    time_scale: float = 1.0,
    target_rate: float | None = None,
    max_requests: int | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    length_policy: str = "clip",
    num_train_requests: int = 2000,
    slo_classes: Mapping[str, SLOClass],
    max_model_len: int,
    seed: int | None = None,
) -> Workload:
    """Replay an Azure trace. ``seed`` is accepted for a uniform interface; a replay draws nothing.

    Steps, in order (``traces.select_window``, ``traces.rescale_arrivals``): keep requests with trace time in
    ``[start_s, start_s + duration_s)`` (seconds from the file's first request); keep the first ``max_requests``;
    shift times so the window starts at 0; then either multiply all times by ``time_scale`` (2 = half the rate)
    or, with ``target_rate``, stretch the gaps so the mean rate ``num_requests / (last - first arrival)`` (the
    data README's definition) equals ``target_rate`` req/s. The training split is taken from the rows outside the
    window or past ``max_requests`` (module docstring).
    """
    classes = _as_slo_classes(slo_classes)
    slo = _check_slo_class(slo_class, classes)
    check_positive("workload.time_scale", time_scale)
    if target_rate is not None:
        check_positive("workload.target_rate", target_rate)
        if time_scale != 1.0:
            raise ConfigError("workload: give either time_scale or target_rate, not both")
    if start_s < 0:
        raise ConfigError(f"workload.start_s must be >= 0, got {start_s!r}")
    if duration_s is not None:
        check_positive("workload.duration_s", duration_s)
    if max_requests is not None:
        max_requests = _check_num_requests(max_requests, key="max_requests")
    num_train = _check_num_train(num_train_requests)

    trace = read_azure_trace(_check_trace_exists(path))
    # A row-number column rides through select_window so we know which trace rows are replayed.
    window = select_window(trace.assign(_row=np.arange(len(trace))), start_s=start_s, duration_s=duration_s,
                           max_requests=max_requests)
    replayed = window.pop("_row").to_numpy()
    if len(window) == 0:
        raise WorkloadError(f"{path}: no requests left after truncation (start_s={start_s}, duration_s={duration_s}, "
                            f"max_requests={max_requests}; the trace spans {trace['arrival_time'].iloc[-1]:.1f} s)")
    try:
        arrival_time = rescale_arrivals(window["arrival_time"].to_numpy(), time_scale=time_scale, target_rate=target_rate)
    except WorkloadError as exc:
        raise WorkloadError(f"{path}: {exc} in the selected window") from exc
    prompt = window["num_prompt_tokens"].to_numpy()
    output = window["num_output_tokens"].to_numpy()
    app_index = np.zeros(len(window), dtype=np.int32)
    training = _trace_training(trace, replayed, num_train, app, slo, length_policy, max_model_len)
    return _build(name, arrival_time, prompt, output, app_index, [app], [slo], classes, length_policy, max_model_len,
                  training)


def length_trace_workload(
    *,
    name: str,
    path: str | Path,
    app: str,
    slo_class: str,
    arrival: Mapping[str, Any],
    num_requests: int | None = None,
    order: str = "sample",
    length_policy: str = "clip",
    num_train_requests: int = 2000,
    slo_classes: Mapping[str, SLOClass],
    max_model_len: int,
    seed: int | None,
) -> Workload:
    """Lengths from the rows of a ShareGPT/arXiv length trace, arrival times from ``arrival``.

    ``order="sample"`` draws ``num_requests`` rows uniformly with replacement (default: as many as the file has);
    ``order="file"`` takes the first ``num_requests`` rows in file order. Draw order: rows, then arrivals. The
    training split is taken from the rows never replayed (module docstring); with ``order="sample"`` these are the
    rows no draw hit, so no training row's lengths leak into the replay.
    """
    classes = _as_slo_classes(slo_classes)
    slo = _check_slo_class(slo_class, classes)
    num_train = _check_num_train(num_train_requests)
    trace = read_length_trace(_check_trace_exists(path))
    num_rows = len(trace)
    num_requests = _check_num_requests(num_rows if num_requests is None else num_requests)
    rng = np.random.default_rng(seed)
    if order == "sample":
        rows = rng.integers(0, num_rows, size=num_requests)
    elif order == "file":
        if num_requests > num_rows:
            raise ConfigError(f"workload.num_requests={num_requests} exceeds the {num_rows} rows of {path} (order=file)")
        rows = np.arange(num_requests)
    else:
        raise ConfigError(f"workload.order: unknown order {order!r}; available: ['sample', 'file']")
    prompt = trace["num_prompt_tokens"].to_numpy()[rows]
    output = trace["num_output_tokens"].to_numpy()[rows]
    arrival_time = sample_arrivals(num_requests, arrival, rng)
    app_index = np.zeros(num_requests, dtype=np.int32)
    training = _trace_training(trace, rows, num_train, app, slo, length_policy, max_model_len)
    return _build(name, arrival_time, prompt, output, app_index, [app], [slo], classes, length_policy, max_model_len,
                  training)


def apply_length_policy(
    prompt: np.ndarray, output: np.ndarray, policy: str, max_model_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(prompt, output, num_clipped)`` under ``policy`` (module docstring); inputs are not modified."""
    if policy not in LENGTH_POLICIES:
        raise ConfigError(f"workload.length_policy: unknown policy {policy!r}; available: {list(LENGTH_POLICIES)}")
    if policy == "keep":
        return prompt, output, 0
    if not (isinstance(max_model_len, (int, np.integer)) and max_model_len >= 2):
        raise ConfigError(f"max_model_len must be an integer >= 2 for length_policy 'clip', got {max_model_len!r}")
    new_output = np.minimum(output, max_model_len - 1)
    new_prompt = np.minimum(prompt, max_model_len - new_output)
    num_clipped = int(np.count_nonzero((new_output != output) | (new_prompt != prompt)))
    return new_prompt, new_output, num_clipped


# Helpers ---------------------------------------------------------------------------------------------------------
def _build(name, arrival_time, prompt, output, app_index, apps, app_slo, classes, length_policy, max_model_len,
           training=None):
    prompt, output, num_clipped = apply_length_policy(prompt, output, length_policy, max_model_len)
    return Workload(
        name=name, arrival_time=arrival_time, num_prompt_tokens=prompt, num_output_tokens=output,
        app_index=app_index, apps=apps, app_slo_classes=app_slo, slo_classes=classes, num_clipped=num_clipped,
        training=training,
    )


def _training_frame(prompt, output, app_names, slo_names, length_policy, max_model_len) -> pd.DataFrame:
    # The same length policy as the replay: a predictor must learn the lengths it will be asked about.
    prompt, output, _ = apply_length_policy(prompt, output, length_policy, max_model_len)
    return pd.DataFrame({
        "app": pd.Series(app_names, dtype=object),
        "slo_class": pd.Series(slo_names, dtype=object),
        "num_prompt_tokens": np.asarray(prompt, dtype=np.int64),
        "num_output_tokens": np.asarray(output, dtype=np.int64),
    })


def _trace_training(trace: pd.DataFrame, replayed: np.ndarray, num_train: int, app: str, slo: str, length_policy,
                    max_model_len) -> pd.DataFrame | None:
    """Up to ``num_train`` trace rows not in ``replayed``: the latest rows before the first replayed row, then the
    other unreplayed rows in file order (module docstring); None when there are none or ``num_train`` is 0."""
    if num_train == 0:
        return None
    unused = np.setdiff1d(np.arange(len(trace)), replayed)
    if len(unused) == 0:
        return None
    first = int(replayed.min())
    before, after = unused[unused < first], unused[unused > first]
    take_before = before[len(before) - min(num_train, len(before)):]
    rows = np.concatenate([take_before, after[:num_train - len(take_before)]])
    n = len(rows)
    return _training_frame(trace["num_prompt_tokens"].to_numpy()[rows], trace["num_output_tokens"].to_numpy()[rows],
                           np.full(n, app, dtype=object), np.full(n, slo, dtype=object), length_policy, max_model_len)


def _check_training(name: str, training: pd.DataFrame | None) -> pd.DataFrame | None:
    if training is None or len(training) == 0:
        return None
    missing = [c for c in TRAINING_COLUMNS if c not in training.columns]
    if missing:
        raise WorkloadError(
            f"workload {name!r}: training split lacks column(s) {missing}; expected {list(TRAINING_COLUMNS)}")
    frame = training.loc[:, list(TRAINING_COLUMNS)].reset_index(drop=True)
    for column in ("num_prompt_tokens", "num_output_tokens"):
        frame[column] = frame[column].astype(np.int64)
        bad = frame[column].to_numpy() < 1
        if bad.any():
            raise WorkloadError(f"workload {name!r}: training row {int(np.argmax(bad))}: {column} must be >= 1")
    return frame


def _as_slo_classes(slo_classes: Mapping[str, Any]) -> dict[str, SLOClass]:
    # NOTE(workload): hydra.utils.instantiate(..., slo_classes=...) with `_convert_: all` turns the SLOClass
    # dataclasses the CLI passes into plain dicts, so accept either form.
    out: dict[str, SLOClass] = {}
    for key, value in slo_classes.items():
        if isinstance(value, SLOClass):
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = SLOClass(name=value.get("name", key), ttft_slo_s=value["ttft_slo_s"], tbt_slo_s=value["tbt_slo_s"])
        else:
            raise ConfigError(f"slo_classes.{key}: expected an SLOClass, got {type(value).__name__}")
    return out


def _check_slo_class(name: str, classes: Mapping[str, SLOClass], key: str = "workload.slo_class") -> str:
    if name not in classes:
        raise ConfigError(f"{key}: unknown SLO class {name!r}; available: {sorted(classes)}")
    return name


def _check_num_requests(n: Any, key: str = "num_requests") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"workload.{key} must be an integer >= 1, got {n!r}")
    return int(n)


def _check_num_train(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"workload.num_train_requests must be an integer >= 0 (0: no training split), got {n!r}")
    return int(n)


def _check_trace_exists(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(
            f"trace file {path} is missing: trace replay needs the real traces in ../shared/data, which are not "
            "shipped with accelgen. Use a table-based workload instead (workload=mixed, mixed_gamma, sharegpt or arxiv)."
        )
    return path


def _check_first(name: str, bad: np.ndarray, field: str, what: str, offset: int = 0) -> None:
    if bad.any():
        i = int(np.argmax(bad)) + offset
        raise WorkloadError(f"workload {name!r}: request {i}: {field} {what}")
