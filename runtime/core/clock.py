"""Clocks: the simulator's virtual time, and wall time for the live runtime."""
from __future__ import annotations

import time


class VirtualClock:
    """Simulated seconds; only the engine moves it."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, dt: float) -> None:
        if not dt >= 0.0:  # also catches NaN
            raise ValueError(f"step time must be a non-negative number of seconds, got {dt!r}")
        self._now += dt

    def advance_to(self, t: float) -> None:
        if t > self._now:
            self._now = t


class WallClock:
    """Seconds since construction, offset so arrivals (trace times) line up with the run's start.

    ``skip_idle``: when the engine is idle until the next arrival, jump the clock there instead of sleeping.
    Nothing runs while idle, so every recorded time is as if it had slept; a live replay of a sparse trace
    then takes its busy time, not its span.
    """

    __slots__ = ("_origin", "skip_idle")

    def __init__(self, start: float = 0.0, *, skip_idle: bool = True) -> None:
        self._origin = time.perf_counter() - start
        self.skip_idle = skip_idle

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def advance(self, dt: float) -> None:
        """The step already took its time on the device; wall time needs no moving."""

    def advance_to(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            if self.skip_idle:
                self._origin -= delay
            else:
                time.sleep(delay)
