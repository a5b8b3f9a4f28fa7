"""Strict readers for the request traces in ``../shared/data/traces`` (data README section 3.1).

Two formats exist:

* Azure LLM inference 2023 (``TIMESTAMP,ContextTokens,GeneratedTokens``): arrivals and lengths.
* Length statistics (ShareGPT, arXiv; ``num_prefill_tokens,num_decode_tokens,...``): lengths only.

Both readers return a ``pandas.DataFrame`` in vLLM's vocabulary (``num_prompt_tokens``, ``num_output_tokens``,
plus ``arrival_time`` in seconds from the first request for Azure). Every check is vectorised, and the first
offending row is reported as ``WorkloadError("<file>: data row <n> (line <n+1>): <field> ...")``, where data
row 1 is the first line after the header. A trace that loads is safe to replay: lengths are integers, outputs
and prompts are in [1, 2^31] and arrival times never decrease.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from runtime.core.errors import WorkloadError

_MAX_TOKENS = 2**31
AZURE_COLUMNS = {"ContextTokens": "num_prompt_tokens", "GeneratedTokens": "num_output_tokens"}
LENGTH_COLUMNS = {"num_prefill_tokens": "num_prompt_tokens", "num_decode_tokens": "num_output_tokens"}
TIMESTAMP_COLUMN = "TIMESTAMP"
# Cells pandas would read as NaN; reported as missing rather than non-numeric.
_MISSING = {"nan", "na", "n/a", "null", "none", "<na>"}


def read_azure_trace(path: str | Path) -> pd.DataFrame:
    """Azure trace -> columns ``arrival_time`` (s from the first request), ``num_prompt_tokens``, ``num_output_tokens``.

    ``TIMESTAMP`` is either a date-time string (the Azure format ``YYYY-MM-DD HH:MM:SS.fffffff``; ISO 8601 in
    general) or a number of seconds. Timestamps must not decrease: the replay relies on file order.
    """
    path = Path(path)
    raw = _read_csv(path, required=[TIMESTAMP_COLUMN, *AZURE_COLUMNS])
    lengths = _parse_lengths(path, raw, AZURE_COLUMNS)
    arrival_time = _parse_timestamps(path, raw[TIMESTAMP_COLUMN])
    return pd.DataFrame({"arrival_time": arrival_time, **lengths})


def read_length_trace(path: str | Path) -> pd.DataFrame:
    """Length-statistics trace -> columns ``num_prompt_tokens``, ``num_output_tokens`` (other columns ignored)."""
    path = Path(path)
    raw = _read_csv(path, required=list(LENGTH_COLUMNS))
    return pd.DataFrame(_parse_lengths(path, raw, LENGTH_COLUMNS))


def select_window(
    frame: pd.DataFrame, *, start_s: float = 0.0, duration_s: float | None = None, max_requests: int | None = None
) -> pd.DataFrame:
    """Rows with ``arrival_time`` in ``[start_s, start_s + duration_s)``, at most the first ``max_requests``,
    with times shifted so the window starts at 0 (a gap before the window's first request is kept)."""
    t = frame["arrival_time"].to_numpy()
    end_s = np.inf if duration_s is None else start_s + duration_s
    keep = np.flatnonzero((t >= start_s) & (t < end_s))[:max_requests]
    window = frame.iloc[keep].reset_index(drop=True)
    window["arrival_time"] = window["arrival_time"] - start_s
    return window


def rescale_arrivals(arrival_time: np.ndarray, *, time_scale: float = 1.0, target_rate: float | None = None) -> np.ndarray:
    """Multiply every time by ``time_scale`` (2 = half the rate), or, with ``target_rate``, stretch the gaps around
    the first arrival so that the mean rate ``n / (last - first)`` (the data README's definition) is
    ``target_rate`` req/s."""
    scaled = np.asarray(arrival_time, dtype=np.float64) * time_scale
    if target_rate is None:
        return scaled
    span = scaled[-1] - scaled[0] if len(scaled) else 0.0
    if len(scaled) < 2 or span <= 0:
        raise WorkloadError("target_rate needs at least two requests at distinct times")
    factor = (len(scaled) / span) / target_rate
    return scaled[0] + (scaled - scaled[0]) * factor


# Helpers ---------------------------------------------------------------------------------------------------------
def _where(path: Path, index: int) -> str:
    # pandas index i is data row i + 1, which sits on file line i + 2 (the header is line 1).
    return f"{path}: data row {index + 1} (line {index + 2})"


def _read_csv(path: Path, *, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise WorkloadError(f"{path}: trace file is missing")
    if not path.is_file():
        raise WorkloadError(f"{path}: not a file")
    try:
        # NOTE(workload): read everything as strings so that a bad cell is reported by us, with its row and field,
        # instead of silently turning the whole column into floats or objects.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise WorkloadError(f"{path}: file is empty (expected a header with columns {required})") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: not a readable CSV file: {exc}") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    # A required column named twice leaves no way to tell which one is meant. pandas renames an exact repeat to
    # "<name>.1"; one that differs only in spaces is caught after the strip above.
    repeated = [c for c in required if list(raw.columns).count(c) > 1
                or any(re.fullmatch(rf"{re.escape(c)}\.\d+", str(other)) for other in raw.columns)]
    if repeated:
        raise WorkloadError(f"{path}: header (line 1): column(s) {repeated} appear more than once; found "
                            f"{list(raw.columns)}")
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise WorkloadError(
            f"{path}: header (line 1): missing column(s) {missing}; found {list(raw.columns)}, expected {required}"
        )
    if len(raw) == 0:
        raise WorkloadError(f"{path}: no data rows after the header")
    return raw


def _parse_lengths(path: Path, raw: pd.DataFrame, columns: dict[str, str]) -> dict[str, np.ndarray]:
    """Source columns -> int64 arrays, keyed by the vLLM names in ``columns``."""
    out: dict[str, np.ndarray] = {}
    for column, name in columns.items():
        text = raw[column].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            cell = text.iloc[i]
            if cell == "" or cell.lower() in _MISSING:
                what = "missing value" + (f" ({cell!r})" if cell else "")
            else:
                what = f"non-numeric value {cell!r}"
            raise WorkloadError(f"{_where(path, i)}: field {column!r}: {what}")
        fractional = values != np.round(values)
        if fractional.any():
            i = int(np.argmax(fractional))
            raise WorkloadError(f"{_where(path, i)}: field {column!r}: token count {text.iloc[i]!r} is not an integer")
        # Every request has a prompt token to prefill and samples at least one token; anything past 2^31 tokens is
        # a corrupt cell (and would overflow the int64 sums downstream), not a request.
        kind = "output" if name == "num_output_tokens" else "prompt"
        low = values < 1
        if low.any():
            i = int(np.argmax(low))
            raise WorkloadError(f"{_where(path, i)}: field {column!r}: {kind} length must be >= 1, got {text.iloc[i]}")
        high = values > _MAX_TOKENS
        if high.any():
            i = int(np.argmax(high))
            raise WorkloadError(
                f"{_where(path, i)}: field {column!r}: {kind} length {text.iloc[i]} is implausibly large (> 2^31)")
        out[name] = values.astype(np.int64)
    return out


def _parse_timestamps(path: Path, text: pd.Series) -> np.ndarray:
    """Timestamps -> float64 seconds from the first row; numbers are taken as seconds, strings as date-times."""
    text = text.str.strip()
    empty = (text == "").to_numpy()
    if empty.any():
        i = int(np.argmax(empty))
        raise WorkloadError(f"{_where(path, i)}: field {TIMESTAMP_COLUMN!r}: missing value")
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        seconds = numeric.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(seconds)
    else:
        stamps = pd.to_datetime(text, format="ISO8601", errors="coerce")
        bad = stamps.isna().to_numpy()
        if not bad.any():
            seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    if bad.any():
        i = int(np.argmax(bad))
        raise WorkloadError(f"{_where(path, i)}: field {TIMESTAMP_COLUMN!r}: unparsable timestamp {text.iloc[i]!r}")
    with np.errstate(over="ignore"):
        decreasing = np.diff(seconds) < 0
    if decreasing.any():
        i = int(np.argmax(decreasing)) + 1
        raise WorkloadError(
            f"{_where(path, i)}: field {TIMESTAMP_COLUMN!r}: timestamp {text.iloc[i]!r} is earlier than the previous "
            f"row's {text.iloc[i - 1]!r} (the trace must be sorted by time)"
        )
    with np.errstate(over="ignore"):
        relative = seconds - seconds[0]
    # Two finite stamps can still be more than 1.8e308 s apart (e.g. -1e308 and 1e308 seconds).
    overflow = ~np.isfinite(relative)
    if overflow.any():
        i = int(np.argmax(overflow))
        raise WorkloadError(
            f"{_where(path, i)}: field {TIMESTAMP_COLUMN!r}: timestamp {text.iloc[i]!r} is too far from the first "
            f"row's {text.iloc[0]!r}")
    return relative
