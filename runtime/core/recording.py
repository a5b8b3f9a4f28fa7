"""``RecordingExecutor``: any executor, with every step's composition and measured time kept.

Used where a run's steps must be seen one by one: the profiler's served calibration (``accelgen-profile
profile.serve_rates=...``) and ``bench/sim_vs_live.py``. Each row holds the step's prefill chunks ``(c, q)``, decode
contexts, ``step_time``, ``swap_time``, the recomputed tokens, and the *engine gap*: the host time between the end of
the previous ``execute`` and the start of this one (scheduling, bookkeeping), which no cost model fitted on
``execute`` contains.
"""
from __future__ import annotations

import math
import time


class RecordingExecutor:
    """Forwards to ``inner`` (attributes included) and appends one dict per ``execute`` to ``rows``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.rows: list[dict] = []
        self._last_exit: float | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, output):
        entry = time.perf_counter()
        gap = math.nan if self._last_exit is None else entry - self._last_exit
        result = self.inner.execute(output)
        self._last_exit = time.perf_counter()
        self.rows.append(dict(chunks=list(output.prefill_chunks), decodes=list(output.decode_context_lens),
                              step_time=result.step_time, swap_time=result.swap_time,
                              recompute_tokens=output.num_recompute_tokens, gap_s=gap))
        return result
