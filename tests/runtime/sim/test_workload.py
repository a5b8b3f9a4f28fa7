from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runtime.core.errors import ConfigError, WorkloadError
from runtime.core.interface import RequestSource
from runtime.core.request import SLOClass
from runtime.sim.workload import (
    Workload,
    apply_length_policy,
    length_trace_workload,
    mixed_workload,
    trace_workload,
)

REPO_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
WORKLOAD_CONF = REPO_ROOT / "conf" / "workload"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")

SLO = {
    "tight": SLOClass("tight", ttft_slo_s=1.0, tbt_slo_s=0.05),
    "medium": SLOClass("medium", ttft_slo_s=2.0, tbt_slo_s=0.1),
    "loose": SLOClass("loose", ttft_slo_s=5.0, tbt_slo_s=0.25),
}
APPS = {
    "chat": {"lengths": "azure_conv", "slo_class": "tight", "weight": 0.5},
    "code": {"lengths": "azure_code", "slo_class": "medium", "weight": 0.25},
    "summarization": {"lengths": "arxiv", "slo_class": "loose", "weight": 0.25},
}


def _mixed(**overrides) -> Workload:
    kwargs = dict(name="mixed", num_requests=2000, arrival={"process": "poisson", "rate": 5.0}, applications=APPS,
                  slo_classes=SLO, max_model_len=4096, seed=0)
    return mixed_workload(**{**kwargs, **overrides})


def _small(times, prompts=None, outputs=None) -> Workload:
    n = len(times)
    return Workload(
        name="small", arrival_time=np.asarray(times, float),
        num_prompt_tokens=np.full(n, 10) if prompts is None else prompts,
        num_output_tokens=np.full(n, 3) if outputs is None else outputs,
        app_index=np.arange(n) % 2, apps=["a", "b"], app_slo_classes=["tight", "loose"], slo_classes=SLO,
    )


def _write_azure(tmp_path: Path, times: list[float], prompt: int = 100, output: int = 10) -> Path:
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{prompt},{output}\n" for t in times))
    return path


# Workload --------------------------------------------------------------------------------------------------------
def test_arrivals_until_releases_each_request_once_in_order():
    w = _small([0.5, 1.0, 1.0, 2.5, 4.0])
    assert isinstance(w, RequestSource)
    assert len(w) == w.num_requests == 5
    assert w.next_arrival_time() == 0.5
    assert w.arrivals_until(0.4) == []
    got = [r.req_id for r in w.arrivals_until(1.0)]
    assert got == ["r0", "r1", "r2"]
    assert w.arrivals_until(1.0) == []
    assert w.next_arrival_time() == 2.5
    rest = w.arrivals_until(100.0)
    assert [r.req_id for r in rest] == ["r3", "r4"]
    assert not w.has_pending() and w.next_arrival_time() == float("inf")
    w.reset()
    assert w.has_pending() and len(w.arrivals_until(float("inf"))) == 5


def test_requests_carry_lengths_app_and_slo():
    w = _small([0.0, 1.0], prompts=np.array([7, 8]), outputs=np.array([2, 5]))
    r0, r1 = w.arrivals_until(1.0)
    assert (r0.arrival_time, r0.num_prompt_tokens, r0.max_tokens, r0.app, r0.slo_class) == (0.0, 7, 2, "a", "tight")
    assert (r0.ttft_slo_s, r0.tbt_slo_s) == (1.0, 0.05)
    assert (r1.app, r1.slo_class, r1.tbt_slo_s, r1.max_tokens) == ("b", "loose", 0.25, 5)
    frame = w.to_frame()
    assert frame["req_id"].tolist() == ["r0", "r1"] and frame["slo_class"].tolist() == ["tight", "loose"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(times=[]), "no requests"),
        (dict(times=[1.0, 0.5]), "request 1: arrival_time decreases"),
        (dict(times=[0.0, 1.0], prompts=np.array([1, 0])), "request 1: num_prompt_tokens"),
        (dict(times=[0.0], outputs=np.array([0])), "num_output_tokens"),
    ],
)
def test_workload_validation(kwargs, match):
    with pytest.raises(WorkloadError, match=match):
        _small(**kwargs)


