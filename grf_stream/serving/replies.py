"""What the front-end answers: predictions, errors (a budget per connection), closes, live numbers."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from grf_stream.serving import protocol as p
from grf_stream.serving.engine import StepRequest, StepResult
from grf_stream.serving.numbers import LiveNumbers
from grf_stream.serving.policy import cause
from grf_stream.serving.session import Session

# Error replies per connection: a burst, then a rate. Beyond it errors are counted, not sent: a client
# flooding bad messages would otherwise fill the one reply queue and delay every other session's replies.
ERROR_BURST, ERROR_REPLIES_PER_S = 100, 100.0
# Messages a connection may have thrown away (refused with an error, or dropped) at once and a second.
# Beyond it the socket loop pauses DISCARD_PAUSE_S after each of its messages: ZeroMQ serves the
# connections in turn, so a flood is then read at most about 1/DISCARD_PAUSE_S messages a second (its
# sender waits on a full connection) while every other connection waits at most one pause per
# flooding connection; without it the server spends a core on reading and throwing away.
DISCARD_BURST, DISCARDS_PER_S, DISCARD_PAUSE_S = 200, 200.0, 0.001


class TokenBucket:
    """Per connection: `burst` tokens, refilled at `per_s` a second."""

    def __init__(self, burst: float, per_s: float, clock: Callable[[], float]):
        self.burst, self.per_s, self.clock = burst, per_s, clock
        self.tokens: dict[bytes, tuple[float, float]] = {}  # connection -> (tokens left, when)

    def left(self, identity: bytes) -> float:
        """Tokens left now; reading them stores nothing (a connection never charged has no bucket)."""
        if identity not in self.tokens:
            return self.burst
        tokens, since = self.tokens[identity]
        return min(self.burst, tokens + (self.clock() - since) * self.per_s)

    def take(self, identity: bytes) -> bool:
        """A token if one is left (True), else False."""
        tokens = self.left(identity)
        self.tokens[identity] = (tokens - 1 if tokens >= 1 else tokens, self.clock())
        return tokens >= 1

    def forget_full(self) -> None:
        """A bucket untouched long enough to be full again is the same as none: forget it."""
        refilled = self.burst / self.per_s
        self.tokens = {k: v for k, v in self.tokens.items() if self.clock() - v[1] < refilled}


class Replies:
    """The one queue of replies the socket loop sends, and the numbers of what went into it."""

    def __init__(self, sessions: dict[str, Session], clock: Callable[[], float]):
        self.sessions = sessions  # the front-end's session table: whom a result or an error goes to
        self.outbox: asyncio.Queue[tuple[bytes, p.Message]] = asyncio.Queue()
        self.numbers = LiveNumbers(clock)
        self.error_budget = TokenBucket(ERROR_BURST, ERROR_REPLIES_PER_S, clock)
        self.discards = TokenBucket(DISCARD_BURST, DISCARDS_PER_S, clock)

    def send(self, identity: bytes, message: p.Message) -> None:
        self.outbox.put_nowait((identity, message))

    def prediction(self, result: StepResult) -> None:
        """A step's result, as a prediction to its session (unless it closed while the step was in flight)."""
        queued_at = self.numbers.answered((result.session, result.seq, result.modality))
        session = self.sessions.get(result.session)
        if session is None:
            return
        session.stats["steps"] += 1
        gate = result.gate if result.step > 1 else None  # a segment's first step has no gate
        latency_ms = self.numbers.step(queued_at, result.modality, gate)
        self.send(session.identity, p.Prediction(
            result.session, result.seq, time.time(), result.segment, result.step, result.modality,
            list(result.modalities), result.value, result.gate, latency_ms))

    def step_failed(self, request: StepRequest, error: BaseException) -> None:
        self.numbers.answered((request.session, request.seq, request.modality))
        session = self.sessions.get(request.session)
        if session is not None:
            self.error(session.identity, p.INTERNAL, f"step failed: {cause(error)}", session.id, request.seq)

    def error(self, identity: bytes, code: str, message: str, session: str | None, seq: int | None) -> None:
        self.numbers.counts["errors"] += 1
        if session in self.sessions:
            self.sessions[session].stats["errors"] += 1
        self.discards.take(identity)
        if self.error_budget.take(identity):
            self.send(identity, p.Error(session, seq, time.time(), code, message))
        else:
            self.numbers.counts["errors_unanswered"] += 1

    def drop(self, session: Session, modality: str) -> None:
        session.stats[f"drops_{modality}"] += 1
        self.numbers.counts["drops"] += 1
        self.discards.take(session.identity)

    def pause_after(self, identity: bytes) -> float:
        """How long the socket loop waits after a message of this connection: DISCARD_PAUSE_S once
        it has thrown away more than its discard budget, else 0."""
        return DISCARD_PAUSE_S if self.discards.left(identity) < 1 else 0.0
