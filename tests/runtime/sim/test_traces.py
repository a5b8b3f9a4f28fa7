from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runtime.core.errors import WorkloadError
from runtime.sim.traces import read_azure_trace, read_length_trace, rescale_arrivals, select_window

REPO_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_AZURE = (
    AZURE_HEADER
    + "2023-11-16 18:15:46.6805900,374,44\n"
    + "2023-11-16 18:15:50.9951690,396,109\n"
    + "2023-11-16 18:15:50.9951690,1,7\n"
)
LENGTH_HEADER = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_azure_trace(tmp_path):
    frame = read_azure_trace(_write(tmp_path, GOOD_AZURE))
    assert list(frame.columns) == ["arrival_time", "num_prompt_tokens", "num_output_tokens"]
    np.testing.assert_allclose(frame["arrival_time"], [0.0, 4.314579, 4.314579])
    assert frame["num_prompt_tokens"].tolist() == [374, 396, 1]
    assert frame["num_output_tokens"].dtype == np.int64


def test_read_azure_trace_numeric_seconds(tmp_path):
    frame = read_azure_trace(_write(tmp_path, AZURE_HEADER + "10.5,5,5\n12,5,5\n"))
    np.testing.assert_allclose(frame["arrival_time"], [0.0, 1.5])


def test_read_length_trace_ignores_extra_columns(tmp_path):
    frame = read_length_trace(_write(tmp_path, LENGTH_HEADER + "74,918,992,0.08\n290,905,1195,0.32\n"))
    assert list(frame.columns) == ["num_prompt_tokens", "num_output_tokens"]
    assert frame["num_output_tokens"].tolist() == [918, 905]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "file is empty"),
        (AZURE_HEADER, "no data rows"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n", "line 1.*missing column.*GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens, TIMESTAMP\n0,3,4,1\n", r"\['TIMESTAMP'\] appear more than once"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,4\n2023-11-16 18:15:47,abc,4\n", "data row 2 .*ContextTokens.*non-numeric value 'abc'"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,4\n2023-11-16 18:15:47,3,\n", "data row 2 .*GeneratedTokens.*missing value"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,NaN\n", "data row 1 .*GeneratedTokens.*missing value \\('NaN'\\)"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,0\n", "data row 1 .*GeneratedTokens.*output length must be >= 1"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,-2\n", "GeneratedTokens.*output length must be >= 1"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,4\n2023-11-16 18:15:47,-1,4\n", "data row 2 .*ContextTokens.*prompt length must be >= 1"),
        (AZURE_HEADER + "2023-11-16 18:15:46,0,4\n", "data row 1 .*ContextTokens.*prompt length must be >= 1"),
        (AZURE_HEADER + "2023-11-16 18:15:46,1e30,4\n", "data row 1 .*ContextTokens.*implausibly large"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3.5,4\n", "ContextTokens.*not an integer"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,4\nyesterday,3,4\n", "data row 2 .*TIMESTAMP.*unparsable timestamp 'yesterday'"),
        (AZURE_HEADER + "2023-11-16 18:15:46,3,4\n,3,4\n", "data row 2 .*TIMESTAMP.*missing value"),
        (
            AZURE_HEADER + "2023-11-16 18:15:46,3,4\n2023-11-16 18:15:48,3,4\n2023-11-16 18:15:47,3,4\n",
            r"data row 3 \(line 4\).*TIMESTAMP.*earlier than the previous",
        ),
        (AZURE_HEADER + "5,3,4\n4,3,4\n", "data row 2 .*TIMESTAMP.*earlier"),
        # Found by tests/test_fuzz_traces.py: finite stamps further apart than a float holds once loaded as inf.
        (AZURE_HEADER + "-1e308,3,4\n1e308,3,4\n", "data row 2 .*TIMESTAMP.*too far from the first row's '-1e308'"),
    ],
)
def test_malformed_azure_trace(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(WorkloadError, match=match) as info:
        read_azure_trace(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("num_prefill_tokens\n3\n", "missing column.*num_decode_tokens"),
        # Found by the trace fuzzer: a column named twice, once with spaces (it crashed with an AttributeError).
        ("num_prefill_tokens, num_decode_tokens ,num_decode_tokens\n1,1,1\n",
         r"line 1\): column\(s\) \['num_decode_tokens'\] appear more than once"),
        ("num_prefill_tokens,num_decode_tokens,num_decode_tokens\n1,1,2\n",
         r"column\(s\) \['num_decode_tokens'\] appear more than once"),
        (LENGTH_HEADER + "3,x,3,1\n", "data row 1 .*num_decode_tokens.*non-numeric"),
        (LENGTH_HEADER + "-3,4,1,1\n", "num_prefill_tokens.*prompt length"),
        (LENGTH_HEADER + "3,0,3,1\n", "num_decode_tokens.*output length"),
    ],
)
def test_malformed_length_trace(tmp_path, text, match):
    with pytest.raises(WorkloadError, match=match):
        read_length_trace(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(WorkloadError, match="missing"):
        read_azure_trace(tmp_path / "nope.csv")
    with pytest.raises(WorkloadError, match="missing"):
        read_length_trace(tmp_path / "nope.csv")


def _frame(times):
    n = len(times)
    return pd.DataFrame({"arrival_time": np.asarray(times, float), "num_prompt_tokens": np.arange(n) + 1,
                         "num_output_tokens": np.ones(n, int)})


def test_select_window():
    frame = _frame([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    window = select_window(frame, start_s=1.5, duration_s=3.0)
    np.testing.assert_allclose(window["arrival_time"], [0.5, 1.5, 2.5])
    assert window["num_prompt_tokens"].tolist() == [3, 4, 5]
    assert len(select_window(frame, max_requests=2)) == 2
    assert len(select_window(frame, start_s=10.0)) == 0


def test_rescale_arrivals():
    t = np.array([1.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(rescale_arrivals(t, time_scale=2.0), [2.0, 4.0, 6.0, 10.0])
    scaled = rescale_arrivals(t, target_rate=2.0)
    assert scaled[0] == 1.0
    assert len(scaled) / (scaled[-1] - scaled[0]) == pytest.approx(2.0)
    with pytest.raises(WorkloadError, match="two requests"):
        rescale_arrivals(np.array([1.0]), target_rate=2.0)


@needs_data
@pytest.mark.data
@pytest.mark.parametrize(("name", "rows", "duration"), [("conv", 19366, 3501.7), ("code", 8819, 3435.9)])
def test_real_azure_traces(name, rows, duration):
    frame = read_azure_trace(SHARED_DATA / "traces" / "azure2023" / f"AzureLLMInferenceTrace_{name}.csv")
    assert len(frame) == rows
    assert frame["arrival_time"].iloc[-1] == pytest.approx(duration, abs=0.05)
    assert (frame["num_output_tokens"] >= 6).all()


@needs_data
@pytest.mark.data
def test_real_length_traces():
    sharegpt = read_length_trace(SHARED_DATA / "traces/sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    arxiv = read_length_trace(SHARED_DATA / "traces/vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv")
    assert len(sharegpt) == 30731 and len(arxiv) == 28257
    assert sharegpt["num_prompt_tokens"].mean() == pytest.approx(2340.0, abs=0.1)