def test_engine_style_loop_delivers_everything():
    w = _mixed(num_requests=500)
    delivered, now = [], 0.0
    while w.has_pending():
        now = max(now + 0.37, w.next_arrival_time()) if not delivered else now + 0.37
        batch = w.arrivals_until(now)
        assert all(r.arrival_time <= now for r in batch)
        delivered += batch
    assert [r.req_id for r in delivered] == [f"r{i}" for i in range(500)]
    times = [r.arrival_time for r in delivered]
    assert times == sorted(times)


# mixed_workload --------------------------------------------------------------------------------------------------
def test_mixed_is_seeded():
    a, b, c = _mixed(seed=1), _mixed(seed=1), _mixed(seed=2)
    for field in ("arrival_time", "num_prompt_tokens", "num_output_tokens", "app_index"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.num_prompt_tokens, c.num_prompt_tokens)
    assert not np.array_equal(a.arrival_time, c.arrival_time)


def test_mixed_rate_change_keeps_the_requests():
    slow, fast = _mixed(), _mixed(arrival={"process": "poisson", "rate": 10.0})
    np.testing.assert_array_equal(slow.num_prompt_tokens, fast.num_prompt_tokens)
    np.testing.assert_allclose(fast.arrival_time * 2.0, slow.arrival_time)


def test_mixed_weights_and_slo_classes():
    w = _mixed(num_requests=20_000)
    frame = w.to_frame()
    share = frame["app"].value_counts(normalize=True)
    assert share["chat"] == pytest.approx(0.5, abs=0.02)
    assert share["code"] == pytest.approx(0.25, abs=0.02)
    assert set(frame.groupby("app")["slo_class"].first().items()) == {
        ("chat", "tight"), ("code", "medium"), ("summarization", "loose")}
    # Code outputs are short (README: mean 27.9), chat outputs longer (211.1).
    means = frame.groupby("app")["num_output_tokens"].mean()
    assert means["code"] < 40 < 150 < means["chat"]
    assert w.num_requests / w.arrival_time[-1] == pytest.approx(5.0, rel=0.05)


def test_mixed_gamma_and_zero_weight():
    apps = {**APPS, "code": {**APPS["code"], "weight": 0.0}}
    w = _mixed(applications=apps, arrival={"process": "gamma", "rate": 5.0, "cv": 3.0})
    assert "code" not in set(w.to_frame()["app"])


def test_clip_policy_bounds_the_total_length():
    w = _mixed(num_requests=5000, max_model_len=2048)
    assert w.num_clipped > 0
    total = w.num_prompt_tokens + w.num_output_tokens
    assert total.max() <= 2048 and w.num_prompt_tokens.min() >= 1 and w.num_output_tokens.min() >= 1
    kept = _mixed(num_requests=5000, max_model_len=2048, length_policy="keep")
    assert kept.num_clipped == 0 and (kept.num_prompt_tokens + kept.num_output_tokens).max() > 2048


def test_apply_length_policy_rule():
    p, o, n = apply_length_policy(np.array([100, 5000, 10, 3000]), np.array([50, 10, 5000, 3000]), "clip", 4096)
    assert p.tolist() == [100, 4086, 1, 1096] and o.tolist() == [50, 10, 4095, 3000] and n == 3
    with pytest.raises(ConfigError, match="length_policy"):
        apply_length_policy(p, o, "truncate", 4096)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(num_requests=0), "num_requests"),
        (dict(applications={"chat": {**APPS["chat"], "slo_class": "gold"}}), "unknown SLO class 'gold'.*loose"),
        (dict(applications={"chat": {**APPS["chat"], "weight": -1.0}}), "chat.weight"),
        (dict(applications={"chat": {**APPS["chat"], "weight": 0.0}}), "sum to > 0"),
        (dict(applications={}), "empty"),
        (dict(applications={"chat": {**APPS["chat"], "lengths": "nope"}}), "unknown length table 'nope'"),
        (dict(applications={"chat": {"lengths": "arxiv"}}), "missing.*slo_class"),
        (dict(arrival={"process": "poisson", "rate": 0}), "arrival.rate"),
    ],
)
def test_mixed_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _mixed(**overrides)


