"""Global routers: which replica serves an arriving request.

A router sees every replica (``runtime.cluster.replica.Replica``) at the request's arrival time ``now`` and
returns a replica index. Each rule is deterministic, and every tie goes to the lowest index.

* ``round_robin``: replicas in turn, 0, 1, …, N−1, 0, …, whatever their state.
* ``least_outstanding``: the replica with the fewest outstanding requests (routed there, neither finished nor
  rejected: queued, prefilling, decoding or swapped out); ties to the lowest index.
* ``slo_aware``: the replica where the request keeps the most headroom on its own SLOs (below).

**SLO-aware rule.** For request q (prompt p_q, SLOs S^ttft_q and S^tbt_q) and replica r, with T̂ the noise-free
cost model (``CostModel.predict``):

* predicted TTFT  τ_r = ρ_r + κ · (Q_r + p_q), where ρ_r is the time left of r's step in flight (0 when idle),
  Q_r the tokens r must still prefill before q (every uncomputed token of its queued, swapped and prefilling
  requests), and κ = T̂({(C, 0)}, ∅) / C the cost per prefill token of a ``reference_chunk``-token chunk C
  (the per-step overhead spread over the chunk). It assumes r prefills its backlog first-come first-served.
* predicted TBT   δ_r = T̂(∅, {l_d : d decoding on r} ∪ {p_q + 1}): the pure-decode step q joins on r, a lower
  bound on q's token gaps there that grows with r's decode batch and its context lengths.
* headroom        h_r = min(1 − τ_r / S^ttft_q, 1 − δ_r / S^tbt_q): the slack left on q's tighter SLO, as a fraction
  of that SLO.

The router picks argmax_r h_r (ties: fewer outstanding requests, then the lowest index). A tight-TBT request
thus avoids replicas with big decode batches, and a tight-TTFT one avoids long prefill backlogs, each in
proportion to its own SLOs; when every replica is predicted to miss, the least-bad one still gets the request.
"""
from __future__ import annotations

from typing import Sequence

from runtime.core.errors import ConfigError
from runtime.core.interface import CostModel
from runtime.core.request import Request
from runtime.cluster.replica import Replica


class Router:
    """``route(request, replicas, now) -> index``. ``cost_model`` (the planners' noise-free predictor) is passed to
    every router by the runner; only the SLO-aware one uses it."""

    name = "router"

    def __init__(self, *, cost_model: CostModel | None = None) -> None:
        self.cost_model = cost_model

    def route(self, request: Request, replicas: Sequence[Replica], now: float) -> int:  # pragma: no cover
        raise NotImplementedError


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self, *, cost_model: CostModel | None = None) -> None:
        super().__init__(cost_model=cost_model)
        self._num_routed = 0

    def route(self, request: Request, replicas: Sequence[Replica], now: float) -> int:
        index = self._num_routed % len(replicas)
        self._num_routed += 1
        return index


class LeastOutstandingRouter(Router):
    name = "least_outstanding"

    def route(self, request: Request, replicas: Sequence[Replica], now: float) -> int:
        return min(range(len(replicas)), key=lambda i: replicas[i].num_outstanding)  # min keeps the first tie


class SLOAwareRouter(Router):
    name = "slo_aware"

    def __init__(self, *, cost_model: CostModel | None = None, reference_chunk: int = 512) -> None:
        super().__init__(cost_model=cost_model)
        if cost_model is None:
            raise ConfigError("cluster.router: the slo_aware router needs the run's cost model")
        if isinstance(reference_chunk, bool) or not isinstance(reference_chunk, int) or reference_chunk < 1:
            raise ConfigError(f"cluster.router.reference_chunk must be a positive integer, got {reference_chunk!r}")
        self.reference_chunk = reference_chunk
        # κ: seconds per prefill token (module docstring).
        self.prefill_s_per_token = cost_model.predict([(reference_chunk, 0)], []) / reference_chunk

    def headroom(self, request: Request, replica: Replica, now: float) -> float:
        """h_r of the module docstring."""
        backlog = sum(r.num_uncomputed_tokens for r in replica.queued_requests())
        ttft = replica.residual_s(now) + self.prefill_s_per_token * (backlog + request.num_prompt_tokens)
        contexts = [r.num_tokens for r in replica.running_requests()]
        contexts.append(request.num_prompt_tokens + 1)
        tbt = self.cost_model.predict([], contexts)
        return min(1.0 - ttft / request.ttft_slo_s, 1.0 - tbt / request.tbt_slo_s)

    def route(self, request: Request, replicas: Sequence[Replica], now: float) -> int:
        scores = [(-self.headroom(request, rep, now), rep.num_outstanding, rep.index) for rep in replicas]
        return min(scores)[2]
