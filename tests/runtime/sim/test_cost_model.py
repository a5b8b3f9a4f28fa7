"""LinearCostModel: hand-computed value, monotonicity, noise semantics, validation, shipped YAMLs."""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from runtime.core.errors import ConfigError
from runtime.core.interface import CostModel
from runtime.sim.cost_model import LinearCostModel

REPO_ROOT = Path(__file__).resolve().parents[3]
COEFS = dict(beta0=1e-3, beta1=2e-5, beta2=1e-9, beta3=1e-8, beta4=1e-4, engine_overhead_s=2e-3)

chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 4096)), max_size=4)
decodes = st.lists(st.integers(1, 8192), max_size=64)


def make(**overrides) -> LinearCostModel:
    return LinearCostModel(**{**COEFS, **overrides})


def test_hand_computed_value() -> None:
    # Chunk (c=100, q=50) and decodes at 10 and 30: N = 102, |B| = 3, Σ c(q + c/2) = 100·100 = 10_000, Σctx = 40.
    # T = 1e-3 + 2e-3 + 2e-5·102 + 1e-9·10_000 + 1e-8·40 + 1e-4·3 = 0.00535040
    assert make().predict([(100, 50)], [10, 30]) == pytest.approx(0.0053504, rel=1e-12)
    # With n_knee = 500 the linear term is 2e-5·500 = 0.01 instead of 0.00204.
    assert make(n_knee=500).predict([(100, 50)], [10, 30]) == pytest.approx(0.0053504 - 0.00204 + 0.01, rel=1e-12)


def test_sums_match_lists_and_empty_batch() -> None:
    m = make(n_knee=64)
    t = m.predict_from_sums(num_prefill_tokens=100, prefill_attn_work=10_000, num_decodes=2, sum_decode_ctx=40,
                            num_seqs=3)
    assert t == pytest.approx(m.predict([(100, 50)], [10, 30]), rel=1e-12)
    assert m.predict([], []) == 0.0
    assert isinstance(m, CostModel)


def test_seq_knee_charges_beta5_for_the_first_s_knee_sequences_only() -> None:
    m = make(beta5=3e-4, s_knee=2)
    plain = make()
    # |B| = 1, 2: β5 per sequence; |B| = 3, 4: still 2·β5.
    for dec, extra in (([10], 3e-4), ([10, 30], 6e-4), ([10, 30, 50], 6e-4), ([10, 30, 50, 70], 6e-4)):
        assert m.predict([], dec) == pytest.approx(plain.predict([], dec) + extra, rel=1e-12)
    assert m.predict([(100, 50)], [10, 30]) == pytest.approx(0.0053504 + 6e-4, rel=1e-12)
    t = m.predict_from_sums(num_prefill_tokens=100, prefill_attn_work=10_000, num_decodes=2, sum_decode_ctx=40,
                            num_seqs=3)
    assert t == pytest.approx(m.predict([(100, 50)], [10, 30]), rel=1e-12)
    twin = m.deterministic()
    assert (twin.beta5, twin.s_knee) == (3e-4, 2) and twin.predict([], [1, 2, 3]) == m.predict([], [1, 2, 3])
    assert m.predict([], []) == 0.0
    assert "s_knee=2" in repr(m) and "s_knee" not in repr(plain)


