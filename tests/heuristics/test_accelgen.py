"""AccelGen's three components on small hand-built states, and its guarantee on random workloads.

Cost model (tests/conftest.py): T̂ = 5 ms + 0.1 ms/token + attention + 10 µs/seq; classes tight (TTFT 1 s, TBT 50 ms)
and loose (TTFT 10 s, TBT 500 ms). With margin 0.05 a tight batch is capped at 47.5 ms (~400 prefill tokens), a
loose one at 475 ms (thousands).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.errors import ConfigError
from runtime.core.outputs import StepResult
from runtime.core.request import Request, RequestStatus
from runtime.sim.executor import SimExecutor
from runtime.sim.workload import Workload
from tests.conftest import create_block_manager, create_cost_model, create_scheduler, create_slo_classes

CLASSES = create_slo_classes()
MARGIN = 0.95  # 1 - margin at the shipped default


def request(req_id, cls, *, prompt, out, at=0.0):
    c = CLASSES[cls]
    return Request(req_id, arrival_time=at, num_prompt_tokens=prompt, max_tokens=out, slo_class=cls,
                   ttft_slo_s=c.ttft_slo_s, tbt_slo_s=c.tbt_slo_s)


def make(num_blocks=4096, watermark=0.0, **overrides):
    bm = create_block_manager(num_blocks=num_blocks, block_size=16, watermark=watermark)
    return create_scheduler("accelgen", block_manager=bm, cost_model=create_cost_model(), slo_classes=CLASSES,
                            **overrides)


def step(s, now):
    """One step: schedule at ``now``, run for the predicted time; returns (output, end time)."""
    out = s.schedule(now)
    end = now + s.last_plan.predicted_s
    s.update_from_output(out, StepResult(sampled_token_ids={}, step_time=s.last_plan.predicted_s), end)
    return out, end


# Component 1: the budget follows the tightest SLO in the batch ---------------------------------------------------
def test_budget_shrinks_when_a_tight_request_joins_and_grows_back_when_only_loose_remain():
    s = make()
    for r in (request("l0", "loose", prompt=16, out=60), request("l1", "loose", prompt=16, out=60)):
        s.add_request(r)
    now = 0.0
    for _ in range(3):
        _, now = step(s, now)
    loose_budget = s.last_plan.budget_tokens
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.5)
    s.add_request(request("t0", "tight", prompt=16, out=3, at=now))
    _, now = step(s, now)  # t0 prefills: its own cap bounds the step
    _, now = step(s, now)  # t0 decodes: the decodes' cap is now the tight one
    tight_budget = s.last_plan.budget_tokens
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.05)
    assert tight_budget < loose_budget / 4
    while "t0" in s.requests:
        _, now = step(s, now)
    _, now = step(s, now)
    assert s.last_plan.budget_tokens > 4 * tight_budget
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.5)
    # The budget is the largest fresh chunk within the cap: one aligned chunk more would break it.
    model = create_cost_model()
    ctx = [r.num_computed_tokens + 1 for r in s.decoding]
    budget = s.last_plan.budget_tokens
    assert model.predict([(budget, 0)], ctx) <= s.last_plan.cap_s < model.predict([(budget + 32, 0)], ctx)


def test_chunks_are_sized_to_the_tightest_member_and_the_batch_meets_it():
    s = make()
    s.add_request(request("t0", "tight", prompt=3000, out=4))
    out, _ = step(s, 0.0)
    (c, q), = out.prefill_chunks
    assert c % 32 == 0 and 32 <= c < 3000
    model = create_cost_model()
    assert model.predict([(c, 0)], []) <= MARGIN * 0.05 < model.predict([(c + 32, 0)], [])


def test_without_dynamic_chunking_the_budget_is_fixed():
    s = make(dynamic_chunking=False, token_budget=256)
    s.add_request(request("l0", "loose", prompt=3000, out=4))
    out, _ = step(s, 0.0)
    assert s.token_budget == 256 and out.num_scheduled_tokens == {"l0": 256}
    auto = make(dynamic_chunking=False)
    assert auto.token_budget == create_scheduler("sarathi", cost_model=create_cost_model(),
                                                 slo_classes=CLASSES).token_budget


# Component 2: slack order and similar-SLO groups -----------------------------------------------------------------
def test_least_slack_first_and_fcfs_without_priority():
    # The loose request arrived first; the tight one has far less slack. One tight-capped step holds only one.
    def first_step(**overrides):
        s = make(**overrides)
        s.add_request(request("loose", "loose", prompt=3000, out=4, at=0.0))
        s.add_request(request("tight", "tight", prompt=3000, out=4, at=0.0))
        out, _ = step(s, 0.0)
        return out

    assert first_step().prefill_req_ids == ["tight"]
    assert first_step(multi_resource=False).prefill_req_ids == ["tight"]
    fcfs = first_step(slo_priority=False)
    assert fcfs.prefill_req_ids[0] == "loose"


def test_slack_accounts_for_remaining_prefill_time():
    s = make()
    short = request("short", "tight", prompt=64, out=4, at=0.0)
    long = request("long", "tight", prompt=4000, out=4, at=0.0)
    s.add_request(short)
    s.add_request(long)
    # Same deadline, but the long prompt needs ~10 capped iterations: less slack.
    assert s.slack(long, 0.0) < s.slack(short, 0.0) < 1.0
    out, _ = step(s, 0.0)
    assert out.prefill_req_ids[0] == "long"


def test_a_tight_request_does_not_shrink_a_loose_batch_unless_it_is_urgent():
    def step_with(urgent_frac):
        s = make(urgent_frac=urgent_frac)
        for r in (request("l0", "loose", prompt=16, out=200), request("l1", "loose", prompt=16, out=200)):
            s.add_request(r)
        now = 0.0
        for _ in range(2):
            _, now = step(s, now)
        # Anchor: a loose prompt waiting since t=0 (deadline 10 s, slack ~0.47 s at t=9.5) vs a tight prompt that
        # just arrived (deadline 10.5 s, slack ~0.87 s once its three capped chunks are counted).
        s.add_request(request("lp", "loose", prompt=200, out=4, at=0.0))
        s.add_request(request("tp", "tight", prompt=1000, out=4, at=9.5))
        out, _ = step(s, 9.5)
        return s, out

    s, out = step_with(0.0)  # not urgent: left out, so the loose batch keeps its loose cap
    assert out.num_scheduled_tokens == {"l0": 1, "l1": 1, "lp": 200}
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.5)
    s, out = step_with(0.99)  # urgent: it joins after the least-slack one, and its cap bounds the whole batch
    assert out.prefill_req_ids == ["lp", "tp"] and out.num_scheduled_tokens["tp"] >= 32
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.05)
    assert s.last_plan.predicted_s <= MARGIN * 0.05


def test_lost_requests_are_served_after_feasible_ones():
    def first_step(demote):
        s = make(demote_lost=demote)
        s.add_request(request("late", "tight", prompt=3000, out=4, at=0.0))   # TTFT deadline 1 s: lost at t=5
        s.add_request(request("fresh", "tight", prompt=3000, out=4, at=4.9))
        out, _ = step(s, 5.0)
        return out.prefill_req_ids

    assert first_step(True) == ["fresh"]
    assert first_step(False) == ["late"]


def test_victim_is_the_running_request_with_most_slack():
    def preempted(victim_rule):
        # 5 blocks: a (16 tokens) needs a second block at its first decode; b and c hold two each.
        s = make(num_blocks=5, multi_resource=False, preempt_victim=victim_rule)
        # Decode order (deadlines): a (50 ms), c (200 ms), b (500 ms); arrival order b, a, c.
        s.add_request(request("b", "loose", prompt=20, out=8, at=0.0))
        s.add_request(request("a", "tight", prompt=16, out=8, at=0.001))
        c = request("c", "tight", prompt=20, out=8, at=0.002)
        c.tbt_slo_s = 0.2
        s.add_request(c)
        _, now = step(s, 0.0)
        out, _ = step(s, now)
        return out.preempted_req_ids

    assert preempted("largest_slack") == ["b"]
    assert preempted("latest_arrival") == ["c"]


# Component 3: multi-resource packing -----------------------------------------------------------------------------
def test_kv_aware_selection_packs_the_cache_better_than_first_fit():
    def first_step(multi_resource):
        s = make(num_blocks=10, kv_headroom=0.0, len_estimator="oracle", multi_resource=multi_resource)
        s.add_request(request("small", "loose", prompt=40, out=2, at=0.0))    # 3 blocks, less slack
        s.add_request(request("large", "loose", prompt=120, out=2, at=0.5))   # 8 blocks
        out = s.schedule(0.5)
        return out, s.block_manager.num_used_blocks

    (packed, packed_blocks), (fcfs, fcfs_blocks) = first_step(True), first_step(False)
    assert packed.prefill_req_ids == ["large"] and packed_blocks == 8
    assert fcfs.prefill_req_ids == ["small"] and fcfs_blocks == 3
    assert packed.num_prefill_tokens > fcfs.num_prefill_tokens


def test_projected_kv_guard_with_true_lengths_never_preempts():
    rng = np.random.default_rng(3)
    n = 60

    def run(**overrides):
        wl = Workload(name="kv", arrival_time=np.sort(rng.uniform(0, 1, n)), num_prompt_tokens=rng.integers(50, 300, n),
                      num_output_tokens=rng.integers(50, 300, n), app_index=rng.integers(0, 2, n),
                      apps=["chat", "summ"], app_slo_classes=["tight", "loose"], slo_classes=CLASSES)
        s = make(num_blocks=120, watermark=0.01, **overrides)
        result = Engine(scheduler=s, executor=SimExecutor(cost_model=create_cost_model()), workload=wl,
                        clock=VirtualClock()).run()
        assert all(r.status == RequestStatus.FINISHED_STOPPED for r in result.requests)
        return s.num_preemptions

    state = rng.bit_generator.state
    assert run(len_estimator="oracle") == 0
    rng.bit_generator.state = state
    assert run(multi_resource=False) > 0


# The guarantee, on random workloads ------------------------------------------------------------------------------
class GuaranteeExecutor(SimExecutor):
    """Checks, before each step, that a batch with a prefill chunk meets the tightest cap of its members."""

    def __init__(self, scheduler):
        super().__init__(cost_model=create_cost_model())
        self.s, self.capped, self.forced = scheduler, 0, 0

    def execute(self, output):
        s, model = self.s, create_cost_model()
        predicted = model.predict(output.prefill_chunks, output.decode_context_lens)
        assert predicted == pytest.approx(s.last_plan.predicted_s)
        members = [s.requests[i] for i in output.num_scheduled_tokens]
        if output.prefill_chunks and not s.last_plan.forced:
            # Every member counts, except a decode whose SLO even the decodes alone exceed (no batch holding the
            # running decodes could meet it).
            decode_only = model.predict([], output.decode_context_lens)
            bounded = [s.requests[i].tbt_slo_s for i in output.prefill_req_ids] + [
                s.requests[i].tbt_slo_s for i in output.decode_req_ids if MARGIN * s.requests[i].tbt_slo_s >= decode_only]
            assert predicted <= MARGIN * min(bounded) + 1e-12
            self.capped += 1
        if s.last_plan.forced:
            # Only when no chunk of any candidate could meet its own cap alone.
            self.forced += 1
            assert not output.decode_context_lens and len(output.prefill_chunks) == 1
            (c, q), = output.prefill_chunks
            assert model.predict([(c, q)], []) > MARGIN * members[0].tbt_slo_s
        return super().execute(output)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40), rate=st.floats(1.0, 300.0),
       num_blocks=st.integers(80, 600), max_prompt=st.integers(1, 3000), max_output=st.integers(1, 60),
       tight_tbt=st.sampled_from([0.002, 0.02, 0.05]))
def test_every_batch_with_a_prefill_meets_its_tightest_slo(seed, n, rate, num_blocks, max_prompt, max_output,
                                                           tight_tbt):
    rng = np.random.default_rng(seed)
    classes = dict(CLASSES)
    classes["tight"] = type(CLASSES["tight"])("tight", ttft_slo_s=1.0, tbt_slo_s=tight_tbt)
    wl = Workload(name="random", arrival_time=np.cumsum(rng.exponential(1.0 / rate, n)),
                  num_prompt_tokens=rng.integers(1, max_prompt + 1, n), num_output_tokens=rng.integers(1, max_output + 1, n),
                  app_index=rng.integers(0, 2, n), apps=["chat", "summ"], app_slo_classes=["tight", "loose"],
                  slo_classes=classes)
    bm = create_block_manager(num_blocks=num_blocks, block_size=16, watermark=0.01)
    s = create_scheduler("accelgen", block_manager=bm, cost_model=create_cost_model(), slo_classes=classes)
    executor = GuaranteeExecutor(s)
    result = Engine(scheduler=s, executor=executor, workload=wl, clock=VirtualClock()).run()
    assert all(r.is_finished for r in result.requests)
    # The iteration log carries each step's cap: with an exact predictor no capped step overran it.
    steps = result.iterations.to_frame()
    capped = steps[steps.step_cap_s.notna() & (steps.prefill_tokens > 0)]
    assert (capped.duration_s <= capped.step_cap_s + 1e-12).all()
    if tight_tbt == 0.002:  # below T̂'s 5 ms floor: no tight chunk is ever feasible, yet every request finishes
        tight = [r for r in result.requests if r.slo_class == "tight" and r.status == RequestStatus.FINISHED_STOPPED]
        assert executor.forced > 0 or not tight


def test_an_slo_below_any_step_time_still_completes_by_forced_minimal_chunks():
    classes = {"x": type(CLASSES["tight"])("x", ttft_slo_s=1.0, tbt_slo_s=0.001)}
    bm = create_block_manager(num_blocks=64)
    s = create_scheduler("accelgen", block_manager=bm, cost_model=create_cost_model(), slo_classes=classes)
    r = Request("r", arrival_time=0.0, num_prompt_tokens=100, max_tokens=2, slo_class="x", ttft_slo_s=1.0,
                tbt_slo_s=0.001)
    s.add_request(r)
    out, now = step(s, 0.0)
    assert s.last_plan.forced and out.num_scheduled_tokens == {"r": 32}
    while not r.is_finished:
        out, now = step(s, now)
    assert r.num_output_tokens == 2


# The predictor is an injected dependency ------------------------------------------------------------------------
class PredictOnly:
    """A CostModel with only ``predict`` (no O(1) sums path), like an arbitrary fitted profile."""

    def __init__(self):
        self.inner = create_cost_model()
        self.calls = 0

    def predict(self, chunks, ctx):
        self.calls += 1
        return self.inner.predict(chunks, ctx)


def test_a_predict_only_latency_model_gives_the_same_schedule():
    rng = np.random.default_rng(11)
    n = 40
    arrays = dict(arrival_time=np.cumsum(rng.exponential(0.02, n)), num_prompt_tokens=rng.integers(1, 2000, n),
                  num_output_tokens=rng.integers(1, 50, n), app_index=rng.integers(0, 2, n))

    def run(model):
        wl = Workload(name="w", apps=["chat", "summ"], app_slo_classes=["tight", "loose"], slo_classes=CLASSES,
                      **arrays)
        s = create_scheduler("accelgen", block_manager=create_block_manager(num_blocks=800), cost_model=model,
                             slo_classes=CLASSES)
        result = Engine(scheduler=s, executor=SimExecutor(cost_model=create_cost_model()), workload=wl,
                        clock=VirtualClock()).run()
        return [r.token_times for r in result.requests]

    slow = PredictOnly()
    assert run(slow) == run(create_cost_model())
    assert slow.calls > 0


@pytest.mark.parametrize("overrides, key", [
    ({"margin": 1.0}, "margin"), ({"group_by": "app"}, "group_by"), ({"len_estimator": "magic"}, "len_estimator"),
    ({"preempt_victim": "random"}, "preempt_victim"), ({"slo_semantics": "wall"}, "slo_semantics"),
    ({"dynamic_chunking": False, "token_budget": 16}, "token_budget"), ({"max_budget": 16}, "max_budget"),
    ({"scan_limit": 0}, "scan_limit"), ({"kv_headroom": 1.0}, "kv_headroom"),
])
def test_bad_parameters_are_named_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make(**overrides)


# Each switch off falls back to Sarathi-Serve; all three off is Sarathi-Serve, step for step ---------------------
class RecordingExecutor(SimExecutor):
    def __init__(self):
        super().__init__(cost_model=create_cost_model())
        self.steps = []

    def execute(self, output):
        self.steps.append((dict(output.num_scheduled_tokens), list(output.preempted_req_ids)))
        return super().execute(output)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 50), rate=st.floats(1.0, 500.0), num_blocks=st.integers(40, 300),
       max_num_seqs=st.integers(1, 12), max_prompt=st.integers(1, 600), budget=st.sampled_from([32, 64, 256]))
def test_with_every_component_off_it_is_sarathi_step_for_step(seed, n, rate, num_blocks, max_num_seqs, max_prompt,
                                                              budget):
    def run(name, **overrides):
        rng = np.random.default_rng(seed)
        wl = Workload(name="w", arrival_time=np.cumsum(rng.exponential(1.0 / rate, n)),
                      num_prompt_tokens=rng.integers(1, max_prompt + 1, n), num_output_tokens=rng.integers(1, 60, n),
                      app_index=rng.integers(0, 2, n), apps=["chat", "summ"], app_slo_classes=["tight", "loose"],
                      slo_classes=CLASSES)
        bm = create_block_manager(num_blocks=num_blocks, block_size=8, watermark=0.01)
        s = create_scheduler(name, block_manager=bm, cost_model=create_cost_model(), slo_classes=CLASSES,
                             max_num_seqs=max_num_seqs, max_model_len=1024, token_budget=budget, **overrides)
        executor = RecordingExecutor()
        result = Engine(scheduler=s, executor=executor, workload=wl, clock=VirtualClock()).run()
        return executor.steps, [r.token_times for r in result.requests]

    sarathi = run("sarathi")
    accelgen = run("accelgen", dynamic_chunking=False, slo_priority=False, multi_resource=False)
    assert accelgen == sarathi


def test_a_short_final_remainder_still_joins_a_full_batch():
    s = make()
    s.add_request(request("long", "tight", prompt=400, out=4, at=0.0))
    s.add_request(request("tail", "tight", prompt=8, out=4, at=0.0))
    out, _ = step(s, 0.0)
    # No 32-token chunk fits after the first one, but the whole 8-token prompt does.
    assert out.num_scheduled_tokens.get("tail") == 8
    assert s.last_plan.predicted_s <= MARGIN * 0.05


def test_decodes_are_served_in_deadline_order_and_fcfs_without_priority():
    def decode_order(**overrides):
        s = make(**overrides)
        s.add_request(request("loose", "loose", prompt=8, out=20, at=0.0))
        s.add_request(request("tight", "tight", prompt=8, out=20, at=0.001))
        now = 0.001
        for _ in range(2):
            out, now = step(s, now)
        return out.decode_req_ids

    assert decode_order() == ["tight", "loose"]
    assert decode_order(slo_priority=False) == ["loose", "tight"]


def test_no_new_request_is_admitted_in_a_step_that_preempted():
    s = make(num_blocks=5, multi_resource=False)
    s.add_request(request("a", "tight", prompt=16, out=8, at=0.0))
    s.add_request(request("b", "loose", prompt=20, out=8, at=0.0))
    s.add_request(request("c", "tight", prompt=20, out=8, at=0.0))
    _, now = step(s, 0.0)
    s.add_request(request("d", "tight", prompt=4, out=2, at=now))
    out, _ = step(s, now)
    assert out.preempted_req_ids and "d" not in out.num_scheduled_tokens and s.requests["d"].status == RequestStatus.WAITING


def test_packing_weights_steer_the_choice_between_compute_and_kv_demand():
    def first(**weights):
        s = make(len_estimator="oracle", **weights)
        s.add_request(request("compute", "loose", prompt=1000, out=2, at=0.0))    # 1000 tokens, 63 blocks
        s.add_request(request("memory", "loose", prompt=200, out=3000, at=0.0))   # 200 tokens, 200 blocks
        out, _ = step(s, 0.0)
        return out.prefill_req_ids[0]

    assert first(w_comp=1.0, w_kv=0.0) == "compute"
    assert first(w_comp=0.0, w_kv=1.0) == "memory"


def test_a_decode_whose_slo_no_step_can_meet_does_not_block_prefills():
    s = make()
    hopeless = request("hopeless", "tight", prompt=8, out=50, at=0.0)
    hopeless.tbt_slo_s = 0.001  # below T̂'s 5 ms floor
    s.add_request(hopeless)
    _, now = step(s, 0.0)
    s.add_request(request("loose", "loose", prompt=2000, out=4, at=now))
    out, _ = step(s, now)
    assert out.num_scheduled_tokens.get("loose", 0) > 1000
    assert s.last_plan.cap_s == pytest.approx(MARGIN * 0.5)
