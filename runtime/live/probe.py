"""Speed probe: how fast the machine runs the live model *now*, against a fitted cost model.

A cost model fitted by ``accelgen-profile`` describes the machine as it was during the profile. On a shared host
(a VM whose cache and memory bandwidth other tenants use) the same forward pass can take 30 % longer minutes
later, and a simulation of a later live run then misses by that much whatever the cost model's shape. The probe
separates the two without looking at the run itself: right before (and after) a live run it times a fixed set of
compositions (``PROBE``: decode batches of 1, 4 and 12 at context 200, prefills of 128 and 512 tokens, and a mixed
batch) exactly as the profiler does (``runtime.live.profile.time_settled``: untimed settling runs, then one timed
run; ``repeats`` rounds in a seeded random order) and reports

    level = median over the compositions of  t_measured(B) / T̂(B)

with ``T̂`` the cost model's noise-free prediction. The level of the probe right after the profile is the fit's own
residual at these batches (a few per cent); a level that moved by 20 % since is the machine. Scaling a simulation's
step times by the probe's level (``bench/sim_vs_live.py``) then compares the cost model's shape with the live run,
the speed taken from a measurement made outside the run (unlike ``with_level``, which takes it from the run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from runtime.live.profile import Composition, Profiler, time_settled

#: (kind, chunks (c, q), decode contexts): the batches the live_small runs are made of.
PROBE = (
    ("decode", [], [200]),
    ("decode", [], [200] * 4),
    ("decode", [], [200] * 12),
    ("prefill", [(128, 0)], []),
    ("prefill", [(512, 0)], []),
    ("mixed", [(256, 0)], [200] * 4),
)


@dataclass(frozen=True)
class ProbeResult:
    level: float  # median of measured / predicted over the compositions
    measured_s: tuple[float, ...]  # per composition: the median of its timed runs
    predicted_s: tuple[float, ...]
    wall_s: float  # how long the probe took

    def as_dict(self, prefix: str = "probe") -> dict:
        return {f"{prefix}_level": self.level, f"{prefix}_wall_s": self.wall_s,
                **{f"{prefix}_ms[{label}]": t * 1e3 for label, t in zip(labels(), self.measured_s)}}


def labels() -> list[str]:
    return [Composition(kind, "probe", list(chunks), list(decodes)).label() for kind, chunks, decodes in PROBE]


class SpeedProbe:
    """A live executor of ``cfg``'s model, device, dtype and threads (``runtime=live``), built once and timed on
    ``PROBE`` whenever called."""

    def __init__(self, cfg: DictConfig, model, *, repeats: int = 5, settle: int = 1, settle_s: float = 0.05,
                 seed: int = 0) -> None:
        self.comps = [Composition(kind, "probe", list(chunks), list(decodes)) for kind, chunks, decodes in PROBE]
        self.profiler = Profiler(cfg, model, max(c.kv_tokens + 16 * c.num_seqs for c in self.comps))
        self.repeats, self.settle, self.settle_s, self.seed = repeats, settle, settle_s, seed

    def __call__(self, cost_model) -> ProbeResult:
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        times: list[list[float]] = [[] for _ in self.comps]
        for comp in self.comps:  # one untimed round: first-touch of the cache slots, allocator warm-up
            self.profiler.run(comp)
        for _ in range(self.repeats):
            for i in rng.permutation(len(self.comps)):
                times[i].append(time_settled(self.profiler, self.comps[i], self.settle, self.settle_s))
        measured = tuple(float(np.median(t)) for t in times)
        predicted = tuple(float(cost_model.predict_deterministic(c.chunks, c.decodes)) for c in self.comps)
        level = float(np.median(np.asarray(measured) / np.asarray(predicted)))
        return ProbeResult(level=level, measured_s=measured, predicted_s=predicted, wall_s=time.perf_counter() - t0)
