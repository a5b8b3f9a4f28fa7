"""runtime.live.probe: the speed probe times fixed compositions on a live executor and divides by the cost model."""
from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from runtime.live.probe import PROBE, ProbeTrack, SpeedProbe, compositions
from runtime.sim.cost_model import LinearCostModel
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def probe():
    cfg = compose_config(["runtime=live", "model=tiny", "runtime.threads=1"])
    return SpeedProbe(cfg, instantiate(cfg.model), repeats=2, settle=0, settle_s=0.0)


def test_level_is_the_median_ratio_of_measured_to_predicted(probe):
    flat = LinearCostModel(beta0=1e-3, beta1=0.0, beta2=0.0, beta3=0.0, beta4=0.0)
    result = probe(flat)
    assert len(result.measured_s) == len(result.predicted_s) == len(PROBE) == len(compositions())
    assert all(t > 0 for t in result.measured_s)
    assert result.predicted_s == pytest.approx([1e-3] * len(PROBE))
    assert result.level == pytest.approx(np.median(np.asarray(result.measured_s) / 1e-3))


def test_a_slower_prediction_gives_a_proportionally_lower_level(probe):
    # One measurement, two cost models: the level is measured over predicted, composition by composition.
    fitted = LinearCostModel(beta0=2e-4, beta1=1e-6, beta2=1e-9, beta3=1e-8, beta4=1e-5)
    doubled = LinearCostModel(beta0=4e-4, beta1=2e-6, beta2=2e-9, beta3=2e-8, beta4=2e-5)
    result = probe(fitted)
    ratios = np.asarray(result.measured_s) / np.asarray([doubled.predict_deterministic(c.chunks, c.decodes)
                                                         for c in probe.comps])
    assert np.median(ratios) == pytest.approx(result.level / 2)
    assert result.predicted_s == pytest.approx([fitted.predict_deterministic(c.chunks, c.decodes)
                                                for c in probe.comps])


def test_probe_leaves_its_cache_empty(probe):
    probe(LinearCostModel(beta0=1e-3, beta1=0.0, beta2=0.0, beta3=0.0, beta4=0.0))
    bm = probe.profiler.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_track_levels_are_per_sample_medians_and_the_spread_is_their_range(probe):
    track = ProbeTrack(probe.profiler, settle=0, settle_s=0.0)
    flat = LinearCostModel(beta0=1e-3, beta1=0.0, beta2=0.0, beta3=0.0, beta4=0.0)
    assert track.summary(flat) == {}
    # Known samples instead of timings: levels 1, 2 and 4 (each the median over the compositions).
    track.samples = [[1e-3] * len(PROBE), [2e-3] * len(PROBE), [4e-3, 4e-3, 4e-3, 4e-3, 1e-3, 9e-3]]
    assert track.levels(flat) == pytest.approx([1.0, 2.0, 4.0])
    assert track.summary(flat) == {"probe_level": 2.0, "probe_spread_pct": 150.0, "num_probes": 3}
    track.sample()
    assert len(track.samples) == 4 and all(t > 0 for t in track.samples[-1])


def test_engine_overhead_is_not_part_of_a_probed_step(probe):
    with_overhead = LinearCostModel(beta0=1e-3, beta1=0.0, beta2=0.0, beta3=0.0, beta4=0.0, engine_overhead_s=5e-3)
    assert probe(with_overhead).predicted_s == pytest.approx([1e-3] * len(PROBE))


def test_compositions_that_do_not_fit_the_model_are_left_out():
    assert len(compositions()) == len(PROBE) == len(compositions(2048))
    short = compositions(300)
    assert [c.label() for c in short] == ["1x~200", "4x~200", "12x~200", "128@0", "256@0 + 4x~200"]
