"""Iteration-latency models ``T̂(B)`` implementing ``runtime.core.interface.CostModel`` (algorithms.md section 3).

Linear form (``latency.kind: linear``). For a batch ``B`` with prefill chunks ``P`` (``c_r`` new tokens after
``q_r`` already computed) and decodes ``D`` (context ``ctx_r``), ``N = Σ_P c_r + |D|`` tokens::

    T̂(B) = β0 + engine_overhead_s                       # per-iteration constant: kernel floors + engine
          + β1 · max(N, n_knee)                          # linear layers (GEMMs, norms, TP all-reduce)
          + β2 · Σ_P c_r · (q_r + c_r / 2)               # prefill attention (causal, chunk sees prior context)
          + β3 · Σ_D ctx_r                               # decode attention (KV bytes read)
          + β4 · |B|                                     # per-sequence engine work (sampling, bookkeeping)
          + β5 · min(|B|, s_knee)                        # per-sequence work that saturates (small-M GEMMs)

and ``T̂(∅) = 0``. ``n_knee = 0`` gives exactly the section-3 form. A positive ``n_knee`` is the roofline floor
of the GEMMs: below the knee they are memory-bound (weights are read once whatever ``N`` is), above it they are
compute-bound, so ``β1·max(N, n_knee)`` is the section-3 "roofline" linear term with its knee fitted.
``engine_overhead_s`` and ``β4`` are what operator profiles leave out; they are kept apart from the
operator-fitted ``β0..β3`` so their source can be reported and swapped (section 3, "What operator profiles
leave out"). ``β5·min(|B|, s_knee)`` (default ``β5 = 0``: absent; every GPU profile) is concave in ``|B|``: the
first ``s_knee`` sequences of a step cost ``β4 + β5`` each, the later ones ``β4``. On a CPU the LM head's GEMM
(one row per sampled sequence against the whole vocabulary) runs a small-M kernel that rereads the weight every
few rows up to about a dozen rows, and a packed one above (``bench/live_lm_head.py``); a line through that
staircase under-predicts 4–12 decodes by 10–15 %, which is where a served CPU run spends its steps near
saturation. The Oracle's MILP takes the term with one binary per step (``solvers/formulation.py``). Every term
is non-decreasing in each ``c_r``, ``q_r``, ``ctx_r`` and in adding a request.

Noise (``noise_cv > 0``). ``predict`` multiplies by ``X ~ LogNormal(μ, σ²)`` with ``σ² = ln(1 + cv²)``,
``μ = −σ²/2`` (so ``E[X] = 1``, ``CV[X] = cv``), drawn from the model's own ``np.random.default_rng(seed)``.
NOTE(cost_model): noise models a *wrong predictor*: simulated time (the SimExecutor, which calls
``predict``) is noisy, while a scheduler that plans must see the noise-free value. A planner therefore calls
``predict_deterministic`` or, when it only knows the ``CostModel`` protocol, is handed ``deterministic()``,
a noise-free twin with the same coefficients. Keeping the planner off the noisy object also keeps the
executor's noise sequence independent of how many times a scheduler queries the model.

Settling (``settle_amplitude`` ``a > 0``, ``settle_decay`` ``ρ``; ``runtime.sim.settle``). ``settle_factor(k)``
is ``1 + a·ρ^k``, the slowdown of a decode-only step ``k`` decode-only steps after the last step with prefill
tokens; ``SimExecutor`` applies it to simulated time only, so planners, like ``predict_deterministic``, see the
settled ``T̂(B)``. ``a = 0`` (the default, and every GPU profile) is the history-free model.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from runtime.core.errors import ConfigError
from runtime.sim.specs import HardwareSpec, ModelSpec

_NOISE_BATCH = 4096  # draws per refill: one numpy call per 4096 iterations instead of one per iteration


class LinearCostModel:
    """The linear (optionally knee-floored) iteration-latency model; coefficients in seconds."""

    __slots__ = (
        "beta0", "beta1", "beta2", "beta3", "beta4", "beta5", "s_knee", "engine_overhead_s", "n_knee", "noise_cv",
        "seed",
        "settle_amplitude", "settle_decay", "name", "source", "fit_error", "_const", "_sigma", "_mu", "_rng", "_noise",
        "_noise_pos",
    )

    def __init__(
        self,
        *,
        beta0: float,
        beta1: float,
        beta2: float,
        beta3: float,
        beta4: float,
        beta5: float = 0.0,
        s_knee: int = 0,
        engine_overhead_s: float = 0.0,
        n_knee: float = 0.0,
        noise_cv: float = 0.0,
        seed: int = 0,
        settle_amplitude: float = 0.0,
        settle_decay: float = 0.0,
        name: str = "",
        source: str = "",
        fit_error: dict[str, Any] | None = None,
    ) -> None:
        values = dict(beta0=beta0, beta1=beta1, beta2=beta2, beta3=beta3, beta4=beta4, beta5=beta5, s_knee=s_knee,
                      engine_overhead_s=engine_overhead_s, n_knee=n_knee, noise_cv=noise_cv,
                      settle_amplitude=settle_amplitude, settle_decay=settle_decay)
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"cost_model.{key} must be a finite number >= 0, got {value!r}")
        if float(s_knee) != int(s_knee):
            raise ConfigError(f"cost_model.s_knee must be a whole number of sequences, got {s_knee!r}")
        if beta5 > 0 and s_knee < 1:
            raise ConfigError(f"cost_model.beta5 = {beta5!r} needs cost_model.s_knee >= 1 (the sequences it covers)")
        if settle_decay >= 1:
            raise ConfigError(f"cost_model.settle_decay must be below 1 (the slowdown must fade), got {settle_decay!r}")
        self.beta0, self.beta1, self.beta2 = float(beta0), float(beta1), float(beta2)
        self.beta3, self.beta4 = float(beta3), float(beta4)
        self.beta5, self.s_knee = float(beta5), int(s_knee)
        self.engine_overhead_s, self.n_knee, self.noise_cv = float(engine_overhead_s), float(n_knee), float(noise_cv)
        self.seed, self.name, self.source = int(seed), str(name), str(source)
        self.settle_amplitude, self.settle_decay = float(settle_amplitude), float(settle_decay)
        self.fit_error = dict(fit_error) if fit_error is not None else None
        self._const = self.beta0 + self.engine_overhead_s
        self._sigma = math.sqrt(math.log1p(self.noise_cv**2))
        self._mu = -0.5 * self._sigma**2
        self._rng = np.random.default_rng(self.seed)
        self._noise: list[float] = []
        self._noise_pos = 0

    def predict_from_sums(
        self, *, num_prefill_tokens: int, prefill_attn_work: float, num_decodes: int, sum_decode_ctx: int,
        num_seqs: int,
    ) -> float:
        """Noise-free ``T̂`` from running sums; ``prefill_attn_work = Σ_P c·(q + c/2)``."""
        if num_seqs == 0:
            return 0.0
        n = num_prefill_tokens + num_decodes
        return (
            self._const
            + self.beta1 * (n if n > self.n_knee else self.n_knee)
            + self.beta2 * prefill_attn_work
            + self.beta3 * sum_decode_ctx
            + self.beta4 * num_seqs
            + self.beta5 * (num_seqs if num_seqs < self.s_knee else self.s_knee)
        )

    def predict_deterministic(
        self, prefill_chunks: Sequence[tuple[int, int]], decode_context_lens: Sequence[int]
    ) -> float:
        """Noise-free ``T̂(B)`` in seconds: what a scheduler should plan with."""
        num_decodes = len(decode_context_lens)
        num_seqs = num_decodes + len(prefill_chunks)
        if num_seqs == 0:
            return 0.0
        n = num_decodes
        work = 0.0
        for c, q in prefill_chunks:  # usually zero to a few chunks: a plain loop beats numpy here
            n += c
            work += c * (q + 0.5 * c)
        return (
            self._const
            + self.beta1 * (n if n > self.n_knee else self.n_knee)
            + self.beta2 * work
            + self.beta3 * sum(decode_context_lens)
            + self.beta4 * num_seqs
            + self.beta5 * (num_seqs if num_seqs < self.s_knee else self.s_knee)
        )

    def predict(self, prefill_chunks: Sequence[tuple[int, int]], decode_context_lens: Sequence[int]) -> float:
        """``T̂(B)`` in seconds, times one log-normal noise draw when ``noise_cv > 0`` (simulated time)."""
        t = self.predict_deterministic(prefill_chunks, decode_context_lens)
        if self.noise_cv == 0.0 or t == 0.0:
            return t
        return t * self._next_noise()

    def settle_factor(self, k: int) -> float:
        """Slowdown of a decode-only step ``k >= 0`` decode-only steps after a step with prefill tokens (else 1)."""
        if k < 0 or self.settle_amplitude == 0.0:
            return 1.0
        return 1.0 + self.settle_amplitude * self.settle_decay**k

    def deterministic(self) -> LinearCostModel:
        """A noise-free twin with the same coefficients (for schedulers that only know ``predict``)."""
        return LinearCostModel(
            beta0=self.beta0, beta1=self.beta1, beta2=self.beta2, beta3=self.beta3, beta4=self.beta4,
            beta5=self.beta5, s_knee=self.s_knee, engine_overhead_s=self.engine_overhead_s, n_knee=self.n_knee,
            noise_cv=0.0, seed=self.seed,
            settle_amplitude=self.settle_amplitude, settle_decay=self.settle_decay, name=self.name, source=self.source,
            fit_error=self.fit_error,
        )

    def _next_noise(self) -> float:
        if self._noise_pos == len(self._noise):
            self._noise = self._rng.lognormal(self._mu, self._sigma, _NOISE_BATCH).tolist()
            self._noise_pos = 0
        x = self._noise[self._noise_pos]
        self._noise_pos += 1
        return x

    def __repr__(self) -> str:
        return (
            f"LinearCostModel(name={self.name!r}, beta0={self.beta0:.4g}, beta1={self.beta1:.4g}, "
            f"beta2={self.beta2:.4g}, beta3={self.beta3:.4g}, beta4={self.beta4:.4g}, "
            f"engine_overhead_s={self.engine_overhead_s:.4g}, n_knee={self.n_knee:g}, noise_cv={self.noise_cv:g}"
            + (f", beta5={self.beta5:.4g}, s_knee={self.s_knee}" if self.beta5 else "")
            + (f", settle_amplitude={self.settle_amplitude:.4g}, settle_decay={self.settle_decay:.4g}"
               if self.settle_amplitude else "") + ")"
        )


def roofline_cost_model(
    *,
    model: ModelSpec,
    hardware: HardwareSpec,
    compute_efficiency: float = 1.0,
    memory_efficiency: float = 1.0,
    engine_overhead_s: float = 0.0,
    per_seq_overhead_s: float = 0.0,
    noise_cv: float = 0.0,
    seed: int = 0,
) -> LinearCostModel:
    """Analytical ``latency.kind: roofline`` model from model and hardware numbers only (no profile).

    Per GPU, with ``F = peak FLOP/s · compute_efficiency``, ``BW = HBM B/s · memory_efficiency``,
    ``P_l`` the parameters of one layer and ``s`` = dtype bytes::

        linear layers   max(L·P_l·s/TP / BW, 2·L·P_l/TP · N / F)      = β1·max(N, n_knee)
        LM head         vocab·d·s/TP / BW                             = β0 (weights read once per step)
        prefill attn    4·L·(H/TP)·d_h · Σ c(q + c/2) / F            (QKᵀ and PV: 2 FLOPs each per pair)
        decode attn     2·L·(H_kv/TP)·d_h·s · Σ ctx / BW             (K and V of every cached token)

    so it is a ``LinearCostModel`` with ``β1 = 2·L·P_l/(TP·F)`` and ``n_knee = L·P_l·s/(TP·BW) / β1``, the knee
    ``N* ≈ F·s/(2·BW)`` of algorithms.md section 3. TP all-reduces are left out (no interconnect numbers in
    ``HardwareSpec``); the efficiencies are the "fitted correction factors" of section 3.
    """
    for key, value in (("compute_efficiency", compute_efficiency), ("memory_efficiency", memory_efficiency)):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"cost_model.{key} must be in (0, 1], got {value!r}")
    tp, s, layers = hardware.tensor_parallel_size, model.dtype_bytes, model.num_layers
    flops = hardware.peak_tflops * 1e12 * compute_efficiency
    bw = hardware.hbm_bandwidth_gbps * 1e9 * memory_efficiency
    beta1 = 2 * layers * model.layer_params / tp / flops
    weights_time = layers * model.layer_params * s / tp / bw
    return LinearCostModel(
        beta0=model.vocab_size * model.hidden_size * s / tp / bw,
        beta1=beta1,
        beta2=4 * layers * model.num_heads / tp * model.head_dim / flops,
        beta3=2 * layers * max(model.num_kv_heads / tp, 1) * model.head_dim * s / bw,
        beta4=per_seq_overhead_s,
        engine_overhead_s=engine_overhead_s,
        n_knee=weights_time / beta1,
        noise_cv=noise_cv,
        seed=seed,
        name=f"roofline_{model.name}_{hardware.name}",
        source="analytical roofline from conf/model and conf/hardware (runtime.sim.cost_model.roofline_cost_model)",
    )
