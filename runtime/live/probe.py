"""Speed probe: how fast the machine runs the live model *now*, against a fitted cost model.

A cost model fitted by ``accelgen-profile`` describes the machine as it was during the profile. On a shared host
(a VM whose cache and memory bandwidth other tenants use) the same forward pass can take 30 % longer minutes
later, and a simulation of a later live run then misses by that much whatever the cost model's shape. The probe
separates the two without looking at the run itself: right before (and after) a live run it times a fixed set of
compositions (``PROBE``: decode batches of 1, 4 and 12 at context 200, prefills of 128 and 512 tokens, and a mixed
batch) exactly as the profiler does (``runtime.live.timing.time_settled``: untimed settling runs, then one timed
run; ``repeats`` rounds in a seeded random order) and reports

    level = median over the compositions of  t_measured(B) / T̂(B)

with ``T̂`` the cost model's noise-free prediction. The level of the probe right after the profile is the fit's own
residual at these batches (a few per cent); a level that moved by 20 % since is the machine. Scaling a simulation's
step times by the probe level over the profile's (the probe factor, ``bench/sim_vs_live.py``) then compares the cost
model's shape with the live run, the speed taken from a measurement made outside the run (unlike ``with_level``,
which takes it from the run).

``accelgen-profile`` takes the same probe on its own executor after every timed round and every served run
(``ProbeTrack``) and writes, in the YAML's ``fit_error``, ``probe_level`` (the median level against the fit: the
reference a later probe is compared with) and ``probe_spread_pct`` ((max − min) / median of the levels, in %: how
far the machine's speed moved while it was being profiled). It warns above ``STEADY_SPREAD_PCT``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from runtime.live.compositions import Composition
from runtime.live.timing import Profiler, time_settled

#: (kind, chunks (c, q), decode contexts): the batches the live_small runs are made of.
PROBE = (
    ("decode", [], [200]),
    ("decode", [], [200] * 4),
    ("decode", [], [200] * 12),
    ("prefill", [(128, 0)], []),
    ("prefill", [(512, 0)], []),
    ("mixed", [(256, 0)], [200] * 4),
)


#: A profile whose probe levels spread wider than this (%) was taken on a machine whose speed moved.
STEADY_SPREAD_PCT = 10.0


@dataclass(frozen=True)
class ProbeResult:
    level: float  # median of measured / predicted over the compositions
    measured_s: tuple[float, ...]  # per composition: the median of its timed runs
    predicted_s: tuple[float, ...]
    wall_s: float  # how long the probe took


def compositions(max_len: int | None = None) -> list[Composition]:
    """``PROBE`` as compositions; with ``max_len`` (the model's ``max_model_len``), those whose every sequence fits."""
    comps = [Composition(kind, "probe", list(chunks), list(decodes)) for kind, chunks, decodes in PROBE]
    if max_len is None:
        return comps
    return [c for c in comps if all(q + n <= max_len for n, q in c.chunks) and all(x < max_len for x in c.decodes)]


def predictions(cost_model, comps: list[Composition]) -> np.ndarray:
    """The cost model's noise-free time of each composition, without its engine overhead (not part of a step)."""
    overhead = float(getattr(cost_model, "engine_overhead_s", 0.0))
    return np.asarray([cost_model.predict_deterministic(c.chunks, c.decodes) - overhead for c in comps])


def level(measured, predicted) -> float:
    """The probe level: the median over the compositions of measured / predicted."""
    return float(np.median(np.asarray(measured, dtype=float) / np.asarray(predicted, dtype=float)))


def time_probe(profiler: Profiler, comps: list[Composition], *, repeats: int, settle: int, settle_s: float,
               rng: np.random.Generator) -> list[float]:
    """Per composition, the median of ``repeats`` settled timings (rounds in random order, as the profiler's)."""
    times: list[list[float]] = [[] for _ in comps]
    for _ in range(repeats):
        for i in rng.permutation(len(comps)):
            times[i].append(time_settled(profiler, comps[i], settle, settle_s))
    return [float(np.median(t)) for t in times]


class SpeedProbe:
    """A live executor of ``cfg``'s model, device, dtype and threads (``runtime=live``), built once and timed on
    ``PROBE`` whenever called."""

    def __init__(self, cfg: DictConfig, model, *, repeats: int = 5, settle: int = 1, settle_s: float = 0.05,
                 seed: int = 0) -> None:
        self.comps = compositions(int(model.max_model_len))
        self.profiler = Profiler(cfg, model, self.comps)
        self.repeats, self.settle, self.settle_s, self.seed = repeats, settle, settle_s, seed

    def __call__(self, cost_model) -> ProbeResult:
        t0 = time.perf_counter()
        for comp in self.comps:  # one untimed round: first touch of the cache slots, allocator warm-up
            self.profiler.run(comp)
        measured = time_probe(self.profiler, self.comps, repeats=self.repeats, settle=self.settle,
                              settle_s=self.settle_s, rng=np.random.default_rng(self.seed))
        predicted = predictions(cost_model, self.comps)
        return ProbeResult(level=level(measured, predicted), measured_s=tuple(measured),
                           predicted_s=tuple(float(p) for p in predicted), wall_s=time.perf_counter() - t0)


class ProbeTrack:
    """The probe, taken on the profiler's own executor whenever ``sample()`` is called during a profile."""

    def __init__(self, profiler: Profiler, *, settle: int, settle_s: float, seed: int = 0,
                 max_len: int | None = None) -> None:
        self.profiler, self.settle, self.settle_s = profiler, settle, settle_s
        self.comps = compositions(max_len)
        self.rng = np.random.default_rng(seed)
        self.samples: list[list[float]] = []

    def sample(self) -> None:
        self.samples.append(time_probe(self.profiler, self.comps, repeats=1, settle=self.settle,
                                       settle_s=self.settle_s, rng=self.rng))

    def levels(self, cost_model) -> np.ndarray:
        """One level per sample: the median over the compositions of measured / predicted."""
        predicted = predictions(cost_model, self.comps)
        return np.asarray([level(times, predicted) for times in self.samples])

    def summary(self, cost_model) -> dict:
        """``probe_level``, ``probe_spread_pct`` and ``num_probes`` for the YAML's ``fit_error``."""
        if not self.samples:
            return {}
        levels = self.levels(cost_model)
        median = float(np.median(levels))
        return {"probe_level": round(median, 4),
                "probe_spread_pct": round(float((levels.max() - levels.min()) / median * 100), 2),
                "num_probes": len(levels)}
