"""Fuzzed trace files (issue #8): any bytes given to the trace readers load into a valid trace or raise
``WorkloadError`` naming the file, never another exception.

The files are built from a grammar of near-valid CSV (headers with missing, extra, duplicated or padded columns;
cells that are valid, negative, huge, fractional, NaN, empty, garbage or timestamps in several formats, sorted,
duplicated or shuffled) and then mangled at the byte level (a BOM, another encoding, garbage bytes spliced in,
truncation at a random byte as a half-copied file would be). Plain random bytes are fuzzed too. Each loaded trace
is also replayed through ``trace_workload`` / ``length_trace_workload``, which may add only ``ConfigError`` or
``WorkloadError``.

``HYPOTHESIS_PROFILE=long`` (tests/conftest.py) runs thousands of examples per test; see README, "Fuzzing".
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from runtime.core.errors import AccelgenError, WorkloadError
from runtime.sim.traces import AZURE_COLUMNS, LENGTH_COLUMNS, TIMESTAMP_COLUMN, read_azure_trace, read_length_trace
from runtime.sim.workload import length_trace_workload, trace_workload
from tests.conftest import create_slo_classes

MAX_TOKENS = 2**31
AZURE_HEADER = [TIMESTAMP_COLUMN, *AZURE_COLUMNS]
LENGTH_HEADER = [*LENGTH_COLUMNS, "num_total_tokens", "pd_ratio"]

# Cells -----------------------------------------------------------------------------------------------------------
ints = st.one_of(st.integers(1, 5000), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, MAX_TOKENS,
                                                                                       MAX_TOKENS + 1, 2**63, 2**64]))
numbers = st.one_of(
    ints.map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "NaN", "nan", "NA", "N/A", "null", "None", "<NA>", "inf", "-inf", "1e30", "1e-30",
                     "3.0", "3.5", "+4", "0x10", "1_000", " 7 ", "\"12\"", "1,2", "1;2", "٣", "１２"]),
)
stamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f") + "0"),  # the Azure format (7 digits)
    st.datetimes().map(lambda d: d.isoformat() + "+01:00"),                   # time zones, mixed with naive ones
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.floats(-1e12, 1e12, allow_nan=False).map(repr),
    st.integers(-(2**63), 2**64).map(str),
    st.sampled_from(["", "yesterday", "2023-02-30 00:00:00", "2023-11-16", "9999-12-31 23:59:59",
                     "0001-01-01 00:00:00", "2262-04-12 00:00:00", "1677-09-21 00:00:00", "NaT", "nan", "inf",
                     "2023-11-16 25:00:00", "16/11/2023 18:15:46", "1e308", "-1e308"]),
)
garbage = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
cell = st.one_of(numbers, stamps, garbage)


@st.composite
def csv_text(draw, header: list[str], stamp_column: str | None) -> str:
    columns = list(header)
    # The header: drop, add, duplicate, reorder or pad columns.
    if draw(st.booleans()):
        columns = draw(st.permutations(columns))
    if draw(st.integers(0, 9)) == 0:
        columns.pop(draw(st.integers(0, len(columns) - 1)))
    if draw(st.integers(0, 9)) == 0:
        columns.append(draw(st.sampled_from([*columns, "extra", "", "Unnamed: 0"])))
    if draw(st.integers(0, 9)) == 0:
        columns = [f" {c} " if draw(st.booleans()) else c.lower() for c in columns]
    sep = draw(st.sampled_from([","] * 8 + [";", "\t"]))
    num_rows = draw(st.integers(0, 30))
    # Timestamps: sorted, with duplicates (bursts), or shuffled.
    stamp_values = draw(st.lists(st.one_of(st.floats(0, 1e6, allow_nan=False), st.just(0.0)), min_size=num_rows,
                                 max_size=num_rows))
    order = draw(st.sampled_from(["sorted", "sorted", "dupes", "shuffled"]))
    if order != "shuffled":
        stamp_values.sort()
    if order == "dupes" and stamp_values:
        stamp_values = [stamp_values[0]] * len(stamp_values)
    as_date = draw(st.booleans())
    # How often a cell is wild: some files are clean (and must load), some are damaged here and there.
    wild = draw(st.sampled_from([0, 0, 0.01, 0.05, 0.3]))
    rows = []
    for i in range(num_rows):
        row = []
        for column in columns:
            if wild and draw(st.floats(0, 1)) < wild:
                row.append(draw(cell))
            elif stamp_column is not None and column.strip() == stamp_column:
                t = stamp_values[i]
                row.append(str(pd.Timestamp("2023-11-16 18:15:46") + pd.Timedelta(seconds=t)) if as_date else repr(t))
            else:
                row.append(draw(st.one_of(st.integers(1, 5000).map(str), numbers) if wild else
                                st.integers(1, 2**31).map(str)))
        if wild and draw(st.floats(0, 1)) < wild:  # ragged rows: a cell too many or too few
            row = row[:-1] if draw(st.booleans()) else [*row, draw(numbers)]
        rows.append(row)

    def quote(value: str) -> str:
        return f'"{value}"' if any(c in value for c in ",;\t\n\r\"") and draw(st.booleans()) else value

    newline = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    lines = [sep.join(quote(c) for c in columns), *(sep.join(quote(c) for c in row) for row in rows)]
    return newline.join(lines) + draw(st.sampled_from([newline, "", newline * 3]))


@st.composite
def mangled(draw, text: str) -> bytes:
    """Byte-level damage: encodings and BOMs, spliced garbage, truncation."""
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if draw(st.integers(0, 9)) == 0:  # a half-copied file
        data = data[:draw(st.integers(0, len(data)))]
    return data


def azure_files():
    return st.one_of(csv_text(AZURE_HEADER, TIMESTAMP_COLUMN).flatmap(mangled), st.binary(max_size=200))


def length_files():
    return st.one_of(csv_text(LENGTH_HEADER, None).flatmap(mangled), st.binary(max_size=200))


# Checks ----------------------------------------------------------------------------------------------------------
def _check_lengths(frame: pd.DataFrame) -> None:
    for column in ("num_prompt_tokens", "num_output_tokens"):
        values = frame[column].to_numpy()
        assert values.dtype == np.int64
        assert ((values >= 1) & (values <= MAX_TOKENS)).all()
    assert len(frame) >= 1


def _load(reader, data: bytes):
    """``reader`` on a file holding ``data``: the frame, or None after the documented error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        path.write_bytes(data)
        try:
            frame = reader(path)
        except WorkloadError as error:
            assert str(path) in str(error), f"error does not name the file: {error}"
            # Which documented error (hypothesis --hypothesis-show-statistics): the text after the row and field.
            event("WorkloadError: " + re.sub(r"\d+", "N", str(error).replace(str(path), "").split(" got ")[0])[:60])
            return None
        event("loaded")
        return frame


