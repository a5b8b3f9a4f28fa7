"""Smoke test of bench/live_throughput.py: a --quick run (tiny model, 12 requests, our runtime with sarathi and vllm
against HF generate at batch sizes 4 and 8) into a temporary directory. Checks the outputs exist and the token
accounting, never timings. About 15 s on 2 cores. The HF baseline (bench/hf_generate.py) and the rendering
(bench/live_throughput_report.py) are the modules the bench imports."""
import os
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_bench

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bench():
    with load_bench("live_throughput") as module:
        yield module


@pytest.fixture(scope="module")
def hf_generate(bench):
    """``bench/hf_generate.py``, the module ``bench`` imported."""
    return sys.modules["hf_generate"]


@pytest.fixture(scope="module")
def report(bench):
    """``bench/live_throughput_report.py``, the module ``bench`` imported."""
    return sys.modules["live_throughput_report"]


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    import torch

    os.environ["WANDB_MODE"] = "disabled"
    out = tmp_path_factory.mktemp("live_throughput")
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_quick_run_writes_every_output(quick):
    result, out = quick
    for name in ("runs.csv", "summary.csv", "summary.md", "roofline.csv", "steps.csv", "throughput.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert result["md"] == out / "section.md"
    section = result["md"].read_text()
    assert section.startswith("## Live runtime vs Hugging Face generate")
    assert "bench/live_throughput.py --quick" in section and "torch" in section and "threads" in section
    summary = pd.read_csv(out / "summary.csv")
    assert summary.system.tolist() == ["ours/sarathi", "ours/vllm", "hf/B=4", "hf/B=8"]
    assert (summary.output_tok_per_s > 0).all()
    roofline = pd.read_csv(out / "roofline.csv")
    assert roofline.system.tolist() == summary.system.tolist()
    assert (roofline.sum_roofline_s > 0).all()


def test_token_counts_match_the_requests(quick):
    result, out = quick
    requested = result["requested_output_tokens"]
    runs = pd.read_csv(out / "runs.csv")
    assert requested > 0
    assert (runs.requested_output_tokens == requested).all()
    # Both systems produce exactly the requested output tokens (HF's padding is counted apart).
    assert (runs.useful_output_tokens == requested).all()
    assert (runs.sampled_tokens == requested).all()
    ours, hf = runs[runs.kind == "ours"], runs[runs.kind == "hf"]
    assert (ours.num_finished == ours.num_requests).all()
    assert (ours.padded_output_tokens == requested).all()
    assert (hf.padded_output_tokens >= requested).all()
    # Every request's sampled tokens were recorded, one list per request of its own length.
    for system, outputs in result["outputs"].items():
        assert sum(len(v) for v in outputs.values()) == requested, system
    steps = pd.read_csv(out / "steps.csv")
    for system, group in steps.groupby("system"):
        assert group.sampled.sum() == requested, system
        assert group.step_s.sum() <= runs[runs.system == system].wall_s.max() + 1e-9


def test_hf_batch_steps_model_a_static_batch(hf_generate):
    steps = hf_generate.hf_batch_steps(prompt_len=10, batch=4, new_tokens=3)
    # A padded prefill of 4 x 10, then two decodes reading 4 x 10 and 4 x 11 cached keys.
    assert steps.tokens.tolist() == [40, 4, 4]
    assert steps.kv_read_tokens.tolist() == [0, 40, 44]
    assert steps.attn_pairs.tolist() == [4 * 55, 4 * 11, 4 * 12]
    assert [list(b) for b in hf_generate.hf_batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert hf_generate.agreement({"a": [1, 2, 3], "b": [4]}, {"a": [1, 2, 0], "b": [4]}) == (0.5, 0.75)
    assert np.isclose(hf_generate.agreement({}, {})[0], 0.0)


def test_plot_without_a_roofline(report, quick, tmp_path):
    _, out = quick
    summary = pd.read_csv(out / "summary.csv")
    summary["speedup_vs_best_hf"] = summary.output_tok_per_s / summary[summary.kind == "hf"].output_tok_per_s.max()
    report.plot(summary, {}, None, tmp_path / "t.png", "no roofline")
    assert (tmp_path / "t.png").stat().st_size > 0
