"""The per-iteration goodput MILP (algorithms.md section 6), written once for every linear backend.

Items ``i`` of an ``OracleInstance`` (decodes ``D``, partial prefills ``P``, new or recomputing requests ``W``).

**Variables.** ``x_i ∈ {0,1}`` (i in the batch); ``c_i ∈ ℤ≥0`` (units: the chunk of a prefill-phase item; for a
decode ``c_i ≡ x_i``); ``f_i ∈ {0,1}`` (a prefill-phase item finishes its prompt, only where that completes the
request); ``T ≥ 0`` (the predicted iteration time); ``z_i ∈ {0,1}`` for an alive item with a finite limit (it loses
its SLO because of this iteration).

**Constraints.** With ``N = Σ_i c_i``, ``ta_i`` the per-unit time (``β2·(q_i + U_i/2)``, the secant of
``c(q + c/2)`` over ``[0, U_i]``, for a chunk; ``β3·ctx_i`` for a decode) and ``b0 = β0 + engine overhead``::

    (1)  T ≥ b0 + β1·N + Σ ta_i·c_i + β4·Σ x_i + β5·w
    (1') T ≥ b0 + β1·n_knee + Σ ta_i·c_i + β4·Σ x_i + β5·w          (β1·max(N, n_knee): the GEMM floor)
    (1s) w ≥ Σ x_i − (n − s_knee)·y ;  w ≥ s_knee·y ;  0 ≤ w ≤ s_knee ;  y ∈ {0,1}
    (2)  x_i ≤ c_i ≤ U_i·x_i                         i ∈ P ∪ W        (U_i = min(remaining, oracle.chunk_cap))
    (3)  c_i = x_i                                   i ∈ D            (a decode computes one token)
    (4)  Σ need_i·x_i ≤ F ;  Σ_{i∈W} need_i·x_i ≤ F − watermark      (KV: a new prompt takes its whole
                                                                       blocks(p+g) at admission, as the engine does)
    (4f) Σ_{i∈W} blocks(p_i + o_i)·x_i ≤ M − watermark − Σ_running blocks(p + o)     (kv_mode: footprint only)
    (5)  Σ_{i∈W} x_i ≤ max_num_seqs − |running| ;  N ≤ oracle.max_tokens (if set) ;  Σ_i x_i ≥ 1
    (6)  T ≤ cap_i + M6_i·(1 − x_i) + M6_i·z_i       alive i, cap_i < ∞     (member: its iteration-level SLO)
    (7)  T ≤ lim_i + M7_i·x_i + M7_i·z_i             alive i ∈ D, lim_i < ∞ (skipped decode: next token in time)
    (8)  m_i·f_i ≤ c_i                               i with a completion bonus

(1s) is ``w = min(Σ x_i, s_knee)``, the concave per-sequence term of a CPU profile (``runtime.sim.cost_model``;
``β5 = 0``, and no ``w``, ``y``, elsewhere), with one binary ``y`` (1: the batch reaches ``s_knee`` sequences):
``y = 0`` forces ``w ≥ Σ x_i`` and ``y = 1`` forces ``w ≥ s_knee``, so the least ``w`` any ``y`` allows is the min,
and a larger ``w`` only raises ``T``. With ``n ≤ s_knee`` items ``w = Σ x_i`` is written directly.

``cap_i = (1 − margin)·(d_i − now)`` for a decode (gap semantics), ``(1 − margin)·S^tbt_i`` for a chunk;
``lim_i = (1 − margin)·(d_i − now − T_floor)`` with ``T_floor = T̂`` of a decode-only step of all current
decodes. ``M_T`` is the secant time of every item at ``U_i``; ``M6_i = M_T − cap_i`` and ``M7_i = M_T − lim_i``
(floored at 0) are the smallest big-Ms that leave ``z_i = 1`` unconstrained. The secant over-estimates a short
chunk's attention (conservative) and is exact at ``0`` and ``U_i``.

**Objective** [our design choice]::

    max  Σ_{alive i} V_i·u_i·c_i + Σ_{alive i} C_done·V_i·(x_i [i ∈ D completes] or f_i) − Σ_{alive i} V_i·z_i
         + ε·Σ_{dead i} c_i
    V_i = 1 + η·o_i,  u_i = (1 − C_done)/(p_i + o_i)·(1 + θ·max(0, 1 − σ_i/S^ttft_i) for waiting i),
    C_done = 0.5,  η = 1/mean output length (of the requests seen),  ε = 1e−4,  θ = 0.

``evaluate`` scores any batch under this objective: ``T`` from (1)/(1'), ``z_i = 1`` exactly where (6)/(7)
fail, ``f_i = [c_i = m_i]``. Every batch the engine can execute satisfies (1)–(5) (they are physical, given the
blocks a heuristic's own preemptions freed), so ``evaluate(heuristic batch) ≤ J*`` up to the solver's gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from solvers.instance import DECODE, NEW, Latency, OracleInstance

_INF = math.inf
TIME_TOL = 1e-12


class InfeasibleBatch(ValueError):
    """A batch that violates a hard constraint (1)–(5) of the instance; the message names which."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    objective: float
    time_s: float               # T by (1)/(1') (secant)
    violated: tuple[str, ...]   # items with z_i = 1


