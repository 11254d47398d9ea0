"""The front-end's view of one client stream: what it opened with, where it is, what it dropped.

The fusion service holds the live context (and engine.SeededFusion the front-end's copy of it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from grf_stream.serving import protocol as p
from grf_stream.serving.modalities import RawModality


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

    def drop_last(self, rows: int) -> None:
        """Forget the newest `rows` rows (a partial transcript that a newer one replaces)."""
        if rows:
            features, mask = self.take()
            self.add(features[:-rows], mask[:-rows])

    def take(self, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first `rows` rows (all by default); the rest stay."""
        features, mask = np.concatenate(self.features), np.concatenate(self.masks)
        rows = len(features) if rows is None else rows
        self.features, self.masks = ([features[rows:]], [mask[rows:]]) if rows < len(features) else ([], [])
        return features[:rows], mask[:rows]


@dataclass
class MediaBudget:
    """Seconds of a modality's media a session may still send: a live source makes one second a
    second, and a client may run ahead by `burst_s` and catch up at `speed` times real time."""

    speed: float
    burst_s: float
    left: float
    at: float  # when `left` was last brought up to date

    def take(self, seconds: float, now: float) -> bool:
        self.left = min(self.burst_s, self.left + (now - self.at) * self.speed)
        self.at = now
        if seconds > self.left:
            return False
        self.left -= seconds
        return True


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
    pending: dict[str, Window] = field(default_factory=dict)  # rows not yet fused, per modality, in arrival order
    stats: Counter = field(default_factory=Counter)  # steps, errors, drops_<modality>, ...
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # messages for the session's worker, in order
    waiting: dict[str, deque] = field(default_factory=dict)  # raw chunks not yet taken, per modality (bounded)
    waiting_bytes: int = 0  # the bytes of every message received and not yet taken (bounded by the front-end)
    partial_rows: int = 0  # the newest held phrase rows that came from a partial transcript (final: false)
    budgets: dict[str, MediaBudget] = field(default_factory=dict)  # per raw timed modality

    def accept_seq(self, seq: int) -> bool:
        """Sequence numbers only grow; a message that goes back is refused."""
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def check_chunk(self, raw: RawModality, message: p.Message) -> p.Message:
        """A raw chunk of a modality the session opened; an audio chunk at the hello's rate."""
        if raw.name not in self.modalities:
            raise p.ProtocolError(p.UNKNOWN_MODALITY, f"{raw.name} was not opened: this session sends "
                                  f"{list(self.modalities)} (say so in hello)", self.id, message.seq)
        return self.at_hello_rate(message) if isinstance(message, p.Audio) else message

    def at_hello_rate(self, audio: p.Audio) -> p.Audio:
        """An audio chunk at the rate the session's hello named: a chunk that names none is at it, one
        at another rate is refused (the session's audio is one stream, at one rate)."""
        if audio.sample_rate is None:
            return dataclasses.replace(audio, sample_rate=self.sample_rate)
        if audio.sample_rate != self.sample_rate:
            raise p.ProtocolError(p.BAD_FIELD, f"audio at {audio.sample_rate} Hz: this session's hello said "
                                  f"sample_rate {self.sample_rate}; send its audio at that rate (or leave the "
                                  "rate out), or open a session at this one", self.id, audio.seq)
        return audio

    def within_budget(self, raw: RawModality, message: p.Message, now: float, speed: float, burst_s: float) -> bool:
        """Whether a chunk's seconds of media fit the session's budget for its modality (and take them)."""
        if not raw.timed:  # text: bounded by the waiting messages instead
            return True
        budget = self.budgets.setdefault(raw.name, MediaBudget(speed, burst_s, burst_s, now))
        return budget.take(raw.seconds(message), now)

    def admit(self, message: p.Message, raw: RawModality | None, max_messages: int, max_bytes: int) -> None:
        """Refuse a message the session has no room for: its waiting messages and bytes are bounded
        (raw chunks that may be dropped, by their own keep rules)."""
        size = message_bytes(message)
        bounded = raw is not None and raw.keep != "all"
        if not bounded and self.inbox.qsize() >= max_messages:
            raise p.ProtocolError(p.BUSY, f"session {self.id!r} has {self.inbox.qsize()} messages waiting, the "
                                  f"limit is {max_messages}: send slower", self.id, message.seq)
        if self.waiting_bytes + size > max_bytes:
            raise p.ProtocolError(p.BUSY, f"session {self.id!r} has {self.waiting_bytes} bytes waiting and this "
                                  f"message is {size}, the limit is {max_bytes}: send slower or smaller", self.id,
                                  message.seq)
        self.waiting_bytes += size

    def queue_chunk(self, message: p.Message, raw: RawModality, keep: int | None) -> bool:
        """A raw chunk waits for the worker, with a token in the inbox; True if the oldest waiting
        chunk was dropped for it (its bytes released, its token now serving the newest)."""
        chunks = self.chunks(raw.name, keep)
        dropped = len(chunks) == chunks.maxlen
        if dropped:
            self.release(chunks.popleft())
        chunks.append(message)
        if not dropped:
            self.inbox.put_nowait(raw)
        return dropped

    def hold(self, modality: str, features: np.ndarray, mask: np.ndarray) -> None:
        self.pending.setdefault(modality, Window()).add(features, mask)

    def chunks(self, modality: str, keep: int | None) -> deque:
        """The raw chunks of a modality waiting for the worker: at most `keep` (None: all)."""
        return self.waiting.setdefault(modality, deque(maxlen=keep))

    def hold_phrase(self, modality: str, features: np.ndarray, mask: np.ndarray, final: bool) -> None:
        """A transcript phrase; a partial one (final: false) is replaced by the next, partial or final."""
        if modality in self.pending:
            self.pending[modality].drop_last(self.partial_rows)
        self.hold(modality, features, mask)
        self.partial_rows = 0 if final else len(features)

    def release(self, message) -> None:
        """A waiting message was taken or dropped: its bytes no longer count."""
        self.waiting_bytes -= message_bytes(message)

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
        self.partial_rows = 0  # a partial phrase taken into a step is no longer one to replace
        return steps


def message_bytes(message) -> int:
    """What a waiting message holds in memory, as the per-session budget counts it."""
    if isinstance(message, p.Video):
        return len(message.jpeg) if message.jpeg is not None else message.frame.nbytes
    if isinstance(message, p.Audio):
        return message.pcm.nbytes
    if isinstance(message, p.Signal):
        return message.values.nbytes
    if isinstance(message, p.Features):
        return message.features.nbytes + message.mask.nbytes
    if isinstance(message, p.Text):
        return len(message.text) * 4  # at most 4 bytes a character in UTF-8
    return 0
