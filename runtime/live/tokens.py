"""Token ids of live requests: synthetic prompts from a counter-based hash, and the sampled outputs.

Traces give lengths, not text, so prompt token ``p`` of request ``r`` is
``mix64(mix64(mix64(seed) ⊕ crc32(r)) + p·φ) mod V`` (splitmix64's finaliser, φ its golden-ratio increment). It
depends on nothing but the seed, the request id and the position, so a prompt is the same whichever way a
scheduler chunks it, after a recompute preemption, and across schedulers.

A request's tokens are its prompt followed by its sampled outputs; the position of its first output is learnt
when that token is sampled (the end of its last prompt chunk). Until then every position asked for is a prompt
position, which is sound because an output token is always sampled before any step computes it.
"""
from __future__ import annotations

import zlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def synthetic_prompt(seed: int, req_id: str, start: int, end: int, vocab_size: int) -> np.ndarray:
    """Prompt token ids at positions ``start .. end−1`` (int64)."""
    with np.errstate(over="ignore"):
        # The whole 64-bit seed, then the request: two rounds, so no two (seed, req_id) pairs share a stream.
        base = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        base = _mix64(base ^ np.uint64(zlib.crc32(req_id.encode())))[0]
        x = base + np.arange(start, end, dtype=np.uint64) * _GOLDEN
    return (_mix64(x) % np.uint64(vocab_size)).astype(np.int64)


class TokenStore:
    def __init__(self, *, seed: int, vocab_size: int) -> None:
        self.seed, self.vocab_size = int(seed), int(vocab_size)
        self._outputs: dict[str, list[int]] = {}
        self._first_output_pos: dict[str, int] = {}

    def __call__(self, req_id: str, start: int, end: int) -> np.ndarray:
        first = self._first_output_pos.get(req_id)
        if first is None or end <= first:
            return synthetic_prompt(self.seed, req_id, start, end, self.vocab_size)
        outputs = np.asarray(self._outputs[req_id][max(start, first) - first:end - first], dtype=np.int64)
        if len(outputs) != end - max(start, first):
            raise RuntimeError(f"{req_id}: positions up to {end} asked for, only {first + len(self._outputs[req_id])} "
                               "tokens exist (a step computed a token before it was sampled)")
        if start >= first:
            return outputs
        return np.concatenate([synthetic_prompt(self.seed, req_id, start, first, self.vocab_size), outputs])

    def append(self, req_id: str, token_id: int, position: int) -> None:
        outputs = self._outputs.get(req_id)
        if outputs is None:
            outputs = self._outputs[req_id] = []
            self._first_output_pos[req_id] = position
        elif position != self._first_output_pos[req_id] + len(outputs):
            raise RuntimeError(f"{req_id}: token sampled for position {position}, expected "
                               f"{self._first_output_pos[req_id] + len(outputs)}")
        outputs.append(int(token_id))

    def outputs(self, req_id: str) -> list[int]:
        return list(self._outputs.get(req_id, ()))

    def drop(self, req_id: str) -> None:
        self._outputs.pop(req_id, None)
        self._first_output_pos.pop(req_id, None)

    def __len__(self) -> int:
        return len(self._outputs)
