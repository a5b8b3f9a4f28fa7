"""Fuzzed scheduler interface (issue #8): extreme request mixes through every scheduler in conf/scheduler.

``tests/heuristics/test_contract.py`` checks the per-step contract on moderate random workloads; this module
pushes the inputs to their edges and checks that the run still ends cleanly:

* lengths from 1 token to 2^31, past ``max_model_len`` and past the whole KV cache;
* SLOs from 1 ns to infinity, per request (0 too: a ``Request`` accepts it, only ``SLOClass`` refuses it);
* bursts (many requests at one timestamp), arrivals at 0 and after huge idle gaps;
* KV caches of one block to 100,000 blocks, block sizes 1 to 32, ``max_num_seqs`` 1 to 256, tiny
  ``max_model_len``.

Building a scheduler may raise ``ConfigError`` (e.g. a cache too small for Orca's per-request reservation); the
run itself raises nothing. Every request ends finished with all its tokens or rejected with a reason, the
per-step contract holds (``CheckingExecutor``), and every KV block is free at the end. The Oracle runs with
``time_limit_s`` null so that its results do not depend on the machine's speed.

``HYPOTHESIS_PROFILE=long`` (tests/conftest.py) runs thousands of examples per scheduler; see README, "Fuzzing".
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import ConfigError
from runtime.core.request import Request, RequestStatus
from tests.conftest import create_block_manager, create_scheduler, scheduler_names
from tests.heuristics.test_contract import CheckingExecutor

SCHEDULERS = scheduler_names()


class RequestList:
    """A ``RequestSource`` over ready-made requests (any SLO a ``Request`` accepts), sorted by arrival."""

    def __init__(self, requests: list[Request]) -> None:
        self._requests = sorted(requests, key=lambda r: r.arrival_time)
        self._cursor = 0

    def has_pending(self) -> bool:
        return self._cursor < len(self._requests)

    def next_arrival_time(self) -> float:
        return self._requests[self._cursor].arrival_time if self.has_pending() else float("inf")

    def arrivals_until(self, now: float) -> list[Request]:
        start = self._cursor
        while self._cursor < len(self._requests) and self._requests[self._cursor].arrival_time <= now:
            self._cursor += 1
        return self._requests[start:self._cursor]

    def __len__(self) -> int:
        return len(self._requests)


# Mostly short, now and then at an edge: a block boundary, max_model_len, past it, past any cache. (Long outputs
# are kept rare: each output token is a step, and the Oracle solves a MILP per step.)
EDGES = [1, 2, 15, 16, 17, 511, 512, 513, 4095, 4096, 4097, 2**20, 2**31]
prompt_lengths = st.one_of(st.integers(1, 64), st.integers(1, 1200), st.sampled_from(EDGES))
output_lengths = st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(1, 200), st.sampled_from(EDGES))
slos = st.sampled_from([0.0, 1e-9, 1e-3, 0.05, 1.0, 10.0, 1e9, float("inf")])
gaps = st.one_of(st.just(0.0), st.just(0.0), st.floats(0.0, 0.1), st.floats(0.0, 5.0), st.sampled_from([1e6]))


@st.composite
def request_mix(draw) -> list[Request]:
    num_requests = draw(st.integers(1, 24))
    burst = draw(st.booleans())  # every request at one timestamp
    t, requests = draw(st.sampled_from([0.0, 1e-9, 3.0])), []
    for i in range(num_requests):
        if not burst:
            t += draw(gaps)
        cls = draw(st.sampled_from(["tight", "loose"]))
        requests.append(Request(f"r{i}", arrival_time=t, num_prompt_tokens=draw(prompt_lengths),
                                max_tokens=draw(output_lengths),
                                app=draw(st.sampled_from(["chat", "summ"])), slo_class=cls,
                                ttft_slo_s=draw(slos), tbt_slo_s=draw(slos)))
    return requests


engines = st.fixed_dictionaries({
    "num_blocks": st.one_of(st.integers(1, 8), st.integers(8, 400), st.sampled_from([100_000])),
    "block_size": st.sampled_from([1, 8, 16, 32]),
    "max_num_seqs": st.one_of(st.integers(1, 4), st.sampled_from([16, 256])),
    "max_model_len": st.sampled_from([2, 64, 512, 512, 4096, 4096]),
    "num_swap_blocks": st.sampled_from([0, 4, 1000]),
    "watermark": st.sampled_from([0.0, 0.01, 0.5]),
})


def _training() -> pd.DataFrame:
    """A training split for the learnt output-length predictors (CacheOPT): short requests of both apps."""
    rng = np.random.default_rng(0)
    apps = rng.integers(0, 2, 64)
    return pd.DataFrame({"app": np.array(["chat", "summ"])[apps], "slo_class": np.array(["tight", "loose"])[apps],
                         "num_prompt_tokens": rng.integers(1, 600, 64), "num_output_tokens": rng.integers(1, 64, 64)})


TRAINING = _training()


def _event(value: str) -> None:
    """``hypothesis.event`` inside a hypothesis test (statistics: ``--hypothesis-show-statistics``), else nothing."""
    if currently_in_test_context():
        event(value)


def _run(name: str, requests: list[Request], engine: dict) -> None:
    bm = create_block_manager(num_blocks=engine["num_blocks"], block_size=engine["block_size"],
                              watermark=engine["watermark"], num_swap_blocks=engine["num_swap_blocks"])
    overrides = {"time_limit_s": None} if name == "oracle" else {}
    try:
        scheduler = create_scheduler(name, block_manager=bm, max_model_len=engine["max_model_len"],
                                     max_num_seqs=engine["max_num_seqs"], **overrides)
    except ConfigError as error:  # documented: an impossible engine for this policy, named by its key
        _event(f"ConfigError: {str(error)[:50]}")
        return
    if hasattr(scheduler, "calibrate"):
        scheduler.calibrate(TRAINING)
    result = Engine(scheduler=scheduler, executor=CheckingExecutor(scheduler, bm), workload=RequestList(requests),
                    clock=VirtualClock()).run()
    assert len(result.requests) == len(requests)
    assert not scheduler.has_unfinished_requests()
    assert bm.num_used_blocks == 0, "blocks leaked"
    assert bm.num_free_cpu_blocks == bm.num_swap_blocks, "swap blocks leaked"
    bm.check_invariants()
    num_rejected = 0
    for r in result.requests:
        assert r.is_finished, r.req_id
        total = r.num_prompt_tokens + r.max_tokens
        if r.status == RequestStatus.FINISHED_REJECTED:
            num_rejected += 1
            assert r.rejection_reason, r.req_id
        else:
            assert total <= engine["max_model_len"] and bm.can_fit_ever(total), "served a request that cannot fit"
            assert r.num_output_tokens == r.max_tokens == len(r.token_times)
            assert r.token_times == sorted(r.token_times) and r.token_times[0] > r.arrival_time
    _event("all rejected" if num_rejected == len(requests) else "some served")


# Eight schedulers: in CI (profile "ci", 40 examples) each gets half the profile's examples; other profiles
# (HYPOTHESIS_PROFILE=long, tests/conftest.py) run their full count for each.
# The Oracle solves a MILP every step (about 1 s per example here), so in CI it gets a quarter of that.
_EXAMPLES = _ORACLE_EXAMPLES = settings.default.max_examples
if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
    _EXAMPLES, _ORACLE_EXAMPLES = max(10, _EXAMPLES // 2), max(5, _EXAMPLES // 8)
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=_EXAMPLES, suppress_health_check=_HEALTH)
ORACLE_FUZZ = settings(max_examples=_ORACLE_EXAMPLES, suppress_health_check=_HEALTH)


@pytest.mark.parametrize("name", [name for name in SCHEDULERS if name != "oracle"])
@FUZZ
@given(requests=request_mix(), engine=engines)
def test_extreme_request_mixes_end_cleanly(name, requests, engine):
    _run(name, requests, engine)


@ORACLE_FUZZ
@given(requests=request_mix(), engine=engines)
def test_oracle_on_extreme_request_mixes_ends_cleanly(requests, engine):
    _run("oracle", requests, engine)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_burst_past_every_limit(name):
    # One timestamp: a request that fits, one past max_model_len, one past the KV cache, one of 2^31 tokens.
    requests = [Request(f"r{i}", arrival_time=0.0, num_prompt_tokens=p, max_tokens=o, ttft_slo_s=s, tbt_slo_s=s)
                for i, (p, o, s) in enumerate([(100, 20, 1e-9), (500, 20, 0.0), (200, 200, 1e9), (2**31, 1, 1.0),
                                               (1, 1, float("inf"))])]
    _run(name, requests, {"num_blocks": 20, "block_size": 16, "max_num_seqs": 4, "max_model_len": 512,
                          "num_swap_blocks": 4, "watermark": 0.01})
