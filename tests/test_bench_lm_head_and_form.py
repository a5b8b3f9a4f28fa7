"""bench/live_lm_head.py (a --quick smoke run: tiny model, seconds) and bench/cost_model_form.py (offline, on
synthetic measurements whose true step time has a concave term the linear form cannot follow).

Timings are never asserted: the smoke test checks outputs and bookkeeping, the form test recovers a known truth.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT, load_bench


@pytest.fixture(scope="module")
def lm_head(tmp_path_factory):
    with load_bench("live_lm_head") as module:
        out = tmp_path_factory.mktemp("live_lm_head")
        threads = torch.get_num_threads()
        result = module.main(["--quick", "--threads", "1", "--out", str(out),
                              "--cost-model-file", str(REPO_ROOT / "conf/cost_model/tiny_cpu.yaml")])
        yield module, result, out, threads


def test_lm_head_bench_times_every_variant_and_size(lm_head):
    module, result, out, threads = lm_head
    steps = pd.read_csv(out / "steps.csv")
    assert set(steps.variant) == {"runtime", "gemm", "vocab-blocked"}
    assert sorted(steps.num_decodes.unique()) == [1, 4, 13]
    assert len(steps) == 9 and (steps.median_ms > 0).all() and (steps.min_ms <= steps.median_ms).all()
    assert np.allclose(steps.ratio, steps.median_ms / steps.predicted_ms)
    assert (out / "lm_head.png").stat().st_size > 0
    assert result["table"] == (out / "table.md").read_text() and "runtime, 1 thr." in result["table"]
    assert torch.get_num_threads() == threads  # the bench puts the process's thread count back


def test_lm_head_variants_give_the_same_logits_and_leave_the_model_alone(lm_head):
    from hydra.utils import instantiate

    from tests.conftest import compose_config
    from runtime.live.executor import build_model

    module = lm_head[0]
    cfg = compose_config(["runtime=live", "model=tiny"])
    model = build_model(instantiate(cfg.model), device=torch.device("cpu"), dtype=torch.float32, seed=0)
    hidden = torch.randn(6, model.spec.hidden_size)
    ways = module.variants(model, block_rows=100)
    reference = ways["gemm"](hidden)
    for name, way in ways.items():
        torch.testing.assert_close(way(hidden), reference, rtol=1e-5, atol=1e-5, msg=name)
    assert "logits" not in vars(model)


def synthetic(rng, n_rows: int, split: str) -> pd.DataFrame:
    """Decode-only and prefill steps timed by a known truth: 2e-4 s per sequence plus 5e-4 s for each of the first 8."""
    decodes = rng.integers(0, 40, n_rows)
    chunk = np.where(rng.random(n_rows) < 0.3, rng.integers(16, 512, n_rows), 0)
    decodes = np.where((decodes == 0) & (chunk == 0), 1, decodes)
    seqs = decodes + (chunk > 0)
    sum_ctx = decodes * rng.integers(50, 400, n_rows)
    work = chunk * (chunk / 2)
    n = chunk + decodes
    t = 1e-3 + 1e-5 * n + 1e-9 * work + 1e-7 * sum_ctx + 2e-4 * seqs + 5e-4 * np.minimum(seqs, 8)
    return pd.DataFrame(dict(kind=np.where(chunk > 0, np.where(decodes > 0, "mixed", "prefill"), "decode"),
                             split=split, num_tokens=n, num_prefill_tokens=chunk, num_decodes=decodes,
                             prefill_attn_work=work, sum_decode_ctx=sum_ctx, num_seqs=seqs, time_s=t))


def test_form_bench_recovers_a_concave_truth_the_linear_form_misses(tmp_path):
    rng = np.random.default_rng(0)
    measurements = pd.concat([synthetic(rng, 120, "train"), synthetic(rng, 40, "heldout"),
                              synthetic(rng, 300, "serve")], ignore_index=True)
    live = synthetic(rng, 400, "live").rename(columns={"time_s": "measured_s"})
    live["rate"] = np.where(np.arange(len(live)) % 2, 8.0, 2.0)
    measurements.to_csv(tmp_path / "measurements.csv", index=False)
    live.to_parquet(tmp_path / "iterations.parquet")
    with load_bench("cost_model_form") as module:
        result = module.main([str(tmp_path), "--max-s-knee", "16"])
    table = result["table"].set_index("form")
    linear, concave = table.loc["linear"], table.loc["linear + β5·min(|B|, s_knee)"]
    assert "linear + settling" not in table.index  # no served step carries its distance to a prefill
    assert concave.s_knee == 8
    assert concave.replay_mape < 0.1 and concave.heldout_mape < 0.1
    assert linear.replay_mape > 3 and linear["decode 4–6"] > 1.03  # the line falls short in the middle
    assert concave[[c for c in table.columns if c.startswith("decode ")]].dropna().between(0.999, 1.001).all()
    assert {"replay_mape@2", "replay_mape@8"} <= set(table.columns)
    assert (tmp_path / "form.md").read_text() == result["markdown"]


def test_form_bench_needs_both_inputs(tmp_path):
    with load_bench("cost_model_form") as module:
        with pytest.raises(SystemExit):
            module.main(["--measurements", str(tmp_path / "measurements.csv")])
        with pytest.raises(SystemExit):
            module.main([str(tmp_path)])  # neither file exists


def test_form_bench_recovers_a_settling_truth_from_served_ids_and_live_step_order(tmp_path):
    """Served steps (ids ``<run>#<step>``, no ``since_prefill`` column: an older CSV) and live steps whose decodes
    after a prefill are slower by ×(1 + 0.3·0.8^k)."""
    from runtime.sim.settle import factors, steps_since_prefill

    rng = np.random.default_rng(1)

    def run(n: int) -> pd.DataFrame:
        frame = synthetic(rng, n, "serve")
        frame["time_s"] = (1e-3 + 1e-5 * frame.num_tokens + 1e-9 * frame.prefill_attn_work
                           + 1e-7 * frame.sum_decode_ctx + 2e-4 * frame.num_seqs)
        k = steps_since_prefill((frame.num_prefill_tokens > 0).tolist())
        frame["time_s"] *= factors(k, (frame.num_prefill_tokens == 0).to_numpy(), 0.3, 0.8)
        return frame

    served = run(400)
    served["id"] = [f"vllm@4#{i}" for i in range(len(served))]
    grid = synthetic(rng, 60, "train")
    grid["time_s"] = (1e-3 + 1e-5 * grid.num_tokens + 1e-9 * grid.prefill_attn_work + 1e-7 * grid.sum_decode_ctx
                      + 2e-4 * grid.num_seqs)
    grid["id"] = range(len(grid))
    pd.concat([grid, served], ignore_index=True).to_csv(tmp_path / "measurements.csv", index=False)
    live = run(300).rename(columns={"time_s": "measured_s"}).assign(scheduler="vllm", rate=8.0)
    live["step"] = range(len(live))
    live.to_parquet(tmp_path / "iterations.parquet")
    with load_bench("cost_model_form") as module:
        table = module.main([str(tmp_path), "--max-s-knee", "4"])["table"].set_index("form")
    linear, settled = table.loc["linear"], table.loc["linear + settling"]
    assert settled.settle_decay == 0.8 and settled.settle_amplitude == pytest.approx(0.3, abs=0.01)
    assert settled.replay_mape < 0.5 < linear.replay_mape
    assert linear["after k=0"] > 1.05 and settled["after k=0"] == pytest.approx(1.0, abs=0.01)
    assert "linear + a·ρ^k seconds" in table.index
