"""The batch compositions ``accelgen-profile`` times: a training grid and random held-out compositions.

A composition ``B`` is one step's batch, of three kinds:

* decode-only: ``D`` decodes (1 .. 128) with contexts drawn uniformly in ``[m/2, 3m/2]`` around a mean ``m``;
* prefill-only: one chunk ``(c, q)`` (``c`` new tokens after ``q`` cached ones), or several whole prompts
  (``q = 0``, as vLLM batches them);
* mixed (Sarathi-style): ``D`` decodes plus one chunk that fills a token budget ``N = c + D``.

Sizes are capped by ``max_model_len`` (``q + c``, every context) and by ``D · m ≤ MAX_DECODE_TOKENS`` context
tokens. Every chunk samples a token (a final chunk) except the partial chunk of every other mixed composition. The
grid is dense at small decode batches, where most serving steps are; the held-out compositions are drawn
log-uniformly, independently of the grid, so the fit is judged on batches it was not fitted to. ``features`` gives
the cost model's regressors ``(N, Σ c(q + c/2), Σ ctx, |B|)`` (``runtime.sim.cost_model``), ``feature_columns``
the columns a step has in ``measurements.csv``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from runtime.core.errors import ConfigError

#: Held-out compositions per kind for each grid (``profile.heldout: null``).
HELDOUT = {"full": 30, "quick": 4}
MAX_DECODE_TOKENS = 65536  # Σ ctx of one composition (bounds the decode gather and the profile's KV cache)


@dataclass
class Composition:
    kind: str
    split: str  # train (the grid) or heldout
    chunks: list[tuple[int, int]]  # (c, q)
    decodes: list[int]  # contexts
    final: list[bool] = field(default_factory=list)  # per chunk: does it sample a token
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.final:
            self.final = [True] * len(self.chunks)

    @property
    def num_seqs(self) -> int:
        return len(self.chunks) + len(self.decodes)

    @property
    def kv_tokens(self) -> int:
        return sum(q + c for c, q in self.chunks) + sum(self.decodes)

    def label(self) -> str:
        parts = [f"{c}@{q}{'' if f else '*'}" for (c, q), f in zip(self.chunks, self.final)]
        if self.decodes:
            parts.append(f"{len(self.decodes)}x~{int(np.mean(self.decodes))}")
        return " + ".join(parts)


def _contexts(rng: np.random.Generator, count: int, mean: int, max_len: int) -> list[int]:
    lo, hi = max(2, mean // 2), max(2, min(max_len, (3 * mean) // 2))
    return rng.integers(lo, hi + 1, count).tolist()


def grid_compositions(max_len: int, grid: str = "full", seed: int = 0) -> list[Composition]:
    """The training grid (module docstring): decode-only, prefill-only and mixed compositions within max_len."""
    if grid not in HELDOUT:
        raise ConfigError(f"profile.grid must be 'full' or 'quick', got {grid!r}")
    rng = np.random.default_rng(seed)
    full = grid == "full"
    out: list[Composition] = []
    # Dense at small batches: most serving steps are (measured on live_small: median 1-2 decodes).
    batches = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128) if full else (1, 8, 32)
    means = (64, 256, 1024, 2048) if full else (64, 256)
    seen = set()
    for d in batches:
        for m in means:
            m = min(m, max_len)
            if d * m <= MAX_DECODE_TOKENS and (d, m) not in seen:
                seen.add((d, m))
                out.append(Composition("decode", "train", [], _contexts(rng, d, m, max_len)))
    chunks = (16, 32, 64, 128, 256, 512, 1024, 2048) if full else (32, 128, 512)
    offsets = (0, 256, 1024) if full else (0, 128)
    for q in offsets:
        for c in chunks:
            if q + c <= max_len:
                out.append(Composition("prefill", "train", [(c, q)], []))
    multi = ((2, 64), (2, 256), (2, 512), (4, 64), (4, 256), (4, 512), (8, 64), (8, 256)) if full else ((4, 64),)
    for k, p in multi:
        if p <= max_len:
            out.append(Composition("prefill", "train", [(p, 0)] * k, []))
    budgets = (128, 256, 512, 1024, 2048) if full else (128, 256)
    decode_counts = (4, 16, 64) if full else (4, 16)
    settings = ((128, 0), (512, 256)) if full else ((128, 0),)
    i = 0
    for budget in budgets:
        for d in decode_counts:
            for m, q in settings:
                c = budget - d
                if c < 16 or q + c > max_len:
                    continue
                out.append(Composition("mixed", "train", [(c, q)], _contexts(rng, d, min(m, max_len), max_len),
                                       final=[i % 2 == 0]))
                i += 1
    return out


def heldout_compositions(max_len: int, per_kind: int, seed: int = 0) -> list[Composition]:
    """Random compositions drawn independently of the grid (module docstring), ``per_kind`` of each kind."""
    rng = np.random.default_rng(seed + 1_000_003)
    out: list[Composition] = []

    def loguniform(lo: float, hi: float) -> int:
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(max(lo, hi))))))

    for _ in range(per_kind):
        d = loguniform(1, 64)
        m = loguniform(16, min(max_len // 2, MAX_DECODE_TOKENS // (2 * d)))
        ctx = rng.integers(16, min(max_len, 2 * m) + 1, d).tolist()
        out.append(Composition("decode", "heldout", [], ctx))
    for _ in range(per_kind):
        k = int(rng.integers(1, 5))
        chunks = []
        for _ in range(k):
            c = loguniform(16, max(16, max_len // k))
            q = int(rng.integers(0, max_len - c + 1)) if rng.random() < 0.5 else 0
            chunks.append((c, q))
        out.append(Composition("prefill", "heldout", chunks, []))
    for _ in range(per_kind):
        budget = int(rng.choice([128, 256, 512, 1024, 2048]))
        d = int(rng.integers(1, min(64, budget - 16) + 1))
        c = min(budget - d, max_len)
        q = int(rng.integers(0, max_len - c + 1))
        ctx = rng.integers(16, min(max_len, 1024) + 1, d).tolist()
        out.append(Composition("mixed", "heldout", [(c, q)], ctx, final=[bool(rng.random() < 0.5)]))
    return out


def features(chunks, decodes) -> tuple[int, float, int, int]:
    """(N, Σ c(q + c/2), Σ ctx, |B|) of a composition."""
    return (sum(c for c, _ in chunks) + len(decodes), float(sum(c * (q + c / 2) for c, q in chunks)),
            int(sum(decodes)), len(chunks) + len(decodes))


def feature_columns(chunks, decodes) -> dict:
    """A step's columns in ``measurements.csv``, for grid and served rows alike: the regressors of ``features`` and
    the counts they come from."""
    n, work, sum_ctx, seqs = features(chunks, decodes)
    return dict(num_tokens=n, num_prefill_tokens=n - len(decodes), num_chunks=len(chunks), num_decodes=len(decodes),
                prefill_attn_work=work, sum_decode_ctx=sum_ctx, max_decode_ctx=max(decodes, default=0),
                num_seqs=seqs)


def kind_of(chunks, decodes) -> str:
    """decode, prefill or mixed: whether a step has prefill chunks, decodes, or both."""
    return "mixed" if chunks and decodes else ("prefill" if chunks else "decode")