# trace_workload --------------------------------------------------------------------------------------------------
def _trace(path, **overrides) -> Workload:
    kwargs = dict(name="t", path=path, slo_class="tight", app="conv", slo_classes=SLO, max_model_len=4096, seed=0)
    return trace_workload(**{**kwargs, **overrides})


def test_trace_replay_scaling_and_truncation(tmp_path):
    path = _write_azure(tmp_path, [10.0, 11.0, 12.0, 14.0, 18.0])
    np.testing.assert_allclose(_trace(path).arrival_time, [0.0, 1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(_trace(path, time_scale=0.5).arrival_time, [0.0, 0.5, 1.0, 2.0, 4.0])
    w = _trace(path, target_rate=2.5)
    assert len(w) / (w.arrival_time[-1] - w.arrival_time[0]) == pytest.approx(2.5)
    np.testing.assert_allclose(_trace(path, start_s=1.5, duration_s=3.0).arrival_time, [0.5, 2.5])
    np.testing.assert_allclose(_trace(path, max_requests=2).arrival_time, [0.0, 1.0])
    r = _trace(path).arrivals_until(0.0)[0]
    assert (r.app, r.slo_class, r.num_prompt_tokens, r.max_tokens) == ("conv", "tight", 100, 10)


def test_trace_errors(tmp_path):
    path = _write_azure(tmp_path, [0.0, 1.0], prompt=5000, output=10)
    assert _trace(path).num_clipped == 2
    with pytest.raises(WorkloadError, match="no requests left"):
        _trace(path, start_s=100.0)
    with pytest.raises(ConfigError, match="either time_scale or target_rate"):
        _trace(path, time_scale=2.0, target_rate=1.0)
    with pytest.raises(ConfigError, match="unknown SLO class 'gold'"):
        _trace(path, slo_class="gold")
    with pytest.raises(WorkloadError, match="missing.*needs the real traces in ../shared/data.*sharegpt"):
        _trace(tmp_path / "absent.csv")


@needs_data
@pytest.mark.data
def test_real_trace_replay():
    path = SHARED_DATA / "traces/azure2023/AzureLLMInferenceTrace_code.csv"
    w = _trace(path, slo_class="medium", app="code", target_rate=1.0, max_requests=1000)
    assert len(w) == 1000
    assert len(w) / (w.arrival_time[-1] - w.arrival_time[0]) == pytest.approx(1.0)
    assert (w.num_prompt_tokens + w.num_output_tokens).max() <= 4096


# length_trace_workload -------------------------------------------------------------------------------------------
def test_length_trace_workload(tmp_path):
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{10 * i},{i}\n" for i in range(1, 21)))
    kwargs = dict(name="l", path=path, app="chat", slo_class="tight", arrival={"rate": 2.0}, slo_classes=SLO,
                  max_model_len=4096)
    in_order = length_trace_workload(**kwargs, num_requests=5, order="file", seed=0)
    assert in_order.num_output_tokens.tolist() == [1, 2, 3, 4, 5]
    a = length_trace_workload(**kwargs, num_requests=50, seed=3)
    b = length_trace_workload(**kwargs, num_requests=50, seed=3)
    np.testing.assert_array_equal(a.num_prompt_tokens, b.num_prompt_tokens)
    assert np.all(a.num_prompt_tokens == 10 * a.num_output_tokens)
    assert len(length_trace_workload(**kwargs, seed=0)) == 20
    with pytest.raises(ConfigError, match="exceeds the 20 rows"):
        length_trace_workload(**kwargs, num_requests=21, order="file", seed=0)


# Training split --------------------------------------------------------------------------------------------------
TRAIN_COLUMNS = ["app", "slo_class", "num_prompt_tokens", "num_output_tokens"]


def test_mixed_training_split_leaves_the_replay_unchanged():
    base = _mixed(seed=5, num_train_requests=0)
    assert base.training_frame() is None
    for num_train in (1, 2000, 7000):
        w = _mixed(seed=5, num_train_requests=num_train)
        for field in ("arrival_time", "num_prompt_tokens", "num_output_tokens", "app_index"):
            np.testing.assert_array_equal(getattr(w, field), getattr(base, field))
        assert len(w.training_frame()) == num_train


def test_mixed_training_split_contents():
    w = _mixed(num_requests=2000, num_train_requests=3000, max_model_len=2048, seed=1)
    train = w.training_frame()
    assert list(train.columns) == TRAIN_COLUMNS and len(train) == 3000
    assert train["num_prompt_tokens"].dtype == np.int64 and train["num_output_tokens"].dtype == np.int64
    # A different stream from the replay, the same tables, weights, classes and length policy.
    replay = w.to_frame()
    assert not np.array_equal(train["num_output_tokens"].to_numpy()[:2000], replay["num_output_tokens"].to_numpy())
    assert train["app"].value_counts(normalize=True)["chat"] == pytest.approx(0.5, abs=0.04)
    assert set(train.groupby("app")["slo_class"].first().items()) == {
        ("chat", "tight"), ("code", "medium"), ("summarization", "loose")}
    means = train.groupby("app")["num_output_tokens"].mean()
    assert means["code"] < 40 < 150 < means["chat"]
    assert (train["num_prompt_tokens"] + train["num_output_tokens"]).max() <= 2048
    # Seeded: the same seed gives the same split, another seed another one; a copy is returned each time.
    np.testing.assert_array_equal(_mixed(num_train_requests=3000, max_model_len=2048, seed=1).training_frame(), train)
    assert not _mixed(num_train_requests=3000, seed=2).training_frame().equals(train)
    train.loc[0, "num_output_tokens"] = -1
    assert w.training_frame().loc[0, "num_output_tokens"] >= 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_num_train_requests_validation(bad, tmp_path):
    with pytest.raises(ConfigError, match="num_train_requests"):
        _mixed(num_train_requests=bad)
    with pytest.raises(ConfigError, match="num_train_requests"):
        _trace(_write_azure(tmp_path, [0.0, 1.0]), num_train_requests=bad)


def _write_numbered_azure(tmp_path: Path, n: int) -> Path:
    """Row i (0-based) arrives at i seconds with output i + 1 and prompt 10 (i + 1), so lengths name the row."""
    path = tmp_path / "numbered.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{i},{10 * (i + 1)},{i + 1}\n" for i in range(n)))
    return path


