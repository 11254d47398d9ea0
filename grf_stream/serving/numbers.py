"""The server's live numbers: step latencies, throughput, counts, mean gates; what `client --stats`
and TensorBoard show."""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable

import numpy as np

STATS_EVERY_S = 0.25  # how fresh the numbers a `stats` request gets are


class LiveNumbers:
    """Counts since the start, and the latency of every recent step from its chunk's arrival."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.counts = Counter({"steps": 0, "errors": 0, "drops": 0, "errors_unanswered": 0})
        self.gates: dict[str, list[float]] = {}  # modality -> mean gate of each fusion step, since the board took them
        self.recent: deque[tuple[float, float]] = deque(maxlen=10_000)  # (when, latency ms) of recent steps
        self.cached: tuple[float, dict[str, float]] | None = None  # (when, numbers) told to clients
        # (session, seq, modality) -> (when its first window was queued, windows of it not yet answered):
        # one chunk can complete several windows, and each is timed from the same moment.
        self.queued_at: dict[tuple[str, int, str], tuple[float, int]] = {}

    def queued(self, key: tuple[str, int, str]) -> None:
        """A step of this chunk is queued; its latency counts from the first one's moment."""
        at, waiting = self.queued_at.get(key, (self.clock(), 0))
        self.queued_at[key] = (at, waiting + 1)

    def answered(self, key: tuple[str, int, str]) -> float | None:
        """A step of this chunk is answered (or failed): when the chunk's first step was queued."""
        if key not in self.queued_at:
            return None
        at, waiting = self.queued_at[key]
        if waiting > 1:
            self.queued_at[key] = (at, waiting - 1)
        else:
            del self.queued_at[key]
        return at

    def step(self, queued_at: float | None, modality: str, gate: float | None) -> float:
        """A step was answered; its latency in ms. `gate` is None for a segment's first step (it has none)."""
        latency_ms = (self.clock() - queued_at) * 1000 if queued_at is not None else 0.0
        self.recent.append((self.clock(), latency_ms))
        if gate is not None:
            self.gates.setdefault(modality, []).append(gate)
        self.counts["steps"] += 1
        return latency_ms

    def take_gates(self) -> dict[str, list[float]]:
        gates, self.gates = self.gates, {}
        return gates

    def for_clients(self, active_sessions: int) -> dict[str, float]:
        """`now` for `stats` requests, computed at most every STATS_EVERY_S: percentiles over 10,000
        latencies cost about a millisecond, and a client may ask thousands of times a second."""
        if self.cached is None or self.clock() - self.cached[0] >= STATS_EVERY_S:
            self.cached = (self.clock(), self.now(active_sessions))
        return self.cached[1]

    def now(self, active_sessions: int, window_s: float = 10.0) -> dict[str, float]:
        """The last `window_s` seconds, and the counts since the start."""
        latencies = [ms for at, ms in self.recent if self.clock() - at <= window_s]
        numbers = {"active_sessions": active_sessions, "steps_per_s": len(latencies) / window_s, **self.counts}
        if latencies:
            numbers["step_latency_p50_ms"] = float(np.percentile(latencies, 50))
            numbers["step_latency_p99_ms"] = float(np.percentile(latencies, 99))
        return numbers
