"""Settling after a prefill (runtime.sim.settle): the step counter, the factor, its fit, and the simulated clock."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput
from runtime.sim.cost_model import LinearCostModel
from runtime.sim.executor import SimExecutor
from runtime.sim.linear_fit import design
from runtime.sim.settle import DECAYS, factors, fit_settle, steps_since_prefill
from tests.conftest import compose_config

COEFS = dict(beta0=5e-3, beta1=1e-4, beta2=1e-8, beta3=1e-7, beta4=1e-5)


def test_steps_since_prefill_counts_decode_steps_after_the_last_prefill() -> None:
    #            decode before any prefill, prefill, 2 decodes, prefill, prefill, decode
    has = [False, True, False, False, True, True, False]
    assert steps_since_prefill(has).tolist() == [-1, -1, 0, 1, 2, 0, 0]
    assert steps_since_prefill([]).tolist() == []


def test_factors_apply_to_decode_only_steps_after_a_prefill() -> None:
    k = np.array([-1, 0, 1, 2, 0])
    decode_only = np.array([True, True, True, False, True])
    assert factors(k, decode_only, 0.5, 0.5).tolist() == [1.0, 1.5, 1.25, 1.0, 1.5]
    assert factors(k, decode_only, 0.0, 0.9).tolist() == [1.0] * 5


def _synthetic(amplitude: float, decay: float, noise: float, seed: int = 0):
    """Serving-like steps: runs of decode-only steps between prefills, times from a known model."""
    rng = np.random.default_rng(seed)
    rows, has = [], []
    for _ in range(400):
        chunk = int(rng.integers(16, 1024))
        rows.append((chunk + 2, chunk * chunk / 2, 600, 3))
        has.append(True)
        for _ in range(int(rng.integers(1, 25))):
            d = int(rng.integers(1, 16))
            rows.append((d, 0.0, d * int(rng.integers(50, 800)), d))
            has.append(False)
    n, work, ctx, seqs = (np.array(c, dtype=float) for c in zip(*rows))
    x = design(n, work, ctx, seqs, 0.0)
    beta = np.array([COEFS[f"beta{i}"] for i in range(5)])
    k, decode_only = steps_since_prefill(has), ~np.array(has)
    t = x @ beta * factors(k, decode_only, amplitude, decay) * rng.lognormal(0.0, noise, len(rows))
    return x, t, k, decode_only, beta


def test_fit_recovers_a_known_settling() -> None:
    x, t, k, decode_only, beta = _synthetic(0.3, 0.8, noise=0.01)
    fit = fit_settle(x, t, np.ones(len(t)), k, decode_only)
    assert fit.decay == 0.8 and fit.amplitude == pytest.approx(0.3, abs=0.02)
    assert np.allclose(fit.beta, beta, rtol=0.1, atol=1e-9)
    assert fit.mape < 1.5


def test_fit_keeps_the_history_free_form_without_settling() -> None:
    x, t, k, decode_only, _ = _synthetic(0.0, 0.0, noise=0.01)
    assert fit_settle(x, t, np.ones(len(t)), k, decode_only).amplitude < 0.01
    # No decode-only step after a prefill: nothing to fit, a = 0 exactly.
    fit = fit_settle(x, t, np.ones(len(t)), np.full(len(t), -1), decode_only)
    assert (fit.amplitude, fit.decay) == (0.0, 0.0)


def test_cost_model_validates_and_carries_the_settling() -> None:
    with pytest.raises(ConfigError, match="settle_decay"):
        LinearCostModel(**COEFS, settle_amplitude=0.2, settle_decay=1.0)
    with pytest.raises(ConfigError, match="settle_amplitude"):
        LinearCostModel(**COEFS, settle_amplitude=-0.1, settle_decay=0.5)
    m = LinearCostModel(**COEFS, settle_amplitude=0.2, settle_decay=0.5, noise_cv=0.1)
    assert (m.settle_factor(-1), m.settle_factor(0), m.settle_factor(2)) == (1.0, 1.2, 1.05)
    assert m.deterministic().settle_factor(1) == 1.1 and "settle_amplitude=0.2" in repr(m)
    assert LinearCostModel(**COEFS).settle_factor(0) == 1.0


def _step(chunks=(), decodes=()) -> SchedulerOutput:
    ids = [f"p{i}" for i in range(len(chunks))]
    dids = [f"d{i}" for i in range(len(decodes))]
    return SchedulerOutput(num_scheduled_tokens={**{r: c for r, (c, _) in zip(ids, chunks)}, **{r: 1 for r in dids}},
                           prefill_chunks=list(chunks), prefill_req_ids=ids, decode_context_lens=list(decodes),
                           decode_req_ids=dids)


def test_sim_executor_slows_decodes_after_a_prefill_and_lets_it_fade() -> None:
    m = LinearCostModel(**COEFS, settle_amplitude=0.5, settle_decay=0.5)
    ex = SimExecutor(cost_model=m)
    decode, mixed, prefill = _step(decodes=[100, 200]), _step([(64, 0)], [100]), _step([(128, 0)])
    t_dec, t_mixed, t_pre = (m.predict_deterministic(o.prefill_chunks, o.decode_context_lens)
                             for o in (decode, mixed, prefill))
    times = [ex.execute(o).step_time for o in (decode, prefill, decode, decode, decode, mixed, decode)]
    assert times == pytest.approx([t_dec, t_pre, 1.5 * t_dec, 1.25 * t_dec, 1.125 * t_dec, t_mixed, 1.5 * t_dec],
                                  rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.floats(0.0, 1.0), st.sampled_from(DECAYS))
def test_settling_only_ever_adds_time(has_prefill, amplitude, decay) -> None:
    plain = SimExecutor(cost_model=LinearCostModel(**COEFS))
    settled = SimExecutor(cost_model=LinearCostModel(**COEFS, settle_amplitude=amplitude, settle_decay=decay))
    for prefill in has_prefill:
        out = _step([(32, 0)], [50]) if prefill else _step(decodes=[50, 70])
        a, b = plain.execute(out).step_time, settled.execute(out).step_time
        assert b >= a and (b == a or not prefill)


def test_simulated_run_is_slower_with_settling_and_unchanged_without(tmp_path) -> None:
    from runtime.cli import run

    base = ["workload.num_requests=60", "workload.arrival.rate=20", "runtime=sim"]
    plain = run(compose_config(base), None)
    zero = run(compose_config([*base, "++cost_model.settle_amplitude=0.0", "++cost_model.settle_decay=0.9"]), None)
    slow = run(compose_config([*base, "++cost_model.settle_amplitude=0.5", "++cost_model.settle_decay=0.9"]), None)
    wall = {"wall_s"}  # the simulator's own run time, the one field that is not simulated
    assert {k: v for k, v in zero.items() if k not in wall} == {k: v for k, v in plain.items() if k not in wall}
    assert slow["tbt_p50_s"] > plain["tbt_p50_s"] and slow["duration_s"] >= plain["duration_s"]
    with pytest.raises(ConfigError, match="settle_decay"):
        run(compose_config([*base, "++cost_model.settle_decay=1.5"]), None)
