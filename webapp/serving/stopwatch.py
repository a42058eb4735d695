"""Where one request's time goes: a stopwatch whose laps are contiguous stages (each lap
counts the time since the previous one), so the stages add up to the total."""

from __future__ import annotations

import time


class Stopwatch:
    """``lap(stage)`` adds the time since the last lap (or the start) to ``stage``;
    ``add(stage, ms)`` moves a part of a lap already counted to another stage (e.g. the
    wait for the engine inside the inference call)."""

    def __init__(self, start: float | None = None):
        self.start = self.last = time.perf_counter() if start is None else start
        self.ms: dict[str, float] = {}

    def lap(self, stage: str, now: float | None = None) -> float:
        """Count the time since the last lap as ``stage``; returns its ms."""
        now = time.perf_counter() if now is None else now
        ms = (now - self.last) * 1000
        self.ms[stage] = self.ms.get(stage, 0.0) + ms
        self.last = now
        return ms

    def move(self, ms: float, source: str, stage: str) -> None:
        """Count ``ms`` of ``source`` as ``stage`` instead."""
        ms = min(ms, self.ms.get(source, 0.0))
        self.ms[source] = self.ms.get(source, 0.0) - ms
        self.ms[stage] = self.ms.get(stage, 0.0) + ms

    def elapsed_ms(self) -> float:
        """From the start to the last lap."""
        return (self.last - self.start) * 1000
