"""The Oracle's input: a frozen snapshot of the engine state at one iteration (algorithms.md section 6).

Every candidate of the iteration is one *item* with an integer number of work units ``c_i`` this step: a decode
has exactly one unit (``c_i = x_i``), a prefill-phase request (a partial prefill, a waiting prompt, or a
recompute after preemption) a chunk ``c_i ∈ {0} ∪ [1, U_i]``. Per item the instance holds

* ``U_i = min(remaining, oracle.chunk_cap, the largest chunk that alone fits cap_i)``: a larger chunk could only
  join with ``z_i = 1``, which never pays without an urgency boost (then the cap is not applied), and a short
  ``U_i`` keeps the secant tight;
* the latency coefficients of the secant form of algorithms.md section 3: ``ta_i`` per unit beyond the shared
  ``β1`` (``β2·(q_i + U_i/2)`` for a chunk after ``q_i`` computed tokens, ``β3·ctx_i`` for a decode) and
  ``tb_i = β4`` per member;
* KV: ``need_i`` blocks taken if it joins (a decode crossing a block boundary: 1; a new request: its whole
  ``blocks(p_i + g_i)``, because the engine allocates a prompt at admission as vLLM does; a partial: 0, already
  held) and ``footprint_i = blocks(p_i + o_i)`` for ``kv_mode: footprint``;
* SLO: ``alive_i`` (it can still meet its SLO), its member cap ``cap_i`` and, for a running decode, its
  non-member limit ``lim_i`` (both ∞ where nothing binds);
* value: ``V_i = 1 + η·o_i``, ``u_i = (1 − C_done)/(p_i + o_i)`` (times the urgency factor), and whether joining
  completes it (a decode with one token left; a prompt whose last chunk samples the request's last token).

Time limits and values are computed here once, so every backend reads the same numbers.

**Alive** [our design choice, ``max`` TBT semantics]: a request is dead once any gap or prefill iteration broke
``S^tbt``, or its TTFT was missed (``SLOTracker``); a decode is dead when even running alone it would miss its
next-token deadline ``d_i = τ_{i,g_i} + S^tbt_i``; a prefill-phase request when even its whole remaining prompt
in one iteration (the fastest possible: ``T̂`` is additive over chunks of one prompt) misses its deadline
(``a_i + S^ttft_i`` before the first token, the next-token deadline after a recompute).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from runtime.core.errors import ConfigError
from runtime.core.outputs import SchedulerOutput
from runtime.core.request import Request, RequestStatus

DECODE, PARTIAL, NEW = 0, 1, 2
_INF = math.inf


@dataclass(frozen=True, slots=True)
class OracleParams:
    """The objective's weights and the instance's limits (``conf/config.yaml``: ``oracle.*``)."""

    c_done: float = 0.5           # share of a request's value paid at completion
    eta: float | None = None      # value per output token; None: 1 / mean output length of the requests seen
    eps: float = 1e-4             # value per work unit of a dead request (throughput tie-breaker)
    urgency_theta: float = 0.0    # TTFT urgency weight on waiting requests' u_i
    margin: float = 0.0           # caps are (1 − margin)·limit; 0: the Oracle plans on the exact predictor
    chunk_cap: int | None = 1024  # largest chunk per request (None: its whole remaining prompt)
    max_tokens: int | None = None  # token cap per iteration (None: none)
    max_candidates: int = 256     # least-slack waiting requests kept (all running ones always are)
    kv_mode: str = "physical"     # physical: free blocks only; footprint: also Σ blocks(p + o) ≤ M
    bound_prefill_iterations: bool = True

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.c_done < 1.0, f"oracle.c_done must be in [0, 1), got {self.c_done!r}"),
            (self.eta is None or self.eta >= 0.0, f"oracle.eta must be >= 0 or null, got {self.eta!r}"),
            (self.eps >= 0.0, f"oracle.eps must be >= 0, got {self.eps!r}"),
            (self.urgency_theta >= 0.0, f"oracle.urgency_theta must be >= 0, got {self.urgency_theta!r}"),
            (0.0 <= self.margin < 1.0, f"oracle.margin must be in [0, 1), got {self.margin!r}"),
            (self.chunk_cap is None or self.chunk_cap >= 1, f"oracle.chunk_cap must be >= 1 or null, got {self.chunk_cap!r}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"oracle.max_tokens must be >= 1 or null, got {self.max_tokens!r}"),
            (self.max_candidates >= 1, f"oracle.max_candidates must be >= 1, got {self.max_candidates!r}"),
            (self.kv_mode in ("physical", "footprint"), f"oracle.kv_mode must be 'physical' or 'footprint', got {self.kv_mode!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True, slots=True)
class Latency:
    """The linear predictor's coefficients: ``T̂ = b0 + b1·max(N, n_knee) + b2·Σc(q + c/2) + b3·Σctx + b4·|B|
    + b5·min(|B|, s_knee)`` (``runtime.sim.cost_model``; ``b5 = 0`` unless a CPU profile fitted the LM head's
    small-batch staircase).

    A CPU profile's settling factor (``runtime.sim.settle``) is left out on purpose: it belongs to the machine's
    recent history, not to the batch, so the Oracle plans with the settled ``T̂`` as every scheduler does, and the
    simulated clock, like the live one, adds it."""

    b0: float
    b1: float
    b2: float
    b3: float
    b4: float
    n_knee: float = 0.0
    b5: float = 0.0
    s_knee: int = 0

    @classmethod
    def of(cls, cost_model) -> "Latency":
        """From a ``LinearCostModel`` (its ``beta0 + engine_overhead_s`` is the per-iteration constant)."""
        try:
            return cls(b0=cost_model.beta0 + cost_model.engine_overhead_s, b1=cost_model.beta1, b2=cost_model.beta2,
                       b3=cost_model.beta3, b4=cost_model.beta4, n_knee=cost_model.n_knee,
                       b5=getattr(cost_model, "beta5", 0.0), s_knee=getattr(cost_model, "s_knee", 0))
        except AttributeError:
            raise ConfigError(
                f"the Oracle needs a linear latency model (beta0..beta4, n_knee); got {type(cost_model).__name__}"
            ) from None

    def seq_time(self, seqs: float) -> float:
        """The per-sequence part of ``T̂`` for ``|B| = seqs``: ``b4·|B| + b5·min(|B|, s_knee)``."""
        return self.b4 * seqs + (self.b5 * min(seqs, self.s_knee) if self.b5 else 0.0)

    def exact(self, chunks: Iterable[tuple[int, int]], decode_ctx: Iterable[int]) -> float:
        """``T̂`` with the exact quadratic prefill term (what the simulator charges)."""
        chunks, decode_ctx = list(chunks), list(decode_ctx)
        seqs = len(chunks) + len(decode_ctx)
        if not seqs:
            return 0.0
        n = sum(c for c, _ in chunks) + len(decode_ctx)
        return (self.b0 + self.b1 * max(n, self.n_knee) + self.b2 * sum(c * (q + 0.5 * c) for c, q in chunks)
                + self.b3 * sum(decode_ctx) + self.seq_time(seqs))


@dataclass(frozen=True, slots=True)
class OracleInstance:
    """One iteration's problem. Arrays are aligned by item; read-only by contract."""

    now: float
    latency: Latency
    req_ids: tuple[str, ...]
    kind: np.ndarray        # DECODE, PARTIAL or NEW
    remaining: np.ndarray   # m_i: units left to compute (1 for a decode)
    computed: np.ndarray    # q_i (a decode: its context minus the new token)
    upper: np.ndarray       # U_i: largest units this step
    ta: np.ndarray          # time per unit beyond b1 (secant)
    need: np.ndarray        # KV blocks taken if it joins
    footprint: np.ndarray   # blocks(p + o)
    alive: np.ndarray       # bool
    cap: np.ndarray         # member limit on T (inf: none)
    lim: np.ndarray         # non-member limit on T (inf: none)
    value: np.ndarray       # V_i·u_i per unit (eps for a dead item)
    penalty: np.ndarray     # V_i (0 for a dead item): charged when it loses its SLO
    bonus: np.ndarray       # C_done·V_i when joining (decode) or finishing the prompt (prefill) completes it
    slack: np.ndarray       # for ordering and pruning only
    free_blocks: int
    free_blocks_new: int    # for new requests: free blocks above the admission watermark
    new_slots: int          # max_num_seqs − running
    max_tokens: int | None
    footprint_left: int | None  # kv_mode footprint: M − watermark − Σ_running footprint; None: not imposed
    params: OracleParams = field(default_factory=OracleParams)

    def __len__(self) -> int:
        return len(self.req_ids)

    @property
    def tb(self) -> float:
        return self.latency.b4

    @property
    def is_decode(self) -> np.ndarray:
        return self.kind == DECODE

    def index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.req_ids)}


