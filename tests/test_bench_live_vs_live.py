"""bench/live_vs_live.py on small hand-made bench outputs: the live-against-live differences, the counts within the
tolerance, and the refusals (a folder that is no bench output, two folders that ran different experiments)."""
import json

import pandas as pd
import pytest

from tests.conftest import load_bench

METRICS = ["ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "goodput_rps"]


def bench_output(folder, started, live, sim_rels, **meta):
    """A sim_vs_live --out folder: live values per (scheduler, rate), and the sim's relative differences."""
    folder.mkdir()
    meta = {**dict(started=started, model="tiny", num_requests=12, seed=0, threads=None), **meta}
    (folder / "meta.json").write_text(json.dumps(meta))
    rows = []
    for (scheduler, rate), values in live.items():
        rows.append(dict(scheduler=scheduler, rate=rate, runtime="live", **dict(zip(METRICS, values))))
        rows.append(dict(scheduler=scheduler, rate=rate, runtime="sim", **dict(zip(METRICS, [9.0] * 5))))
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame([dict(scheduler=s, rate=r, **{f"{m}_rel": x for m, x in zip(METRICS, rels)})
                  for (s, r), rels in sim_rels.items()]).to_csv(folder / "comparison.csv", index=False)
    return folder


def test_live_runs_are_compared_pair_by_pair(tmp_path):
    a = bench_output(tmp_path / "a", "2026-11-22 10:00", {("vllm", 4.0): [1.0, 2.0, 1.0, 4.0, 4.0],
                                                          ("sarathi", 4.0): [1.0, 1.0, 1.0, 1.0, 1.0]},
                     {("vllm", 4.0): [0.0, 0.2, 0.0, 0.0, 0.0], ("sarathi", 4.0): [0.0] * 5})
    b = bench_output(tmp_path / "b", "2026-11-22 10:30", {("vllm", 4.0): [1.1, 1.0, 1.0, 4.0, 4.0],
                                                          ("orca", 4.0): [1.0] * 5},
                     {("vllm", 4.0): [0.1, 0.3, 0.5, 0.0, 0.0]})
    with load_bench("live_vs_live") as module:
        pairs, summary, sims, own = module.compare([a, b])
        assert module.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    # Only the pair both ran; B against A.
    assert pairs[["scheduler", "rate"]].values.tolist() == [["vllm", 4.0]]
    assert pairs.ttft_p50_s_rel.iloc[0] == pytest.approx(0.1) and pairs.ttft_p99_s_rel.iloc[0] == pytest.approx(-0.5)
    assert summary.within.tolist() == [4] and summary.metrics.tolist() == [5]
    assert summary.minutes_apart.tolist() == [30.0]
    assert summary.ttft_p99_s_max_abs_rel.iloc[0] == pytest.approx(0.5)
    # Each folder's own simulated-vs-live count: a has one miss of 10, b two of 5.
    assert own.within.tolist() == [9, 3] and own.metrics.tolist() == [10, 5]
    assert sims.folder.tolist() == [str(a), str(a), str(b)] and sims.ttft_p99_s_rel.tolist() == [0.2, 0.0, 0.3]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| a → b | 30 min | 4 of 5 |" in table and "| b | 2026-11-22 10:30 | 3 of 5 |" in table
    assert len(pd.read_csv(tmp_path / "out" / "pairs.csv")) == 1
    assert len(pd.read_csv(tmp_path / "out" / "sims.csv")) == 3
    assert (tmp_path / "out" / "live_vs_live.png").read_bytes()[:4] == b"\x89PNG"


def test_other_experiments_and_other_folders_are_refused(tmp_path, capsys):
    live, rels = {("vllm", 4.0): [1.0] * 5}, {("vllm", 4.0): [0.0] * 5}
    a = bench_output(tmp_path / "a", "2026-11-22 10:00", live, rels)
    b = bench_output(tmp_path / "b", "2026-11-22 10:30", live, rels, num_requests=600)
    (tmp_path / "empty").mkdir()
    with load_bench("live_vs_live") as module:
        assert module.main([str(a), str(b)]) == 2
        assert "num_requests 12 in" in capsys.readouterr().err
        assert module.main([str(a), str(tmp_path / "empty")]) == 2
        assert "not a bench/sim_vs_live.py output" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            module.main([str(a)])