def secant_time(inst: OracleInstance, units: np.ndarray) -> float:
    """``T`` of (1)/(1') for per-item units (0: not in the batch)."""
    members = units > 0
    if not members.any():
        return 0.0
    lat = inst.latency
    n = float(units.sum())
    return lat.b0 + lat.b1 * max(n, lat.n_knee) + float(inst.ta @ units) + lat.seq_time(float(members.sum()))


def max_time(inst: OracleInstance) -> float:
    """``M_T``: the secant time with every item at its upper bound (a valid bound on T)."""
    return secant_time(inst, inst.upper.astype(np.float64))


def units_of(inst: OracleInstance, batch: Mapping[str, int]) -> np.ndarray:
    index = inst.index()
    units = np.zeros(len(inst), dtype=np.int64)
    for req_id, c in batch.items():
        if req_id not in index:
            raise InfeasibleBatch(f"{req_id!r} is not a candidate of this instance")
        units[index[req_id]] = c
    return units


def check_feasible(inst: OracleInstance, units: np.ndarray) -> None:
    """Raise ``InfeasibleBatch`` naming the first hard constraint (2)–(5) the batch breaks."""
    x = units > 0
    bad = (units < 0) | (units > inst.upper)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InfeasibleBatch(f"(2) {inst.req_ids[i]!r}: {units[i]} units outside [0, {inst.upper[i]}]")
    new = x & (inst.kind == NEW)
    if int(inst.need @ x) > inst.free_blocks:
        raise InfeasibleBatch(f"(4) needs {int(inst.need @ x)} KV blocks, {inst.free_blocks} free")
    if int(inst.need @ new) > inst.free_blocks_new:
        raise InfeasibleBatch(f"(4) new requests need {int(inst.need @ new)} blocks, {inst.free_blocks_new} admissible")
    if inst.footprint_left is not None and int(inst.footprint @ new) > inst.footprint_left:
        raise InfeasibleBatch(f"(4f) footprint {int(inst.footprint @ new)} > {inst.footprint_left}")
    if int(new.sum()) > inst.new_slots:
        raise InfeasibleBatch(f"(5) admits {int(new.sum())} requests, {inst.new_slots} slots left")
    if inst.max_tokens is not None and int(units.sum()) > inst.max_tokens:
        raise InfeasibleBatch(f"(5) {int(units.sum())} tokens > max_tokens={inst.max_tokens}")


def evaluate_units(inst: OracleInstance, units: np.ndarray, *, check: bool = True) -> Evaluation:
    """The objective of a batch given as per-item units, with the best completion of ``z`` and ``f``."""
    if check:
        check_feasible(inst, units)
    x = units > 0
    t = secant_time(inst, units)
    alive = inst.alive
    member_fail = x & alive & (t > inst.cap + TIME_TOL)
    skip_fail = ~x & alive & (inst.kind == DECODE) & (t > inst.lim + TIME_TOL)
    z = member_fail | skip_fail
    finishes = x & (units == inst.remaining)
    objective = float(inst.value @ units) + float(inst.bonus @ finishes) - float(inst.penalty @ z)
    return Evaluation(objective=objective, time_s=t, violated=tuple(inst.req_ids[i] for i in np.flatnonzero(z)))


def evaluate(inst: OracleInstance, batch: Mapping[str, int], *, check: bool = True) -> Evaluation:
    """``J(B)`` of a batch ``{req_id: units}`` (a heuristic's ``num_scheduled_tokens``)."""
    return evaluate_units(inst, units_of(inst, batch), check=check)


def seq_knee_terms(m: ModelAdapter, x: list, lat: Latency) -> list:
    """``β5·w`` with ``w = min(Σ x_i, s_knee)`` by (1s), as terms for ``m.sum``; none when ``β5 = 0``."""
    if not lat.b5:
        return []
    if len(x) <= lat.s_knee:
        return [lat.b5 * xi for xi in x]
    w, y = m.num_var("w_seq", 0.0, float(lat.s_knee)), m.bool_var("y_seq")
    m.add(w >= m.sum(x) - (len(x) - lat.s_knee) * y, "c1s_all")                        # (1s)
    m.add(w >= lat.s_knee * y, "c1s_knee")                                             # (1s)
    return [lat.b5 * w]


