"""CacheOPT's KV-cache management as a mixin any policy can take (algorithms.md section 7).

``KVCompetition`` replaces a policy's KV decisions, not its batching: which waiting request gets which share of
the cache, when running requests grow their share, who is preempted and how. ``CacheOPTScheduler`` puts it on
Sarathi-Serve's stall-free batches, ``AccelGenCacheOPTScheduler`` on AccelGen's. Five components, each
switchable (``scheduler.cacheopt.<component>: false``) for ablations:

1. ``estimation`` (7.1): at arrival, ``L_r = clip(ô_r + t, g_r + 1, max_model_len − p_r)`` from the configured
   predictor and the confidence padding ``t`` (``heuristics.padding.LengthPlanner``; ``padding: false`` sets
   ``t = 0``). Off: ``L_r = g_r + 1``, allocation on demand as in vLLM.
2. ``reuse`` (7.2): a request needs ``A_r = blocks(p_r + L_r)`` (capped at ``M − reserve``, never below what it
   already holds). It is first *embedded* in the unwritten tail of a running decode ``h`` when, in tokens, with
   ``room_h = (A_h − lent_h)·block_size − U_h`` and ``size = A_r·block_size``::

       room_h − size − embed_buffer_tokens ≥ 0   and   iters_r + embed_margin_iters ≤ room_h − size,
       iters_r = ceil(m_r / P̄) + (L_r − g_r)     (m_r: prompt tokens left, P̄: mean prefill budget)

   so it finishes before ``h``, writing one token per iteration, reaches it (best fit: the smallest such room);
   otherwise it takes ``A_r`` from the pool above the reserve (``KVLedger``).
3. ``proactive`` and ``reserve`` (7.3): before each step every running decode with ``(A_r − lent_r)·block_size
   − U_r ≤ prealloc_iters`` is extended by ``Δ = max(1 block, blocks(t_r))`` (``t_r`` the padding at the current
   confidence), from the pool, else the reserve. ``reserved_blocks`` are never used by admission or embedding;
   ``reserve: false`` makes them 0. A decode that needs a block beyond its allocation extends on the spot;
   preemption happens only when even that fails.
4. ``victim_order`` (7.4): among running requests not yet scheduled this step (the one asking excluded when
   others exist): those with ``S^tbt ≥ (1 − eps_slo)·max S^tbt``, of those the ones with ``rem ≥ (1 −
   eps_rem)·max rem``, ``rem_r = max(L_r − g_r, 1)`` decode iterations, then the shortest ``min(T_swap, T_rec)``,
   ties by latest arrival. A host asking for room evicts its own guests first (7.2, newest first).
   Off: the policy's own victim.
5. ``swap_or_recompute`` (7.5): ``preemption_mode: auto`` (``BaseScheduler``: swap iff room in swap space and
   ``2·T_swap < T_rec``). Off: recompute only. The crossover length is logged per run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from heuristics.kv_ledger import KVLedger
from heuristics.output_length import make_predictor
from heuristics.padding import LengthPlanner
from runtime.core.base_scheduler import swap_crossover_tokens
from runtime.core.errors import ConfigError
from runtime.core.request import Request, RequestStatus

COMPONENTS = ("estimation", "padding", "reuse", "proactive", "reserve", "victim_order", "swap_or_recompute")


@dataclass(frozen=True, slots=True)
class CacheOPTParams:
    """``scheduler.cacheopt``: every knob of the KV management (defaults: algorithms.md sections 7 and 9)."""

    # Components (ablation switches).
    estimation: bool = True
    padding: bool = True
    reuse: bool = True
    proactive: bool = True
    reserve: bool = True
    victim_order: bool = True
    swap_or_recompute: bool = True
    # 7.1 estimation.
    predictor: str = "class_quantile"
    quantile: float = 0.5
    noise_sigma: float = 0.5
    noise_seed: int = 0
    padding_mode: str = "hoeffding"
    alpha: float = 0.95
    beta: float = 0.001
    rate_window_s: float = 30.0
    hoeffding_n: int = 1
    calibration_frac: float = 0.5
    # 7.2 reuse.
    embed_buffer_tokens: int = 8
    embed_margin_iters: int = 4
    # 7.3 proactive allocation and reserve.
    prealloc_iters: int = 2
    reserved_blocks: int = 8
    # 7.4 victim order.
    eps_slo: float = 0.1
    eps_rem: float = 0.1

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"scheduler.cacheopt.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("embed_buffer_tokens", "embed_margin_iters", "prealloc_iters", "reserved_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"scheduler.cacheopt.{name} must be an integer >= 0, got {value!r}")
        for name in ("eps_slo", "eps_rem"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"scheduler.cacheopt.{name} must be in [0, 1), got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, node) -> "CacheOPTParams":
        node = dict(node or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"scheduler.cacheopt: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**node)


class KVCompetition:
    """Mixin: put it before the policy class (``class X(KVCompetition, Policy)``) and call ``_setup_kv``."""

    def _setup_kv(self, params: CacheOPTParams) -> None:
        self.kv_params = p = params
        bm = self.block_manager
        self.ledger = KVLedger(num_blocks=bm.num_blocks, reserved_blocks=p.reserved_blocks if p.reserve else 0)
        self.length_planner = LengthPlanner(
            make_predictor(p.predictor, quantile=p.quantile, noise_sigma=p.noise_sigma, noise_seed=p.noise_seed),
            mode=p.padding_mode, alpha=p.alpha, beta=p.beta, rate_window_s=p.rate_window_s,
            hoeffding_n=p.hoeffding_n, padding=p.padding, calibration_frac=p.calibration_frac,
            max_model_len=self.max_model_len)
        self._calibrated = not p.estimation
        if p.swap_or_recompute:
            if self.kv_transfer is None or self.cost_model is None:
                raise ConfigError("scheduler.cacheopt.swap_or_recompute needs a latency predictor and a KV transfer "
                                  "model (set it false to recompute only)")
            self.preemption_mode = "auto"
        else:
            self.preemption_mode = "recompute"
        self.swap_crossover_tokens = swap_crossover_tokens(self.cost_model, self.kv_transfer, bm.block_size,
                                                           self.max_model_len) \
            if self.kv_transfer is not None and self.cost_model is not None else None
        self._target: dict[str, int] = {}
        self._growing: Request | None = None
        self._kv_now = 0.0
        self.num_guest_evictions = 0

    # Estimation ---------------------------------------------------------------------------------------------------
    def calibrate(self, frame) -> None:
        """Fit the predictor and the padding's error ranges on the workload's training split (CLI calls this)."""
        if self.kv_params.estimation:
            self.length_planner.calibrate(frame)
        self._calibrated = True

    def rejection_reason(self, request: Request) -> str | None:
        reason = super().rejection_reason(request)
        if reason is None:
            bm = self.block_manager
            admissible = bm.num_blocks - self.ledger.reserved_blocks
            need = bm.blocks_for(request.num_prompt_tokens + request.max_tokens)
            if need > admissible:
                reason = (f"prompt+output needs {need} KV blocks; the cache has {admissible} outside the "
                          f"{self.ledger.reserved_blocks}-block reserve")
        return reason

    def add_request(self, request: Request) -> None:
        if not self._calibrated:
            # A learnt predictor without a training split would silently predict nonsense.
            self.calibrate(None)
        self.length_planner.observe_arrival(request.arrival_time)
        super().add_request(request)
        if request.status == RequestStatus.WAITING:
            self._target[request.req_id] = self.length_planner.target_length(request, request.arrival_time) \
                if self.kv_params.estimation else 1

    def target_length(self, request: Request) -> int:
        """``L_r`` now: the arrival-time target, never below the tokens already generated plus one."""
        return max(self._target[request.req_id], request.num_output_tokens + 1)

    def _target_blocks(self, request: Request, held: int = 0) -> int:
        bm = self.block_manager
        blocks = bm.blocks_for(request.num_prompt_tokens + self.target_length(request))
        cap = bm.num_blocks - self.ledger.reserved_blocks
        return max(min(blocks, cap), bm.blocks_for(request.num_tokens), held)

    def _extension_blocks(self, request: Request) -> int:
        """``Δ = max(1 block, blocks(t_r))``."""
        t = self.length_planner.padding(request, self._kv_now) if self.kv_params.estimation else 0.0
        return max(1, self.block_manager.blocks_for(int(math.ceil(t))))

    def _mean_prefill_budget(self) -> float:
        return float(self.token_budget or 512)

    # Admission: embed, else the pool (7.2) ------------------------------------------------------------------------
    def _kv_admit(self, request: Request, *, pool: bool = True) -> bool:
        """Reserve ``A_r`` (embedded, else from the pool if ``pool``) and allocate r's tokens; False: nothing done."""
        blocks = self._target_blocks(request)
        ledger = self.ledger
        host = self._find_host(request, blocks) if self.kv_params.reuse else None
        if host is not None:
            ledger.embed(request.req_id, host.req_id, blocks)
        elif not (pool and ledger.admit(request.req_id, blocks)):
            return False
        ok = self.block_manager.allocate_slots(request.req_id, request.num_tokens, use_watermark=False)
        assert ok, "the ledger promised blocks the cache does not have"
        return True

    def _find_host(self, request: Request, blocks: int) -> Request | None:
        p, ledger, size_bs = self.kv_params, self.ledger, self.block_manager.block_size
        size = blocks * size_bs
        iters = math.ceil(request.num_uncomputed_tokens / max(self._mean_prefill_budget(), 1.0)) \
            + self.target_length(request) - request.num_output_tokens
        best, best_room = None, None
        for host in self.decoding:
            host_id = host.req_id
            if host.status != RequestStatus.RUNNING or ledger.is_guest(host_id) or not ledger.has(host_id):
                continue
            left = ledger.own_blocks(host_id) * size_bs - host.num_computed_tokens - size
            if left >= p.embed_buffer_tokens and left >= iters + p.embed_margin_iters \
                    and (best_room is None or left < best_room):
                best, best_room = host, left
        return best

    def _admit_swapped(self, request: Request) -> bool:
        blocks = self._target_blocks(request, self.block_manager.num_swapped_blocks_of(request.req_id))
        return self.ledger.admit(request.req_id, blocks)

    # Growth: proactive extension and the reserve (7.3) ------------------------------------------------------------
    def _proactive_extend(self, now: float) -> None:
        self._kv_now = now
        if not self.kv_params.proactive:
            return
        ledger, size, horizon = self.ledger, self.block_manager.block_size, self.kv_params.prealloc_iters
        for request in self.decoding:
            room = ledger.own_blocks(request.req_id) * size - request.num_computed_tokens
            if room <= horizon:
                ledger.extend(request.req_id, self._extension_blocks(request), 1)

    def _grow(self, request: Request, num_tokens: int) -> bool:
        req_id, bm, ledger = request.req_id, self.block_manager, self.ledger
        deficit = bm.blocks_for(num_tokens) - ledger.own_blocks(req_id)
        if deficit > 0 and not ledger.extend(req_id, max(deficit, self._extension_blocks(request)), deficit):
            self._growing = request  # pick_victim: its guests first, itself last
            return False
        ok = bm.append_slot(req_id, num_tokens)
        assert ok, "the ledger promised a block the cache does not have"
        return True

    # Preemption: victim order (7.4), swap or recompute (7.5) -------------------------------------------------------
    def pick_victim(self, candidates: list[Request]) -> Request:
        asking, ledger = self._growing, self.ledger
        if asking is not None:
            guests = set(ledger.guests.get(asking.req_id, ()))
            own = [r for r in candidates if r.req_id in guests]
            if own:
                self.num_guest_evictions += 1
                order = ledger.guests[asking.req_id]
                return max(own, key=lambda r: order.index(r.req_id))
        if not self.kv_params.victim_order:
            return super().pick_victim(candidates)
        cands = [r for r in candidates if r is not asking] or candidates
        p = self.kv_params
        top_slo = max(r.tbt_slo_s for r in cands)
        s1 = [r for r in cands if r.tbt_slo_s >= (1.0 - p.eps_slo) * top_slo]
        rem = {r.req_id: max(self.target_length(r) - r.num_output_tokens, 1) for r in s1}
        top_rem = max(rem.values())
        s2 = [r for r in s1 if rem[r.req_id] >= (1.0 - p.eps_rem) * top_rem]
        order = self._arrival_order
        return min(s2, key=lambda r: (min(self.preemption_times(r)), -r.arrival_time, -order[r.req_id]))

    def _preempt(self, request: Request, now: float) -> str:
        self.ledger.release(request.req_id)
        if self._growing is request:
            self._growing = None
        return super()._preempt(request, now)

    def update_from_output(self, output, result, now):
        finished = super().update_from_output(output, result, now)
        for request in finished:
            self.ledger.release(request.req_id)
            self._target.pop(request.req_id, None)
        self._growing = None
        return finished

    def kv_summary(self) -> dict:
        """Run-summary keys of the KV management (``cacheopt_*``)."""
        ledger = self.ledger
        return {
            "cacheopt_components": {name: getattr(self.kv_params, name) for name in COMPONENTS},
            "cacheopt_padding": self.length_planner.describe(),
            "cacheopt_swap_crossover_tokens": self.swap_crossover_tokens,
            "cacheopt_reserved_blocks": ledger.reserved_blocks,
            "cacheopt_num_embedded": ledger.num_embedded,
            "cacheopt_num_extensions": ledger.num_extensions,
            "cacheopt_num_reserve_extensions": ledger.num_reserve_extensions,
            "cacheopt_reserve_blocks_used": ledger.reserve_blocks_used,
            "cacheopt_num_guest_evictions": self.num_guest_evictions,
        }

    def run_artifacts(self) -> tuple[dict, dict]:
        return {}, self.kv_summary()

    def check_kv_invariants(self) -> None:
        """Ledger identities plus ``held ≤ own room`` for every request on the GPU (tests call this each step)."""
        held = {r: len(t) for r, t in self.block_manager.tables.items()}
        self.ledger.check_invariants(held)
        on_gpu = {r.req_id for r in self.running}
        assert set(self.ledger.alloc) == on_gpu, (sorted(set(self.ledger.alloc) ^ on_gpu))[:5]
