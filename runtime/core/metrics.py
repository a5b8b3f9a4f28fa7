"""Per-request and run-level metrics, exactly as defined in algorithms.md section 2.

Notation: ``R_arr`` every request that arrived (rejected ones included), ``R_fin`` the finished ones,
``D = t_end − t_start`` from the first arrival to the last completion.

* TTFT_r = τ_{r,1} − a_r;  TBT gaps δ_{r,i} = τ_{r,i+1} − τ_{r,i};  JCT_r = τ_{r,o_r} − a_r.
* meets TTFT: TTFT_r ≤ S^ttft_r.  meets TBT (``tbt_mode``): ``max`` — every gap ≤ S^tbt_r; ``percentile`` — the
  ``tbt_percentile`` percentile of r's own gaps ≤ S^tbt_r. With ``bound_prefill_iterations`` every iteration r took
  part in while prefilling must also last ≤ S^tbt_r; with o_r = 1 only that condition applies.
* meets SLO: finished ∧ meets TTFT ∧ meets TBT (rejected and unfinished requests never do).
* SLO attainment = |meets SLO| / |R_arr| (overall, per class; TTFT and TBT attainment likewise).
* throughput_rps = |R_fin| / D, throughput_tps = Σ_{R_fin} o_r / D (``throughput_total_tps`` adds prompts);
  goodput_rps = |meets SLO| / D, goodput_tps = Σ_{meets SLO} o_r / D.
* Tails use numpy's ``linear`` percentile: ``ttft_*`` over requests, ``tbt_p*`` over the pooled gaps of all finished
  requests, ``tbt_max_p99_s`` over each request's largest gap; normalized latency = mean_{R_fin} JCT_r / o_r.
* ``warmup_s`` drops requests arriving before t_start + warmup_s from every metric (not from ``kv_activity``).
* Preemptions: ``num_preemptions`` = ``num_swaps`` + ``num_recomputes`` (per request and in total);
  ``kv_activity`` adds, from the iteration log, the blocks swapped each way, the swap transfer time, the tokens
  recomputed and their marginal time (both already inside the steps' durations).
"""
from __future__ import annotations

from itertools import chain
from typing import Sequence

import numpy as np
import pandas as pd

from runtime.core.errors import ConfigError
from runtime.core.request import Request, RequestStatus

_FINISHED = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)


