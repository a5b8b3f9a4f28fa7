"""Resolving SLO classes to seconds on the configured model and GPU (algorithms.md section 8).

A class is given either in absolute seconds (``ttft_slo_s``, ``tbt_slo_s``) or relative to two reference times
of the latency model, following Sarathi-Serve's convention of SLOs as multiples of a decode-only step:

    T_ref = T̂(decode-only step: ``decode_batch`` decodes at context ``decode_context``)      (32 at 1024)
    T_pf  = T̂(one ``prefill_tokens``-token prefill at empty context)                       (2048)
    S^tbt = scale · tbt_x_ref · T_ref,      S^ttft = scale · ttft_x_pf · T_pf

``scale`` multiplies every SLO (the DistServe-style SLO-scale sweep). The resolved seconds go into every run's
summary.
"""
from __future__ import annotations

from typing import Any, Mapping

from runtime.core.errors import ConfigError
from runtime.core.interface import CostModel
from runtime.core.request import SLOClass


def reference_times(cost_model: CostModel, *, decode_batch: int = 32, decode_context: int = 1024,
                    prefill_tokens: int = 2048) -> dict[str, float]:
    return {
        "t_ref_s": cost_model.predict([], [decode_context] * decode_batch),
        "t_pf_s": cost_model.predict([(prefill_tokens, 0)], []),
    }


def resolve_slo_classes(
    cost_model: CostModel,
    classes: Mapping[str, Mapping[str, Any]],
    *,
    scale: float = 1.0,
    reference: Mapping[str, int] | None = None,
) -> tuple[dict[str, SLOClass], dict[str, float]]:
    """Return ``{name: SLOClass}`` in seconds and the reference times used."""
    if not classes:
        raise ConfigError("slo.classes is empty: define at least one SLO class")
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ConfigError(f"slo.scale must be a positive number, got {scale!r}")
    refs = reference_times(cost_model, **dict(reference or {}))
    resolved: dict[str, SLOClass] = {}
    for name, spec in classes.items():
        spec = dict(spec)
        try:
            tbt = spec["tbt_slo_s"] if "tbt_slo_s" in spec else spec["tbt_x_ref"] * refs["t_ref_s"]
            ttft = spec["ttft_slo_s"] if "ttft_slo_s" in spec else spec["ttft_x_pf"] * refs["t_pf_s"]
        except KeyError as missing:
            raise ConfigError(
                f"slo.classes.{name} needs {missing.args[0].replace('_x_ref', '_slo_s').replace('_x_pf', '_slo_s')} "
                f"or {missing.args[0]}"
            ) from None
        for key, value in (("tbt", tbt), ("ttft", ttft)):
            if value is None or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"slo.classes.{name}: the {key} SLO must be positive, got {value!r}")
        resolved[name] = SLOClass(name=name, ttft_slo_s=float(ttft) * scale, tbt_slo_s=float(tbt) * scale)
    return resolved, refs