def test_trace_training_split_is_the_unreplayed_rows(tmp_path):
    path = _write_numbered_azure(tmp_path, 20)
    # Replay rows 8..11 (t in [8, 12)); the split prefers the latest rows before the window, then the rows after.
    w = _trace(path, start_s=8.0, duration_s=4.0, num_train_requests=10)
    assert w.num_output_tokens.tolist() == [9, 10, 11, 12]
    train = w.training_frame()
    assert list(train.columns) == TRAIN_COLUMNS
    assert train["num_output_tokens"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 13, 14]
    assert (train["num_prompt_tokens"] == 10 * train["num_output_tokens"]).all()
    assert set(train["app"]) == {"conv"} and set(train["slo_class"]) == {"tight"}
    assert not set(train["num_output_tokens"]) & set(w.num_output_tokens.tolist())
    # Fewer wanted than there are rows before: the ones just before the window.
    assert _trace(path, start_s=8.0, duration_s=4.0, num_train_requests=3).training_frame()[
        "num_output_tokens"].tolist() == [6, 7, 8]
    # max_requests: the rows past it are unreplayed too.
    w = _trace(path, max_requests=15, num_train_requests=100)
    assert w.training_frame()["num_output_tokens"].tolist() == [16, 17, 18, 19, 20]


def test_trace_training_split_absent(tmp_path):
    path = _write_numbered_azure(tmp_path, 6)
    assert _trace(path).training_frame() is None                       # the whole trace is replayed
    assert _trace(path, max_requests=3, num_train_requests=0).training_frame() is None


