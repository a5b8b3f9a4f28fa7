"""Bounded-memory run results (``results.mode``): per-request rows and iteration rows streamed to disk in chunks.

``results.mode`` chooses what a run keeps:

* ``full`` (default): the engine keeps every ``Request`` (token timestamps included) and the whole iteration log
  in memory; ``requests.parquet``, ``iterations.parquet`` and ``summary.json`` are written at the end. Nothing in
  this module is used.
* ``stream``: ``ResultStream`` receives each request when it finishes (or is rejected). Finished requests are
  collected into batches of ``batch_size``; a batch becomes ``requests.parquet`` rows with the very function full
  mode uses (``metrics.requests_frame``), after which its requests (and their token timestamps) are dropped. Rows
  are written in arrival order, as in full mode: a row waits in a reorder buffer until every earlier arrival has
  its row. ``ChunkedIterationLog`` writes ``iterations.parquet`` every ``chunk_rows`` steps, keeping every
  ``iteration_every``-th row (the ``iteration`` column keeps the true step index). Both files are written to
  hidden temporary files and renamed when the run ends, so an interrupted run leaves no half file.
* ``summary``: the same, with no parquet file: only ``summary.json``.

Memory. The engine holds the in-flight requests (the scheduler's), at most ``batch_size`` finished requests
awaiting their rows, the reorder buffer (rows of requests that finished before an earlier arrival did: in a stable
run, about the number that finish during the longest request's lifetime), the current iteration chunk, and
``SUMMARY_COLUMNS`` for every request (15 numbers or shared strings each, ~120 B: 120 MB for 1M requests), from
which the summary is computed exactly as in full mode.

Summary equivalence with ``full`` (``metrics.summarise``), the same config and seed:

* Every per-request column, and so every count, sum, mean, attainment (overall and per class) and every TTFT,
  JCT and ``tbt_max_p99_s`` percentile, is computed by the same code on the same rows in the same order: equal.
* ``tbt_p50_s``/``tbt_p95_s``/``tbt_p99_s`` pool every TBT gap of every finished (kept) request, hundreds of
  millions at 1M requests, so they come from ``GapHistogram``: bins ``[g_min (1+ε)^i, g_min (1+ε)^{i+1})`` with
  ε = 1e-4 over [1e-6 s, 1e6 s]; each bin keeps its count and the sum of its gaps. numpy's ``linear`` percentile
  is ``x_(k) + f (x_(k+1) − x_(k))`` with ``k + f = (n − 1) q / 100``; the histogram replaces each order statistic
  ``x_(j)`` by the mean of the gaps in its bin, which lies in the same bin, so ``|x̂_(j) − x_(j)| ≤ ε x_(j)`` and
  the interpolated percentile is within a relative ``ε = 1e-4`` of full mode's (exact when a bin holds one
  distinct value, which is common). Gaps outside [g_min, g_max] fall in the end bins (none in practice).
* ``kv_activity`` totals (``swap_time_s``, ``recompute_time_s``, block and token counts) are summed chunk by chunk:
  integers are equal, float totals within a relative 1e-12 (summation order).
* ``wall_s`` measures the machine, as always.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.core.errors import ConfigError
from runtime.core.metrics import kv_activity, request_rows_and_gaps
from runtime.core.outputs import SchedulerOutput
from runtime.core.request import Request
from runtime.core.run_log import IterationLog

RESULT_MODES = ("full", "stream", "summary")
# The per-request columns ``metrics.summarise`` and ``cli.arrival_rates`` read: kept for every request.
SUMMARY_COLUMNS = (
    "slo_class", "arrival_time", "finished_time", "ttft_s", "jct_s", "num_prompt_tokens", "num_output_tokens",
    "tbt_max_s", "num_preemptions", "num_swaps", "status", "met_ttft", "met_tbt", "met_slo",
)


def check_results_config(mode: str, iteration_every: int, batch_size: int) -> None:
    """ConfigError naming the ``results.*`` key that is out of range."""
    if mode not in RESULT_MODES:
        raise ConfigError(f"results.mode must be one of {list(RESULT_MODES)}, got {mode!r}")
    for key, value in (("iteration_every", iteration_every), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"results.{key} must be an integer >= 1, got {value!r}")


class GapHistogram:
    """Streaming pooled percentiles of TBT gaps: log-spaced bins with counts and sums (module docstring)."""

    def __init__(self, *, rel_error: float = 1e-4, g_min: float = 1e-6, g_max: float = 1e6) -> None:
        self.rel_error = rel_error
        self.g_min = g_min
        self._log_step = math.log1p(rel_error)
        self.num_bins = int(math.ceil(math.log(g_max / g_min) / self._log_step)) + 1
        self.counts = np.zeros(self.num_bins, dtype=np.int64)
        self.sums = np.zeros(self.num_bins, dtype=np.float64)
        self.min = math.inf
        self.max = -math.inf

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def add(self, gaps: np.ndarray) -> None:
        if not gaps.size:
            return
        index = np.log(np.maximum(gaps, self.g_min) / self.g_min) / self._log_step
        index = np.minimum(index.astype(np.int64), self.num_bins - 1)
        self.counts += np.bincount(index, minlength=self.num_bins)
        self.sums += np.bincount(index, weights=gaps, minlength=self.num_bins)
        self.min = min(self.min, float(gaps.min()))
        self.max = max(self.max, float(gaps.max()))

    def percentile(self, q: float) -> float | None:
        """numpy's ``linear`` percentile, each order statistic replaced by its bin's mean; None when empty."""
        n = self.count
        if n == 0:
            return None
        occupied = np.flatnonzero(self.counts)
        cum = np.cumsum(self.counts[occupied])
        means = np.clip(self.sums[occupied] / self.counts[occupied], self.min, self.max)
        pos = (n - 1) * (q / 100.0)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        x_lo = means[np.searchsorted(cum, lo, side="right")]
        x_hi = means[np.searchsorted(cum, hi, side="right")]
        return float(x_lo + (x_hi - x_lo) * (pos - lo))


class _ParquetStream:
    """Row groups appended to a hidden temporary file, renamed to ``path`` by ``close`` (removed by ``abort``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def close(self, empty: pd.DataFrame) -> None:
        if self._writer is None:
            self.write(empty)  # no rows at all: still a file with the schema
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


class ChunkedIterationLog(IterationLog):
    """``IterationLog`` that flushes every ``chunk_rows`` steps: KV totals over every step, and every
    ``iteration_every``-th row to ``path`` (None: no file). ``len()`` counts every step of the run."""

    __slots__ = ("_stream", "_every", "_chunk_rows", "_offset", "_totals")

    def __init__(self, path: Path | None, *, iteration_every: int = 1, chunk_rows: int = 65536) -> None:
        super().__init__()
        self._stream = None if path is None else _ParquetStream(path)
        self._every = iteration_every
        self._chunk_rows = chunk_rows
        self._offset = 0
        self._totals: dict | None = None

    def log_step(self, start: float, output: SchedulerOutput, step_time: float, swap_time: float = 0.0,
                 recompute_time: float = 0.0) -> None:
        IterationLog.log_step(self, start, output, step_time, swap_time, recompute_time)
        if len(self.start) >= self._chunk_rows:
            self._flush()

    def __len__(self) -> int:
        return self._offset + len(self.start)

    def _flush(self) -> None:
        frame = IterationLog.to_frame(self)
        frame["iteration"] += self._offset
        totals = kv_activity(frame)
        self._totals = totals if self._totals is None else {k: self._totals[k] + v for k, v in totals.items()}
        self._offset += len(frame)
        if self._stream is not None:
            keep = frame[(frame["iteration"] % self._every == 0).to_numpy()]
            if len(keep):
                self._stream.write(keep)
        for name in IterationLog.__slots__:
            getattr(self, name).clear()

    def finish(self) -> dict:
        """Flush the last chunk, close the file and return the run's ``kv_activity`` totals."""
        self._flush()
        if self._stream is not None:
            self._stream.close(IterationLog.to_frame(IterationLog()))
        return dict(self._totals)

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()

    def to_frame(self) -> pd.DataFrame:
        raise TypeError("a ChunkedIterationLog streams its rows to iterations.parquet; read that file instead")


class ResultStream:
    """The engine's sink for finished requests in ``stream`` and ``summary`` modes (module docstring).

    ``add_arrival`` is called for every request in arrival order, ``add_finished`` once for each request when it
    finishes or is rejected; ``finish`` returns the ``SUMMARY_COLUMNS`` frame of every request (arrival order) and
    the pooled-gap histogram, for ``metrics.summarise(frame, tbt_gaps=...)``.
    """

    def __init__(self, path: Path | None, *, tbt_mode: str = "max", tbt_percentile: float = 99.0,
                 bound_prefill_iterations: bool = True, warmup_s: float = 0.0, batch_size: int = 4096) -> None:
        self._stream = None if path is None else _ParquetStream(path)
        self._row_args = dict(tbt_mode=tbt_mode, tbt_percentile=tbt_percentile,
                              bound_prefill_iterations=bound_prefill_iterations)
        self.warmup_s = warmup_s
        self.batch_size = batch_size
        self.gaps = GapHistogram()
        self._t_start: float | None = None
        self._num_arrived = 0
        # Arrival index of every request not yet turned into a row.
        self._seq: dict[str, int] = {}
        self._done: list[Request] = []
        # Rows waiting for an earlier arrival's row (reorder buffer), and the next arrival index to write.
        self._pending: pd.DataFrame | None = None
        self._next_seq = 0
        self._summary_parts: list[pd.DataFrame] = []
        self._schema_frame: pd.DataFrame | None = None

    @property
    def num_held(self) -> int:
        """Finished requests held (awaiting their rows)."""
        return len(self._done)

    def add_arrival(self, request: Request) -> None:
        if self._t_start is None:
            self._t_start = request.arrival_time
        self._seq[request.req_id] = self._num_arrived
        self._num_arrived += 1

    def add_finished(self, requests: Iterable[Request]) -> None:
        self._done.extend(requests)
        if len(self._done) >= self.batch_size:
            self._rows()

    def _rows(self) -> None:
        """Turn the held finished requests into rows, release them, and write every row now in arrival order."""
        if not self._done:
            return
        done, self._done = self._done, []
        frame, gaps, owner = request_rows_and_gaps(done, **self._row_args)
        seq = np.fromiter((self._seq.pop(r.req_id) for r in done), dtype=np.int64, count=len(done))
        del done
        kept = frame["arrival_time"].to_numpy() >= self._t_start + self.warmup_s
        self.gaps.add(gaps[kept[owner]])
        frame.insert(0, "_seq", seq)
        if self._schema_frame is None:
            self._schema_frame = frame.iloc[:0].drop(columns="_seq")
        if self._pending is not None:
            frame = pd.concat([self._pending, frame], ignore_index=True)
        frame = frame.sort_values("_seq", kind="stable", ignore_index=True)
        # Rows whose index continues the written prefix without a hole are ready.
        offsets = frame["_seq"].to_numpy() - self._next_seq
        in_place = offsets == np.arange(len(offsets))
        ready = len(in_place) if in_place.all() else int(np.argmin(in_place))
        out = frame.iloc[:ready]
        self._pending = frame.iloc[ready:].reset_index(drop=True) if ready < len(frame) else None
        if ready:
            self._next_seq += ready
            out = out.drop(columns="_seq")
            self._summary_parts.append(out.loc[:, list(SUMMARY_COLUMNS)].reset_index(drop=True))
            if self._stream is not None:
                self._stream.write(out.reset_index(drop=True))

    def finish(self) -> tuple[pd.DataFrame, GapHistogram]:
        self._rows()
        if self._pending is not None or self._seq:
            raise AssertionError(f"{len(self._seq)} requests arrived but never finished: {list(self._seq)[:5]}")
        if self._stream is not None:
            if self._schema_frame is None:
                raise ValueError("no requests arrived: nothing to write")
            self._stream.close(self._schema_frame)
        if not self._summary_parts:
            raise ValueError("no requests arrived: nothing to summarise")
        frame = pd.concat(self._summary_parts, ignore_index=True)
        self._summary_parts = []
        return frame, self.gaps

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()


def open_results(mode: str, output_dir: Path | None, *, iteration_every: int = 1, batch_size: int = 4096,
                 tbt_mode: str = "max", tbt_percentile: float = 99.0, bound_prefill_iterations: bool = True,
                 warmup_s: float = 0.0) -> tuple[ResultStream, ChunkedIterationLog] | tuple[None, None]:
    """The request sink and iteration log for ``results.mode`` (``(None, None)`` for ``full``)."""
    check_results_config(mode, iteration_every, batch_size)
    if mode == "full":
        return None, None
    files = mode == "stream" and output_dir is not None
    sink = ResultStream(Path(output_dir) / "requests.parquet" if files else None, tbt_mode=tbt_mode,
                        tbt_percentile=tbt_percentile, bound_prefill_iterations=bound_prefill_iterations,
                        warmup_s=warmup_s, batch_size=batch_size)
    log = ChunkedIterationLog(Path(output_dir) / "iterations.parquet" if files else None,
                              iteration_every=iteration_every)
    return sink, log