@pytest.mark.parametrize("overrides, match", [
    (dict(beta5=1e-4), "needs cost_model.s_knee >= 1"),
    (dict(beta5=1e-4, s_knee=2.5), "whole number"),
    (dict(s_knee=-1), "s_knee"),
    (dict(beta5=-1e-4, s_knee=2), "beta5"),
])
def test_a_seq_knee_term_that_cannot_apply_is_a_config_error(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make(**overrides)


@settings(max_examples=200, deadline=None)
@given(chunks, decodes, st.integers(0, 512), st.integers(0, 3), st.integers(1, 512), st.integers(1, 8192),
       st.sampled_from([(0.0, 0), (5e-4, 1), (5e-4, 12)]))
def test_monotone_in_chunk_size_and_membership(pf, dec, knee, idx, grow, new_ctx, seq) -> None:
    m = make(n_knee=knee, beta5=seq[0], s_knee=seq[1])
    base = m.predict(pf, dec)
    if pf:
        i = idx % len(pf)
        bigger = list(pf)
        bigger[i] = (pf[i][0] + grow, pf[i][1])
        assert m.predict(bigger, dec) >= base
    assert m.predict(pf, [*dec, new_ctx]) >= base
    assert m.predict([*pf, (grow, new_ctx)], dec) >= base


def test_noise_is_deterministic_per_seed_and_mean_one() -> None:
    batch = ([(256, 0)], [512] * 8)
    a = [make(noise_cv=0.2, seed=7).predict(*batch) for _ in range(1)]
    m1, m2, m3 = make(noise_cv=0.2, seed=7), make(noise_cv=0.2, seed=7), make(noise_cv=0.2, seed=8)
    s1 = [m1.predict(*batch) for _ in range(5000)]
    s2 = [m2.predict(*batch) for _ in range(5000)]
    s3 = [m3.predict(*batch) for _ in range(5000)]
    assert s1 == s2 and s1 != s3 and a[0] == s1[0]
    clean = m1.predict_deterministic(*batch)
    assert statistics.fmean(s1) / clean == pytest.approx(1.0, abs=0.02)
    assert statistics.pstdev(s1) / clean == pytest.approx(0.2, abs=0.02)
    twin = m1.deterministic()
    assert twin.noise_cv == 0.0 and twin.predict(*batch) == clean


@pytest.mark.parametrize("key", ["beta0", "beta1", "beta2", "beta3", "beta4", "engine_overhead_s", "n_knee",
                                 "noise_cv"])
def test_negative_values_raise_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make(**{key: -1e-6})
    with pytest.raises(ConfigError, match=key):
        make(**{key: float("nan")})


FITTED = sorted(p for p in (REPO_ROOT / "conf" / "cost_model").glob("*.yaml")
                if "generated by python -m runtime.sim.fit" in p.read_text())


@pytest.mark.parametrize("path", FITTED, ids=lambda p: p.stem)
def test_shipped_yamls_instantiate(path: Path) -> None:
    m = instantiate(OmegaConf.load(path))
    assert isinstance(m, LinearCostModel) and m.name == path.stem
    assert isinstance(m.fit_error, dict) and m.fit_error["iteration"] < 10.0
    # A 32-decode, 1024-context step is in the tens of milliseconds on every shipped pair.
    assert 0.005 < m.predict([], [1024] * 32) < 0.2


def test_shipped_pairs_cover_the_model_and_hardware_options() -> None:
    stems = {p.stem for p in (REPO_ROOT / "conf" / "cost_model").glob("*.yaml")}
    assert {"llama2_7b_a100_80g", "llama2_7b_h100_80g", "llama3_8b_a100_80g", "llama2_70b_a100_80g_tp4"} <= stems


def test_import_does_not_import_torch() -> None:
    code = "import runtime.sim.cost_model, runtime.sim.capacity, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_roofline_from_specs_by_hand() -> None:
    from runtime.sim.cost_model import roofline_cost_model
    from runtime.sim.specs import HardwareSpec, ModelSpec

    # One layer of d=4, H=H_kv=1, d_h=4, I=8: P_l = 2·4·4 + 2·4·4 + 3·4·8 = 160 params; s = 2 bytes.
    model = ModelSpec(name="toy", num_layers=1, hidden_size=4, num_heads=1, num_kv_heads=1, head_dim=4,
                      intermediate_size=8, vocab_size=10, num_params=1000)
    hw = HardwareSpec(name="toy", gpu="toy", gpu_memory_gb=1, peak_tflops=1e-9, hbm_bandwidth_gbps=1e-6)  # 1e3 FLOP/s, 1e3 B/s
    m = roofline_cost_model(model=model, hardware=hw)
    assert m.beta1 == pytest.approx(2 * 160 / 1e3)  # 0.32 s/token
    assert m.n_knee == pytest.approx((160 * 2 / 1e3) / 0.32)  # knee N* = F·s/(2·BW) = 1 token
    assert m.beta0 == pytest.approx(10 * 4 * 2 / 1e3)
    # One decode at ctx 5: 0.08 + 0.32·max(1, 1) + 2·1·4·2·5/1e3 = 0.08 + 0.32 + 0.08
    assert m.predict([], [5]) == pytest.approx(0.48)
    with pytest.raises(ConfigError, match="compute_efficiency"):
        roofline_cost_model(model=model, hardware=hw, compute_efficiency=0.0)
