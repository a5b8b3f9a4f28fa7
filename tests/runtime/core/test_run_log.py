from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from runtime.core.outputs import SchedulerOutput
from runtime.core.run_log import IterationLog, write_json, write_parquet, write_run_outputs


def test_iteration_log_rows():
    log = IterationLog()
    out = SchedulerOutput(num_scheduled_tokens={"a": 100, "b": 1, "c": 1}, prefill_chunks=[(100, 0)],
                          decode_context_lens=[5, 9], decode_req_ids=["b", "c"], preempted_req_ids=["d"],
                          num_used_blocks=7)
    log.log_step(1.5, out, 0.02)
    row = log.to_frame().iloc[0]
    assert (row.start_time, row.duration_s, row.prefill_tokens, row.decode_tokens, row.batch_size,
            row.kv_blocks_used, row.num_preempted) == (1.5, 0.02, 100, 2, 3, 7, 1)
    assert math.isnan(row.step_cap_s)  # no planned bound
    out.step_cap_s = 0.05
    log.log_step(1.52, out, 0.02)
    assert log.to_frame().step_cap_s.iloc[1] == 0.05


def test_json_has_no_nan_and_keeps_key_order(tmp_path):
    write_json(tmp_path / "s.json", {"b": float("nan"), "a": {"x": math.inf}, "c": [1.0]})
    text = (tmp_path / "s.json").read_text()
    assert json.loads(text) == {"b": None, "a": {"x": None}, "c": [1.0]}
    assert text.index('"b"') < text.index('"a"')


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    class Unwritable:
        pass

    bad = pd.DataFrame({"x": [Unwritable()]})
    with pytest.raises(Exception):
        write_parquet(tmp_path / "requests.parquet", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_run_outputs_replaces_files_whole(tmp_path):
    frame = pd.DataFrame({"a": [1, 2]})
    write_run_outputs(tmp_path, requests=frame, iterations=frame, summary={"k": 1})
    write_run_outputs(tmp_path, requests=frame.head(1), iterations=frame, summary={"k": 2})
    assert len(pd.read_parquet(tmp_path / "requests.parquet")) == 1
    assert json.loads((tmp_path / "summary.json").read_text()) == {"k": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iterations.parquet", "requests.parquet", "summary.json"]
