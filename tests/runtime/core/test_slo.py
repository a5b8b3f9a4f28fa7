from __future__ import annotations

import pytest

from runtime.core.errors import ConfigError
from runtime.core.slo import resolve_slo_classes
from tests.conftest import create_cost_model


def test_relative_classes_resolve_against_reference_steps():
    cm = create_cost_model()
    classes, refs = resolve_slo_classes(cm, {"tight": {"tbt_x_ref": 5, "ttft_x_pf": 10},
                                             "abs": {"tbt_slo_s": 0.2, "ttft_slo_s": 3.0}}, scale=2.0)
    assert refs["t_ref_s"] == pytest.approx(cm.predict([], [1024] * 32))
    assert refs["t_pf_s"] == pytest.approx(cm.predict([(2048, 0)], []))
    assert classes["tight"].tbt_slo_s == pytest.approx(2 * 5 * refs["t_ref_s"])
    assert classes["tight"].ttft_slo_s == pytest.approx(2 * 10 * refs["t_pf_s"])
    assert (classes["abs"].tbt_slo_s, classes["abs"].ttft_slo_s) == pytest.approx((0.4, 6.0))


@pytest.mark.parametrize("spec, match", [
    ({"tight": {"tbt_x_ref": 0, "ttft_x_pf": 1}}, r"slo\.classes\.tight: the tbt SLO must be positive"),
    ({"tight": {"tbt_slo_s": 0.1, "ttft_slo_s": -1}}, r"slo\.classes\.tight: the ttft SLO"),
    ({"tight": {"ttft_x_pf": 1}}, r"slo\.classes\.tight needs tbt_slo_s or tbt_x_ref"),
    ({}, r"slo\.classes is empty"),
])
def test_bad_slo_specs_name_the_field(spec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_slo_classes(create_cost_model(), spec)


def test_scale_must_be_positive():
    with pytest.raises(ConfigError, match="slo.scale"):
        resolve_slo_classes(create_cost_model(), {"t": {"tbt_slo_s": 1, "ttft_slo_s": 1}}, scale=0)
