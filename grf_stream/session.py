"""The front-end's view of one client stream: what it opened with, where it is, what it dropped.

The fusion service holds the live context; the front-end keeps a copy (`state`) after every step so
that a restarted fusion actor can be re-seeded and no session loses its place.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from grf_stream.fusion import FusionState, StepResult


@dataclass
class Window:
    """Features waiting to become a step (segment policy: everything since the segment began)."""

    features: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def add(self, features: np.ndarray, mask: np.ndarray) -> None:
        self.features.append(features)
        self.masks.append(mask)

    def rows(self) -> int:
        return sum(len(f) for f in self.features)

    def take(self, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first `rows` rows (all by default); the rest stay."""
        features, mask = np.concatenate(self.features), np.concatenate(self.masks)
        rows = len(features) if rows is None else rows
        self.features, self.masks = ([features[rows:]], [mask[rows:]]) if rows < len(features) else ([], [])
        return features[:rows], mask[:rows]


@dataclass
class Session:
    id: str
    identity: bytes  # the ZeroMQ routing id of the client's socket
    modalities: tuple[str, ...]
    policy: str  # "segment" or "window"
    window_s: float
    sample_rate: int
    carry_context: bool
    last_seen: float
    last_seq: int = -1
    closing: bool = False  # bye or idle timeout seen: no more messages, queued steps still answered
    state: FusionState = field(default_factory=FusionState)  # copy of the fusion service's
    pending: dict[str, Window] = field(default_factory=dict)  # rows not yet fused, per modality, in arrival order
    stats: Counter = field(default_factory=Counter)  # steps, errors, drops_<modality>, ...
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # messages for the session's worker, in order
    newest_frame: object | None = None  # the one video frame waiting (late frames replace it)
    audio: deque = field(default_factory=deque)  # waiting audio chunks, bounded by the front-end

    def accept_seq(self, seq: int) -> bool:
        """Sequence numbers only grow; a message that goes back is refused."""
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def hold(self, modality: str, features: np.ndarray, mask: np.ndarray) -> None:
        self.pending.setdefault(modality, Window()).add(features, mask)

    def held_rows(self, modality: str) -> int:
        return self.pending[modality].rows() if modality in self.pending else 0

    def take_rows(self, modality: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pending[modality].take(rows)

    def take_pending(self, modalities: list[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The held rows as steps (of these modalities, or all), in the order their first rows arrived."""
        names = [m for m in self.pending if modalities is None or m in modalities]
        steps = [(m, *self.pending[m].take()) for m in names if self.pending[m].features]
        for m in names:
            del self.pending[m]
        return steps

    def record(self, result: StepResult) -> None:
        self.state = FusionState(result.context, result.segment, result.step, list(result.modalities))
        self.stats["steps"] += 1

    def end_segment(self) -> None:
        self.state.reset(self.state.segment + 1, self.carry_context)
