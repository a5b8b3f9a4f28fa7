"""What a solve returns: the batch, its objective, the proof of optimality and where the time went."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

#: A plan the Oracle may execute: proven optimal, or the best found when the time limit hit.
USABLE = ("optimal", "time_limit")


@dataclass(frozen=True, slots=True)
class Plan:
    """``batch`` maps req_id to units (a chunk, or 1 for a decode).

    ``status``: ``optimal`` (within ``oracle.mip_gap``), ``time_limit`` (an incumbent, not proven),
    ``no_solution`` (time limit without an incumbent), ``infeasible`` (no non-empty batch satisfies (1)–(5)),
    ``empty`` (no candidates), ``solver_missing`` or ``error`` (``message`` says why).
    ``objective`` is ``J`` of ``batch`` re-scored by ``formulation.evaluate`` (the same numbers for every
    backend); ``bound`` is the backend's proven upper bound; ``gap = (bound − objective)/max(|objective|, 1e−9)``.
    """

    backend: str
    status: str
    batch: dict[str, int] = field(default_factory=dict)
    objective: float = -math.inf
    bound: float = math.inf
    solve_time_s: float = 0.0
    time_s: float = 0.0             # T of the batch under (1)
    message: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def gap(self) -> float:
        if not math.isfinite(self.objective) or not math.isfinite(self.bound):
            return math.inf
        return max(0.0, self.bound - self.objective) / max(abs(self.objective), 1e-9)

    @property
    def usable(self) -> bool:
        return self.status in USABLE and bool(self.batch)