class ModelAdapter(Protocol):
    """What ``write_model`` needs from a MILP API (pywraplp and PuLP adapters in ``solvers.backends``)."""

    def bool_var(self, name: str): ...

    def int_var(self, name: str, lo: int, hi: int): ...

    def num_var(self, name: str, lo: float, hi: float): ...

    def sum(self, terms): ...

    def add(self, constraint, name: str) -> None: ...

    def maximize(self, expr) -> None: ...


@dataclass(slots=True)
class ModelVars:
    x: list
    units: list     # c_i (x_i itself for a decode)
    f: dict         # i -> f_i
    z: dict         # i -> z_i
    t: object


def write_model(inst: OracleInstance, m: ModelAdapter) -> ModelVars:
    """The whole MILP (1)–(8) with the objective, through ``m``; constraint names carry their numbers."""
    lat = inst.latency
    n = len(inst)
    x, units, f, z = [], [], {}, {}
    for i in range(n):
        xi = m.bool_var(f"x_{i}")
        x.append(xi)
        if inst.kind[i] == DECODE:
            units.append(xi)                                                         # (3)
        else:
            ci = m.int_var(f"c_{i}", 0, int(inst.upper[i]))
            m.add(ci >= xi, f"c2_lo_{i}")                                            # (2)
            m.add(ci <= int(inst.upper[i]) * xi, f"c2_hi_{i}")                       # (2)
            units.append(ci)
            if inst.bonus[i] > 0.0:
                f[i] = m.bool_var(f"f_{i}")
                m.add(int(inst.remaining[i]) * f[i] <= ci, f"c8_{i}")                # (8)
    m_t = max_time(inst)
    t = m.num_var("T", 0.0, m_t)
    n_tokens = m.sum(units)
    rest = m.sum([float(inst.ta[i]) * units[i] for i in range(n)] + [lat.b4 * xi for xi in x]
                 + seq_knee_terms(m, x, lat))
    m.add(t >= lat.b0 + lat.b1 * n_tokens + rest, "c1")                               # (1)
    if lat.n_knee > 0:
        m.add(t >= lat.b0 + lat.b1 * lat.n_knee + rest, "c1_knee")                   # (1')
    kv = [int(inst.need[i]) * x[i] for i in range(n) if inst.need[i]]
    if kv:
        m.add(m.sum(kv) <= inst.free_blocks, "c4")                                   # (4)
    new = [i for i in range(n) if inst.kind[i] == NEW]
    kv_new = [int(inst.need[i]) * x[i] for i in new if inst.need[i]]
    if kv_new:
        m.add(m.sum(kv_new) <= inst.free_blocks_new, "c4_new")                        # (4)
    if inst.footprint_left is not None and new:
        m.add(m.sum([int(inst.footprint[i]) * x[i] for i in new]) <= inst.footprint_left, "c4f")   # (4f)
    if new:
        m.add(m.sum([x[i] for i in new]) <= inst.new_slots, "c5_slots")              # (5)
    if inst.max_tokens is not None:
        m.add(n_tokens <= inst.max_tokens, "c5_tokens")                              # (5)
    m.add(m.sum(x) >= 1, "c5_nonempty")                                               # (5)
    objective = [float(inst.value[i]) * units[i] for i in range(n)]
    for i in range(n):
        if inst.kind[i] == DECODE and inst.bonus[i] > 0.0:
            objective.append(float(inst.bonus[i]) * x[i])
    objective += [float(inst.bonus[i]) * fi for i, fi in f.items()]
    for i in range(n):
        if not inst.alive[i]:
            continue
        cap, lim = float(inst.cap[i]), float(inst.lim[i])
        has_lim = inst.kind[i] == DECODE and lim < _INF
        if cap == _INF and not has_lim:
            continue
        z[i] = m.bool_var(f"z_{i}")
        objective.append(-float(inst.penalty[i]) * z[i])
        if cap < _INF:
            big = max(0.0, m_t - cap)
            m.add(t <= cap + big * (1 - x[i]) + big * z[i], f"c6_{i}")                # (6)
        if has_lim:
            big = max(0.0, m_t - lim)
            m.add(t <= lim + big * x[i] + big * z[i], f"c7_{i}")                      # (7)
    m.maximize(m.sum(objective))
    return ModelVars(x=x, units=units, f=f, z=z, t=t)