class SLOTracker:
    """Which requests have already broken their SLO (``max`` TBT semantics), updated once per step in O(batch)."""

    __slots__ = ("dead", "bound_prefill_iterations")

    def __init__(self, *, bound_prefill_iterations: bool = True) -> None:
        self.dead: set[str] = set()
        self.bound_prefill_iterations = bound_prefill_iterations

    def observe(self, output: SchedulerOutput, step_time: float, requests: Mapping[str, Request],
                finished: Iterable[Request] = ()) -> None:
        """After ``update_from_output``: check the tokens just emitted and the prefill iterations just run."""
        dead = self.dead
        for req_id in output.sampling_req_ids:
            r = requests.get(req_id)
            if r is None or req_id in dead:
                continue
            times = r.token_times
            if len(times) == 1:
                if times[0] - r.arrival_time > r.ttft_slo_s:
                    dead.add(req_id)
            elif times[-1] - times[-2] > r.tbt_slo_s:
                dead.add(req_id)
        if self.bound_prefill_iterations:
            for req_id in output.prefill_req_ids:
                r = requests.get(req_id)
                if r is not None and step_time > r.tbt_slo_s:
                    dead.add(req_id)
        for r in finished:
            dead.discard(r.req_id)


def max_chunk_alone(lat: Latency, q: int, limit: float) -> float:
    """The largest chunk ``c`` (real) after ``q`` computed tokens with ``T̂({(c, q)}) ≤ limit`` running alone."""
    if limit == _INF:
        return _INF
    room = limit - lat.b0 - lat.seq_time(1)
    a, b = 0.5 * lat.b2, lat.b1 + lat.b2 * q

    def root(b_lin: float, rest: float) -> float:
        if rest < 0:
            return -1.0
        if a == 0.0:
            return rest / b_lin if b_lin > 0 else _INF
        return (-b_lin + math.sqrt(b_lin * b_lin + 4 * a * rest)) / (2 * a)

    above = root(b, room)                                   # c ≥ n_knee: β1·c
    if above >= lat.n_knee:
        return above
    return min(root(lat.b2 * q, room - lat.b1 * lat.n_knee), lat.n_knee)   # c < n_knee: β1·n_knee


