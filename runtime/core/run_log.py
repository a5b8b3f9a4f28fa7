"""Run logs: the per-iteration record every run keeps, and the writers of a run's output files.

``IterationLog`` collects one row per step in plain lists (cheap enough for the simulator's hot loop) and becomes
``iterations.parquet`` (``result_stream.ChunkedIterationLog`` writes it in chunks instead, ``results.mode``). ``write_run_outputs`` writes ``requests.parquet``, ``iterations.parquet`` and
``summary.json`` atomically (temporary file, then rename), so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from runtime.core.outputs import SchedulerOutput


class IterationLog:
    """Columnar per-step log (the ``iterations.parquet`` schema)."""

    __slots__ = ("start", "duration", "prefill_tokens", "decode_tokens", "batch_size", "kv_blocks_used", "preempted",
                 "step_cap", "swapped_out", "swap_out_blocks", "swap_in_blocks", "swap_time", "recompute_tokens",
                 "recompute_time", "num_waiting")

    def __init__(self) -> None:
        self.start: list[float] = []
        self.duration: list[float] = []
        self.prefill_tokens: list[int] = []
        self.decode_tokens: list[int] = []
        self.batch_size: list[int] = []
        self.kv_blocks_used: list[int] = []
        self.preempted: list[int] = []
        self.step_cap: list[float] = []
        # KV swapping and recompute (algorithms.md section 7.5): per step, sparse in practice.
        self.swapped_out: list[int] = []
        self.swap_out_blocks: list[int] = []
        self.swap_in_blocks: list[int] = []
        self.swap_time: list[float] = []
        self.recompute_tokens: list[int] = []
        self.recompute_time: list[float] = []
        self.num_waiting: list[int] = []

    def log_step(self, start: float, output: SchedulerOutput, step_time: float, swap_time: float = 0.0,
                 recompute_time: float = 0.0) -> None:
        self.start.append(start)
        self.duration.append(step_time)
        self.prefill_tokens.append(output.num_prefill_tokens if output.prefill_chunks else 0)
        self.decode_tokens.append(output.num_decode_tokens)
        self.batch_size.append(len(output.num_scheduled_tokens))
        self.kv_blocks_used.append(output.num_used_blocks)
        self.preempted.append(len(output.preempted_req_ids))
        cap = output.step_cap_s
        self.step_cap.append(math.nan if cap is None else cap)
        self.swapped_out.append(len(output.swapped_out_req_ids))
        self.swap_out_blocks.append(len(output.blocks_to_swap_out))
        self.swap_in_blocks.append(len(output.blocks_to_swap_in))
        self.swap_time.append(swap_time)
        self.recompute_tokens.append(output.num_recompute_tokens)
        self.recompute_time.append(recompute_time)
        self.num_waiting.append(output.num_waiting)

    def __len__(self) -> int:
        return len(self.start)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "iteration": range(len(self.start)),
                "start_time": pd.array(self.start, dtype="float64"),
                "duration_s": pd.array(self.duration, dtype="float64"),
                "prefill_tokens": pd.array(self.prefill_tokens, dtype="int64"),
                "decode_tokens": pd.array(self.decode_tokens, dtype="int64"),
                "batch_size": pd.array(self.batch_size, dtype="int64"),
                "kv_blocks_used": pd.array(self.kv_blocks_used, dtype="int64"),
                "num_waiting": pd.array(self.num_waiting, dtype="int64"),
                "num_preempted": pd.array(self.preempted, dtype="int64"),
                "step_cap_s": pd.array(self.step_cap, dtype="float64"),
                "num_swapped_out": pd.array(self.swapped_out, dtype="int64"),
                "swap_out_blocks": pd.array(self.swap_out_blocks, dtype="int64"),
                "swap_in_blocks": pd.array(self.swap_in_blocks, dtype="int64"),
                "swap_time_s": pd.array(self.swap_time, dtype="float64"),
                "recompute_tokens": pd.array(self.recompute_tokens, dtype="int64"),
                "recompute_time_s": pd.array(self.recompute_time, dtype="float64"),
            }
        )


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: an interrupted write never leaves half a file.

    The data is flushed to disk before the rename and the rename after it, so a power loss cannot leave the
    final name pointing at a file whose data never reached the disk (a killed process needs only the rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without directory handles: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda p: p.write_text(text))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(Path(path), lambda p: frame.to_parquet(p, index=False, engine="pyarrow"))


def write_run_outputs(output_dir: Path, *, requests: pd.DataFrame | None, iterations: pd.DataFrame | None,
                      summary: dict, tables: dict[str, pd.DataFrame] | None = None) -> None:
    """The run's files; ``tables`` adds scheduler-specific ones (``oracle.parquet``, ``oracle_gap.parquet``).

    ``requests`` or ``iterations`` None: that table is not written here (``results.mode=stream`` has written it
    already, in chunks; ``summary`` keeps none). ``summary.json`` is written last, so its presence means every
    table of the run is complete.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if requests is not None:
        write_parquet(output_dir / "requests.parquet", requests)
    if iterations is not None:
        write_parquet(output_dir / "iterations.parquet", iterations)
    for name, frame in (tables or {}).items():
        write_parquet(output_dir / name, frame)
    write_json(output_dir / "summary.json", summary)