def _pooled_gaps(token_times: Sequence[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every TBT gap of every request, pooled, with the index of the request it belongs to, and gaps per request."""
    counts = np.fromiter((len(t) for t in token_times), dtype=np.int64, count=len(token_times))
    num_gaps = np.maximum(counts - 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0), np.empty(0, dtype=np.int64), num_gaps
    times = np.fromiter(chain.from_iterable(token_times), dtype=np.float64, count=total)
    gaps = np.diff(times)
    # A gap is valid when both tokens belong to the same request: drop the gap across each boundary.
    ends = np.cumsum(counts)
    valid = np.ones(len(gaps), dtype=bool)
    valid[ends[(counts > 0) & (ends < total)] - 1] = False
    owner = np.repeat(np.arange(len(counts)), counts)[:-1][valid]
    return gaps[valid], owner, num_gaps


def _segment_stats(pooled: tuple[np.ndarray, np.ndarray, np.ndarray], q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per request (from ``_pooled_gaps``' result): its largest gap and the q-th percentile (numpy ``linear``) of
    its gaps; NaN without gaps."""
    gaps, owner, num_gaps = pooled
    n = len(num_gaps)
    max_gap = np.full(n, np.nan)
    pct_gap = np.full(n, np.nan)
    if not gaps.size:
        return max_gap, pct_gap
    # Sort by (owner, gap) with one float argsort: gaps scaled into [0, 0.5) ride on the integer owner.
    # Order can only differ from an exact sort between gaps closer than ~1e-10 of the largest gap.
    key = owner + gaps * (0.5 / gaps.max()) if gaps.max() > 0 else owner.astype(np.float64)
    sorted_gaps = gaps[np.argsort(key, kind="stable")]
    has = num_gaps > 0
    first = np.concatenate(([0], np.cumsum(num_gaps)[:-1]))
    m = num_gaps[has]
    base = first[has]
    max_gap[has] = sorted_gaps[base + m - 1]
    pos = (m - 1) * (q / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    frac = pos - lo
    pct_gap[has] = sorted_gaps[base + lo] * (1 - frac) + sorted_gaps[base + hi] * frac
    return max_gap, pct_gap


def requests_frame(
    requests: Sequence[Request],
    *,
    tbt_mode: str = "max",
    tbt_percentile: float = 99.0,
    bound_prefill_iterations: bool = True,
) -> pd.DataFrame:
    """One row per request with its times, SLO verdicts and status (the ``requests.parquet`` schema)."""
    return request_rows_and_gaps(requests, tbt_mode=tbt_mode, tbt_percentile=tbt_percentile,
                                 bound_prefill_iterations=bound_prefill_iterations)[0]


def request_rows_and_gaps(
    requests: Sequence[Request],
    *,
    tbt_mode: str = "max",
    tbt_percentile: float = 99.0,
    bound_prefill_iterations: bool = True,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``requests_frame`` rows, plus every TBT gap of the finished requests and the row each gap belongs to."""
    if tbt_mode not in ("max", "percentile"):
        raise ValueError(f"metrics.tbt_mode must be 'max' or 'percentile', got {tbt_mode!r}")
    finished_only = [r.token_times if r.status in _FINISHED else [] for r in requests]
    pooled = _pooled_gaps(finished_only)
    max_gap, p99_gap = _segment_stats(pooled, 99.0)
    mode_gap = max_gap if tbt_mode == "max" else _segment_stats(pooled, tbt_percentile)[1]
    nan = float("nan")
    df = pd.DataFrame(
        {
            "req_id": [r.req_id for r in requests],
            "app": [r.app for r in requests],
            "slo_class": [r.slo_class for r in requests],
            "arrival_time": [r.arrival_time for r in requests],
            "first_scheduled_time": [r.times.first_scheduled_time if r.times.first_scheduled_time is not None else nan for r in requests],
            "first_token_time": [r.token_times[0] if r.token_times else nan for r in requests],
            "finished_time": [r.times.finished_time if r.status in _FINISHED else nan for r in requests],
            "num_prompt_tokens": np.array([r.num_prompt_tokens for r in requests], dtype=np.int64),
            "num_output_tokens": np.array([r.num_output_tokens for r in requests], dtype=np.int64),
            "max_tokens": np.array([r.max_tokens for r in requests], dtype=np.int64),
            "ttft_slo_s": [r.ttft_slo_s for r in requests],
            "tbt_slo_s": [r.tbt_slo_s for r in requests],
            "tbt_max_s": max_gap,
            "tbt_p99_s": p99_gap,
            "max_prefill_step_s": [r.max_prefill_step_time for r in requests],
            "num_preemptions": np.array([r.num_preemptions for r in requests], dtype=np.int64),
            "num_swaps": np.array([r.num_swaps for r in requests], dtype=np.int64),
            "status": [r.status.name for r in requests],
            "rejection_reason": [r.rejection_reason or "" for r in requests],
        }
    )
    finished = df["status"].isin([s.name for s in _FINISHED]).to_numpy()
    df.insert(df.columns.get_loc("num_prompt_tokens"), "ttft_s", df["first_token_time"] - df["arrival_time"])
    df.insert(df.columns.get_loc("num_prompt_tokens"), "jct_s", df["finished_time"] - df["arrival_time"])
    met_ttft = finished & (df["ttft_s"].to_numpy() <= df["ttft_slo_s"].to_numpy())
    tbt_ok = np.where(np.isnan(mode_gap), True, mode_gap <= df["tbt_slo_s"].to_numpy())
    if bound_prefill_iterations:
        tbt_ok &= df["max_prefill_step_s"].to_numpy() <= df["tbt_slo_s"].to_numpy()
    met_tbt = finished & tbt_ok
    df["met_ttft"] = met_ttft
    df["met_tbt"] = met_tbt
    df["met_slo"] = met_ttft & met_tbt
    return df, pooled[0], pooled[1]


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if values.size else None


def _gaps_of(requests: Sequence[Request]) -> np.ndarray:
    return _pooled_gaps([r.token_times for r in requests])[0]


class _ExactGaps:
    """Pooled TBT gaps held in full: numpy's ``linear`` percentile."""

    def __init__(self, gaps: np.ndarray) -> None:
        self.gaps = gaps

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.gaps, q)) if self.gaps.size else None


def summarise(
    df: pd.DataFrame,
    requests: Sequence[Request] | None = None,
    *,
    warmup_s: float = 0.0,
    tbt_gaps: object | None = None,
) -> dict:
    """Run-level metrics from the ``requests_frame`` rows (and the requests, for the pooled TBT gaps).

    ``tbt_gaps`` (``result_stream.GapHistogram``, anything with ``percentile(q) -> float | None``) replaces the
    requests for the pooled TBT percentiles: it must hold the gaps of the finished requests kept after warm-up.
    """
    if len(df) == 0:
        raise ValueError("no requests arrived: nothing to summarise")
    t_start = float(df["arrival_time"].min())
    keep = (df["arrival_time"] >= t_start + warmup_s).to_numpy()
    if not keep.any():
        raise ConfigError(f"metrics.warmup_s={warmup_s} drops every request (arrivals span "
                          f"{float(df['arrival_time'].max()) - t_start:.1f} s)")
    d = df[keep]
    finished = d["status"].isin([s.name for s in _FINISHED]).to_numpy()
    fin = d[finished]
    t_end = float(fin["finished_time"].max()) if len(fin) else float(d["arrival_time"].max())
    duration = max(t_end - float(d["arrival_time"].min()), 1e-12)
    met = d["met_slo"].to_numpy()
    if tbt_gaps is None:
        kept = [r for r, k in zip(requests, keep) if k]
        gaps = _gaps_of([r for r, f in zip(kept, finished) if f])
        tbt_gaps = _ExactGaps(gaps)
    n_arr = len(d)

    def by_class(column: str) -> dict[str, float]:
        return {str(k): float(v) for k, v in d.groupby("slo_class", sort=True)[column].mean().items()}

    summary = {
        "num_requests": int(n_arr),
        "num_finished": int(finished.sum()),
        "num_rejected": int((d["status"] == RequestStatus.FINISHED_REJECTED.name).sum()),
        "duration_s": duration,
        "throughput_rps": float(finished.sum() / duration),
        "throughput_tps": float(fin["num_output_tokens"].sum() / duration),
        "throughput_total_tps": float((fin["num_output_tokens"].sum() + fin["num_prompt_tokens"].sum()) / duration),
        "goodput_rps": float(met.sum() / duration),
        "goodput_tps": float(d.loc[met, "num_output_tokens"].sum() / duration),
        "slo_attainment": float(met.mean()),
        "slo_attainment_by_class": by_class("met_slo"),
        "ttft_attainment": float(d["met_ttft"].mean()),
        "ttft_attainment_by_class": by_class("met_ttft"),
        "tbt_attainment": float(d["met_tbt"].mean()),
        "tbt_attainment_by_class": by_class("met_tbt"),
        "ttft_p50_s": _pct(d["ttft_s"].to_numpy(), 50),
        "ttft_p95_s": _pct(d["ttft_s"].to_numpy(), 95),
        "ttft_p99_s": _pct(d["ttft_s"].to_numpy(), 99),
        "tbt_p50_s": tbt_gaps.percentile(50),
        "tbt_p95_s": tbt_gaps.percentile(95),
        "tbt_p99_s": tbt_gaps.percentile(99),
        "tbt_max_p99_s": _pct(fin["tbt_max_s"].to_numpy(), 99),
        "jct_mean_s": float(fin["jct_s"].mean()) if len(fin) else None,
        "jct_p95_s": _pct(fin["jct_s"].to_numpy(), 95),
        "jct_p99_s": _pct(fin["jct_s"].to_numpy(), 99),
        "normalized_latency_s_per_token": float((fin["jct_s"] / fin["num_output_tokens"]).mean()) if len(fin) else None,
        "num_preemptions": int(d["num_preemptions"].sum()),
        "num_swaps": int(d["num_swaps"].sum()),
        "num_recomputes": int(d["num_preemptions"].sum() - d["num_swaps"].sum()),
        "warmup_s": warmup_s,
    }
    return summary


def kv_activity(iterations: pd.DataFrame) -> dict:
    """Run totals of KV swapping and recompute from ``iterations.parquet`` rows (module docstring)."""
    return {
        "swap_out_blocks": int(iterations["swap_out_blocks"].sum()),
        "swap_in_blocks": int(iterations["swap_in_blocks"].sum()),
        "swap_time_s": float(iterations["swap_time_s"].sum()),
        "recompute_tokens": int(iterations["recompute_tokens"].sum()),
        "recompute_time_s": float(iterations["recompute_time_s"].sum()),
    }