def _deadline(r: Request) -> float:
    """Next-token deadline: first token ``a + S^ttft``, later ones ``τ_last + S^tbt``."""
    return r.token_times[-1] + r.tbt_slo_s if r.num_output_tokens else r.arrival_time + r.ttft_slo_s


def build_instance(
    *,
    now: float,
    decoding: Iterable[Request],
    prefilling: Iterable[Request],
    waiting: Iterable[Request],
    block_manager,
    latency: Latency,
    max_num_seqs: int,
    params: OracleParams,
    dead: set[str] | frozenset[str] = frozenset(),
    eta: float = 0.0,
    keep: set[str] | frozenset[str] = frozenset(),
    extra_free_blocks: int = 0,
    extra_slots: int = 0,
    unit_floor: Mapping[str, int] | None = None,
) -> OracleInstance:
    """Freeze the engine state into an ``OracleInstance``.

    ``keep``: waiting requests that survive candidate pruning whatever their slack (gap accounting keeps the
    heuristic's own picks). ``extra_free_blocks``/``extra_slots``: what a heuristic freed by preempting this
    step (gap accounting, so its batch stays a feasible point). ``unit_floor``: per request, a chunk ``U_i`` may
    not fall below (a heuristic's own chunk). ``eta`` is used when ``params.eta`` is None.
    """
    lat = latency
    bm = block_manager
    size = bm.block_size
    tables = bm.tables
    margin = 1.0 - params.margin
    eta = params.eta if params.eta is not None else eta
    c_done = params.c_done
    chunk_cap = params.chunk_cap
    unit_floor = unit_floor or {}

    decodes = [r for r in decoding if r.status == RequestStatus.RUNNING]
    partials = [r for r in prefilling if r.status == RequestStatus.RUNNING]
    num_running = len(decodes) + len(partials)
    decode_ctx = [r.num_computed_tokens + 1 for r in decodes]
    # T_floor: a decode-only iteration of the current decodes (a skipped decode must still fit the next one).
    t_floor = lat.exact((), decode_ctx)

    def one_shot(r: Request) -> float:
        m = r.num_tokens - r.num_computed_tokens
        return lat.exact([(m, r.num_computed_tokens)], ())

    # Waiting candidates: the max_candidates least-slack ones plus `keep`.
    queued = list(waiting)
    if len(queued) > params.max_candidates:
        # Requests that can still meet their SLO first (least slack first), then the lost ones: under overload the
        # least-slack requests are all lost, and keeping only them would leave the Oracle nothing worth admitting.
        def rank(r: Request) -> tuple:
            slack = _deadline(r) - one_shot(r) - now
            return (r.req_id in dead or slack < 0, slack, r.arrival_time, r.req_id)

        keyed = sorted(queued, key=rank)
        chosen = keyed[:params.max_candidates]
        chosen_ids = {r.req_id for r in chosen}
        chosen += [r for r in keyed[params.max_candidates:] if r.req_id in keep and r.req_id not in chosen_ids]
        queued = chosen

    rows = []
    for kind, group in ((DECODE, decodes), (PARTIAL, partials), (NEW, queued)):
        for r in group:
            rid = r.req_id
            p, g, o = r.num_prompt_tokens, r.num_output_tokens, r.max_tokens
            q = r.num_computed_tokens
            held = len(tables.get(rid, ()))
            total = p + o
            deadline = _deadline(r)
            if kind == DECODE:
                m = upper = 1
                ctx = q + 1
                ta = lat.b3 * ctx
                need = 1 if ctx > held * size else 0
                alone = lat.exact((), [ctx])
                alive = rid not in dead and deadline - now >= alone
                cap = margin * (deadline - now) if alive else _INF
                lim = (deadline - now - t_floor) * margin if alive else _INF
                completes = g + 1 >= o
                slack = deadline - now
            else:
                m = r.num_tokens - q
                shot = one_shot(r)
                alive = rid not in dead and now + shot <= deadline
                cap = margin * r.tbt_slo_s if alive and params.bound_prefill_iterations else _INF
                # U_i: no member chunk can exceed what fits its own cap alone (the largest limit for one without),
                # and the secant of c(q + c/2) over [0, U_i] is tight only when U_i is.
                # Exact only while joining with z_i = 1 can never pay (u_i·m_i + C_done ≤ 1, i.e. no urgency boost);
                # an item without a cap is left whole (up to chunk_cap).
                alone = max_chunk_alone(lat, q, cap) if cap < _INF and not params.urgency_theta else _INF
                upper = m if alone >= m else max(1, int(alone))
                if chunk_cap is not None:
                    upper = min(upper, chunk_cap)
                upper = max(upper, min(m, unit_floor.get(rid, 0)))
                ta = lat.b2 * (q + 0.5 * upper)
                need = max(0, -(-r.num_tokens // size) - held) if kind == NEW else 0
                lim = _INF
                # The last chunk samples a token; it completes the request only when one output is left.
                completes = upper == m and g + 1 >= o
                slack = deadline - now - shot
            if alive:
                big_v = 1.0 + eta * o
                u = (1.0 - c_done) / total
                if kind == NEW and params.urgency_theta > 0.0 and not g:
                    u *= 1.0 + params.urgency_theta * max(0.0, 1.0 - slack / r.ttft_slo_s)
                value, penalty, bonus = big_v * u, big_v, (c_done * big_v if completes else 0.0)
            else:
                value, penalty, bonus = params.eps, 0.0, 0.0
            rows.append((rid, kind, m, q, upper, ta, need, -(-total // size), alive, cap, lim, value, penalty, bonus,
                         slack))

    cols = list(zip(*rows)) if rows else [()] * 15
    free = bm.num_free_blocks + extra_free_blocks
    footprint_left = None
    if params.kv_mode == "footprint":
        used = sum(-(-(r.num_prompt_tokens + r.max_tokens) // size) for r in decodes + partials)
        # Below zero (the fallback admitted past it): no new admission, but running requests still run.
        footprint_left = max(0, bm.num_blocks - bm.watermark_blocks - used)
    return OracleInstance(
        now=now, latency=lat, req_ids=tuple(cols[0]),
        kind=np.array(cols[1], dtype=np.int8), remaining=np.array(cols[2], dtype=np.int64),
        computed=np.array(cols[3], dtype=np.int64), upper=np.array(cols[4], dtype=np.int64),
        ta=np.array(cols[5], dtype=np.float64), need=np.array(cols[6], dtype=np.int64),
        footprint=np.array(cols[7], dtype=np.int64), alive=np.array(cols[8], dtype=bool),
        cap=np.array(cols[9], dtype=np.float64), lim=np.array(cols[10], dtype=np.float64),
        value=np.array(cols[11], dtype=np.float64), penalty=np.array(cols[12], dtype=np.float64),
        bonus=np.array(cols[13], dtype=np.float64), slack=np.array(cols[14], dtype=np.float64),
        free_blocks=free, free_blocks_new=max(0, free - bm.watermark_blocks),
        new_slots=max(0, max_num_seqs - num_running + extra_slots), max_tokens=params.max_tokens,
        footprint_left=footprint_left, params=params,
    )


def instance_from_scheduler(scheduler, now: float, *, latency: Latency, params: OracleParams,
                            dead: set[str] | frozenset[str] = frozenset(), eta: float = 0.0, **kwargs) -> OracleInstance:
    """``build_instance`` on a ``BaseScheduler``'s queues and block manager (benches, notebooks, tests)."""
    return build_instance(now=now, decoding=scheduler.decoding, prefilling=scheduler.prefilling,
                          waiting=scheduler.waiting, block_manager=scheduler.block_manager, latency=latency,
                          max_num_seqs=scheduler.max_num_seqs, params=params, dead=dead, eta=eta, **kwargs)
