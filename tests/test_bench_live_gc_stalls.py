"""bench/live_gc_stalls.py: a --quick smoke run (tiny model, seconds). Timings are never asserted: it checks that
both heap modes ran, that what the bench patched is put back, and that its collector log counts what it sees."""
import gc

import pandas as pd

from runtime import cli
from runtime.core.outputs import SchedulerOutput, StepResult
from tests.conftest import load_bench


def test_quick_run_records_both_heap_modes_and_restores_the_cli(tmp_path):
    original = cli.frozen_heap
    with load_bench("live_gc_stalls") as module:
        assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs.heap.tolist() == ["unfrozen", "frozen"] and (runs.steps > 0).all()
    assert (runs[["gen0_in_run", "gen1_in_run", "gen2_in_run", "gen2_in_steps"]] >= 0).all().all()
    assert (runs.gen2_in_steps <= runs.gen2_in_run).all() and (runs.slowest_decode_step_ms > 0).all()
    assert "| unfrozen |" in (tmp_path / "table.md").read_text()
    assert cli.frozen_heap is original and gc.get_freeze_count() == 0
    assert not any(isinstance(cb, module.CollectorLog) for cb in gc.callbacks)


def test_collector_log_tells_the_engine_loop_and_steps_apart():
    with load_bench("live_gc_stalls") as module:
        log = module.CollectorLog()

        class Inner:
            def execute(self, output):
                log("start", {"generation": 0})
                log("stop", {"generation": 0, "collected": 0})
                return StepResult(sampled_token_ids={}, step_time=0.003)

        log("start", {"generation": 2})
        log("stop", {"generation": 2, "collected": 0})  # before the first step: not in the run
        marker = module.StepMarker(Inner(), log)
        assert marker.execute(SchedulerOutput(num_scheduled_tokens={"r": 1}, decode_context_lens=[40],
                                              decode_req_ids=["r"])).step_time == 0.003
        assert marker.rows[0]["decodes"] == [40] and marker.rows[0]["step_time"] == 0.003
        log("start", {"generation": 1})
        log("stop", {"generation": 1, "collected": 0})  # between steps: in the run, not in a step
    assert [(r["generation"], r["in_run"], r["in_step"]) for r in log.rows] == [
        (2, False, False), (0, True, True), (1, True, False)]
    assert all(r["pause_s"] >= 0 for r in log.rows)