def test_trace_training_split_follows_the_length_policy(tmp_path):
    path = _write_azure(tmp_path, [0.0, 1.0, 2.0, 3.0], prompt=5000, output=10)
    train = _trace(path, max_requests=2).training_frame()
    assert train["num_prompt_tokens"].tolist() == [4086, 4086]
    assert _trace(path, max_requests=2, length_policy="keep").training_frame()["num_prompt_tokens"].tolist() == [5000] * 2


def test_length_trace_training_split(tmp_path):
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{10 * i},{i}\n" for i in range(1, 21)))
    kwargs = dict(name="l", path=path, app="chat", slo_class="tight", arrival={"rate": 2.0}, slo_classes=SLO,
                  max_model_len=4096)
    in_order = length_trace_workload(**kwargs, num_requests=5, order="file", seed=0, num_train_requests=4)
    assert in_order.training_frame()["num_output_tokens"].tolist() == [6, 7, 8, 9]
    sampled = length_trace_workload(**kwargs, num_requests=10, seed=3)
    train = sampled.training_frame()
    replayed = set(sampled.num_output_tokens.tolist())
    assert len(train) == 20 - len(replayed)
    assert not set(train["num_output_tokens"]) & replayed
    # The training split draws nothing: the replay is the same with or without it.
    np.testing.assert_array_equal(
        length_trace_workload(**kwargs, num_requests=10, seed=3, num_train_requests=0).num_output_tokens,
        sampled.num_output_tokens)
    assert length_trace_workload(**kwargs, order="file", seed=0).training_frame() is None


# Hydra configs ---------------------------------------------------------------------------------------------------
def _compose(name: str, shared_data: Path | str = SHARED_DATA):
    with initialize_config_dir(version_base="1.3", config_dir=str(WORKLOAD_CONF)):
        cfg = compose(config_name=name)
    # The root config defines paths.shared_data; stand in for it here.
    return OmegaConf.merge({"paths": {"shared_data": str(shared_data)}}, {"workload": cfg}).workload


@pytest.mark.parametrize("name", ["mixed", "mixed_gamma", "sharegpt", "arxiv"])
def test_table_configs_instantiate_without_data(name):
    w = instantiate(_compose(name, shared_data="/nonexistent"), slo_classes=SLO, max_model_len=4096, seed=0)
    assert isinstance(w, Workload) and w.name == name and len(w) == 1000
    r = w.arrivals_until(float("inf"))[0]
    assert r.ttft_slo_s == SLO[r.slo_class].ttft_slo_s


@needs_data
@pytest.mark.data
@pytest.mark.parametrize(("name", "rows"), [("azure_conv", 19366), ("azure_code", 8819)])
def test_trace_configs_instantiate(name, rows):
    w = instantiate(_compose(name), slo_classes=SLO, max_model_len=4096, seed=0)
    assert len(w) == rows


def test_trace_config_without_data_says_what_is_missing(tmp_path):
    # hydra wraps errors raised by a target in InstantiationException; the WorkloadError is its cause.
    with pytest.raises(Exception) as info:
        instantiate(_compose("azure_conv", shared_data=tmp_path), slo_classes=SLO, max_model_len=4096, seed=0)
    cause = info.value if isinstance(info.value, WorkloadError) else info.value.__cause__
    assert isinstance(cause, WorkloadError)
    assert "missing" in str(cause) and "shared/data" in str(cause)
