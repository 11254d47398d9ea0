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


class ErrorBudget:
    """A token bucket per connection: ERROR_BURST error replies, refilled at ERROR_REPLIES_PER_S."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.tokens: dict[bytes, tuple[float, float]] = {}  # connection -> (error replies it may get, when)

    def may_answer(self, identity: bytes) -> bool:
        now = self.clock()
        tokens, since = self.tokens.get(identity, (ERROR_BURST, now))
        tokens = min(ERROR_BURST, tokens + (now - since) * ERROR_REPLIES_PER_S)
        self.tokens[identity] = (tokens - 1 if tokens >= 1 else tokens, now)
        return tokens >= 1

    def forget_full(self) -> None:
        """A bucket untouched long enough to be full again is the same as none: forget it."""
        refilled = ERROR_BURST / ERROR_REPLIES_PER_S
        self.tokens = {k: v for k, v in self.tokens.items() if self.clock() - v[1] < refilled}


class Replies:
    """The one queue of replies the socket loop sends, and the numbers of what went into it."""

    def __init__(self, sessions: dict[str, Session], clock: Callable[[], float]):
        self.sessions = sessions  # the front-end's session table: whom a result or an error goes to
        self.outbox: asyncio.Queue[tuple[bytes, p.Message]] = asyncio.Queue()
        self.numbers = LiveNumbers(clock)
        self.error_budget = ErrorBudget(clock)

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
        if self.error_budget.may_answer(identity):
            self.send(identity, p.Error(session, seq, time.time(), code, message))
        else:
            self.numbers.counts["errors_unanswered"] += 1

    def drop(self, session: Session, modality: str) -> None:
        session.stats[f"drops_{modality}"] += 1
        self.numbers.counts["drops"] += 1
