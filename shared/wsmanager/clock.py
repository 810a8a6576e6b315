"""Clocks for the ``Clock`` port: the system's wall clock, and a manual one for tests/specs."""

from __future__ import annotations

import time

__all__ = ["ManualClock", "SystemClock"]


class SystemClock:
    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to (and may be set backwards, to test R5 edges)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, value: float) -> None:
        self._now = value

    def __repr__(self) -> str:
        return f"ManualClock({self._now})"
