"""Keep Python's cyclic garbage collector from stalling live steps.

A live run's process holds ~363,000 Python objects before its first request (torch, Hydra, pandas, the model), and
a full (generation-2) collection walks all of them: 100–160 ms on a 2-core Xeon, up to twice in a 600-request run
of ``workload=live_small``. Wherever it lands in the engine loop, inside a step or between two, every running
request's next token waits: a 40× slowdown of a 3 ms decode, which the scheduler did not cause and a cost model
cannot predict (``bench/sim_vs_live.py`` found the same step of the same run 185 and 196 ms long in two runs an
hour apart: when the collector runs depends only on what the process allocated; ``bench/live_gc_stalls.py``).
vLLM freezes its heap after start-up for the same reason.

``frozen_heap()`` collects once, then ``gc.freeze()``s every object alive for the duration: collections still
run, and still free what the run itself leaves behind, but no longer walk the start-up heap. ``gc.unfreeze()``
afterwards hands those objects back to the collector, so a notebook that runs many experiments leaks nothing.
Nested uses freeze once.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0


@contextmanager
def frozen_heap() -> Iterator[None]:
    global _depth
    if _depth == 0:
        gc.collect()
        gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