def _replay(builder, data: bytes, **kwargs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        path.write_bytes(data)
        try:
            workload = builder(name="fuzz", path=path, app="chat", slo_class="tight",
                               slo_classes=create_slo_classes(), max_model_len=4096, **kwargs)
        except AccelgenError:
            return
        assert len(workload) >= 1
        times = workload.arrival_time
        assert np.isfinite(times).all() and (np.diff(times) >= 0).all() and (times >= 0).all()


FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@example(data=b"\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\n0,1,1\n")  # a BOM before the header
@example(data=b"TIMESTAMP,ContextTokens,GeneratedTokens\n0,1,1\n1,2,2\n1,3,3\n")  # a burst at one timestamp
@example(data=b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16T18:15:46+01:00,1,1\n2023-11-16 18:15:47,1,1\n")
@example(data=b"TIMESTAMP,ContextTokens,GeneratedTokens\n9999-12-31 23:59:59,1,1\n0001-01-01 00:00:00,1,1\n")
@example(data=b"TIMESTAMP,ContextTokens,GeneratedTokens\n-1e308,1,1\n1e308,1,1\n")
@example(data=b"TIMESTAMP,ContextTokens, ContextTokens,GeneratedTokens\n0,1,1,1\n")  # a column named twice
@given(data=azure_files())
def test_azure_reader_loads_or_raises_workload_error(data):
    frame = _load(read_azure_trace, data)
    if frame is None:
        return
    assert list(frame.columns) == ["arrival_time", *AZURE_COLUMNS.values()]
    _check_lengths(frame)
    times = frame["arrival_time"].to_numpy()
    assert times.dtype == np.float64 and np.isfinite(times).all()
    assert times[0] == 0.0 and (np.diff(times) >= 0).all()
    _replay(trace_workload, data)
    _replay(trace_workload, data, target_rate=2.0, max_requests=5)


@FUZZ
@example(data=b"\xef\xbb\xbfnum_prefill_tokens,num_decode_tokens\n1,1\n")
@example(data=b"num_prefill_tokens,num_decode_tokens\n2147483648,1\n")
@example(data=b"num_prefill_tokens, num_decode_tokens ,num_total_tokens,pd_ratio,num_decode_tokens\n1,1,1,1,1\n")
@given(data=length_files())
def test_length_reader_loads_or_raises_workload_error(data):
    frame = _load(read_length_trace, data)
    if frame is None:
        return
    assert list(frame.columns) == list(LENGTH_COLUMNS.values())
    _check_lengths(frame)
    _replay(length_trace_workload, data, arrival={"process": "poisson", "rate": 2.0}, seed=0)
    _replay(length_trace_workload, data, arrival={"process": "poisson", "rate": 2.0}, seed=0, order="file",
            num_requests=1, length_policy="keep")
