"""The run-wide config blocks (``kv``, ``metrics``, ``results``, ``oracle``, ``slo``, ``task``, ``cluster``, ...) as
dataclasses, and the ``Rule`` type that states their ranges.

``runtime.config_schema.validate_config`` reads ``RunWide``: a top-level key that is one of its fields is checked
against that field's dataclass, key by key, with the field's ``rule`` metadata (or, without one, the rule named after
the field in ``config_schema.RULES``). The defaults mirror ``conf/config.yaml`` and the config groups, which stay the
source of the values; these classes only say what is allowed. A field typed ``dict`` that holds a ``_target_`` node
(``cluster.router``) is checked against its target's signature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runtime.core.errors import ConfigError
from runtime.core.result_stream import RESULT_MODES


@dataclass(frozen=True)
class Rule:
    """A range ``ge <= x <= le`` (``gt``/``lt`` strict) or a set of ``choices``; ``None`` always passes the range
    (the type decides whether ``None`` is allowed)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"{key}: must be one of {', '.join(map(str, self.choices))}; got {value!r}")
            return
        if isinstance(value, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # e.g. token_budget: auto (the type check owns non-numbers)
        ok = (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if not ok:
            raise ConfigError(f"{key}: must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else "(-inf"
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
        if high == "inf)" and low != "(-inf":
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return f"in {low}, {high}"


POSITIVE, AT_LEAST_1, NON_NEGATIVE = Rule(gt=0), Rule(ge=1), Rule(ge=0)
FRACTION, OPEN_FRACTION, SHARE = Rule(ge=0, le=1), Rule(ge=0, lt=1), Rule(gt=0, le=1)



# Run-wide blocks. Field metadata: `rule` (a Rule); a field whose type is another dataclass is checked inside.
def _f(default=None, rule: Rule | None = None, *, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


@dataclass
class KV:
    block_size: int = _f(16, AT_LEAST_1)
    gpu_memory_utilization: float = _f(0.9, SHARE)
    watermark: float = _f(0.01, OPEN_FRACTION)
    num_blocks: int | None = _f(None, AT_LEAST_1)
    num_blocks_scale: float = _f(1.0, POSITIVE)
    swap_space_gb: float = _f(4.0, NON_NEGATIVE)
    swap_blocks: int | None = _f(None, NON_NEGATIVE)
    pcie_efficiency: float = _f(0.8, SHARE)
    swap_latency_s: float = _f(0.001, NON_NEGATIVE)


@dataclass
class Metrics:
    warmup_s: float = _f(0.0, NON_NEGATIVE)
    tbt_mode: str = _f("max", Rule(choices=("max", "percentile")))
    tbt_percentile: float = _f(99.0, Rule(ge=0, le=100))


@dataclass
class Results:
    mode: str = _f("full", Rule(choices=RESULT_MODES))
    iteration_every: int = _f(1, AT_LEAST_1)
    batch_size: int = _f(4096, AT_LEAST_1)


@dataclass
class Oracle:
    backend: str = _f("decomposed")  # choices: solvers.solve.BACKENDS (RULES["backend"])
    time_limit_s: float | None = _f(0.05, POSITIVE)
    mip_gap: float = _f(1e-3, OPEN_FRACTION)
    max_candidates: int = _f(256, AT_LEAST_1)
    c_done: float = _f(0.5, OPEN_FRACTION)
    eta: float | None = _f(None, NON_NEGATIVE)
    eps: float = _f(1e-4, NON_NEGATIVE)
    urgency_theta: float = _f(0.0, NON_NEGATIVE)
    margin: float = _f(0.0, OPEN_FRACTION)
    chunk_cap: int | None = _f(1024, AT_LEAST_1)
    max_tokens: int | None = _f(None, AT_LEAST_1)
    gap_accounting: bool = _f(False)
    gap_every: int = _f(1, AT_LEAST_1)


@dataclass
class SLOReference:
    decode_batch: int = _f(32, AT_LEAST_1)
    decode_context: int = _f(1024, NON_NEGATIVE)
    prefill_tokens: int = _f(2048, AT_LEAST_1)


@dataclass
class SLO:
    scale: float = _f(1.0, POSITIVE)
    bound_prefill_iterations: bool = _f(True)
    reference: SLOReference = _f(factory=SLOReference)
    classes: dict = _f(factory=dict)  # each class is checked by runtime.core.slo.resolve_slo_classes


@dataclass
class Task:
    name: str = _f("run", Rule(choices=("run", "capacity")))
    target: float = _f(0.9, Rule(gt=0, le=1))
    rtol: float = _f(0.02, POSITIVE)
    num_requests: int | None = _f(None, AT_LEAST_1)
    start_rate: float | None = _f(None, POSITIVE)
    min_rate: float | None = _f(None, POSITIVE)
    max_rate: float | None = _f(None, POSITIVE)
    max_evaluations: int = _f(20, AT_LEAST_1)
    monotone_atol: float = _f(0.01, NON_NEGATIVE)


@dataclass
class Paper:
    load: float = _f(1.0, POSITIVE)
    reference_rate: dict = _f(factory=dict)


@dataclass
class Paths:
    shared_data: str | None = _f(None)


@dataclass
class Cluster:
    num_replicas: int = _f(1, AT_LEAST_1)
    router: dict = _f(factory=dict)  # a `_target_` node: checked against the router's signature


@dataclass
class RunWide:
    task_name: str = _f("run")
    tags: list = _f(factory=list)
    seed: int = _f(0, NON_NEGATIVE)
    resume: bool = _f(True)
    progress: bool = _f(True)
    paths: Paths = _f(factory=Paths)
    kv: KV = _f(factory=KV)
    metrics: Metrics = _f(factory=Metrics)
    results: Results = _f(factory=Results)
    oracle: Oracle = _f(factory=Oracle)
    slo: SLO = _f(factory=SLO)
    task: Task = _f(factory=Task)
    paper: Paper = _f(factory=Paper)
    cluster: Cluster = _f(factory=Cluster)
