"""The front-end: decoded messages in, work to extractors and fusion, replies out. No sockets, no Ray.

`serve.py` feeds it from a ZeroMQ ROUTER socket and sends what it puts in `outbox`; tests feed it
messages directly ("these messages in, these out").

- `handle` only decodes, checks and queues, so the socket loop never waits on one session.
- Each session has a worker task that takes its messages in order; the window policy (policy.py)
  turns them into steps: raw chunks through the extractors, rows cut into windows, phrases.
- Late data: a session keeps only its newest waiting video frame and a bounded queue of audio (and
  signal) chunks, the oldest dropped; text is never dropped. Drops are counted per session.
- Media faster than live: a session's audio, video and signal may run ahead of real time by
  `media_burst_s` and then come at most `max_media_speed` times real time; the rest is dropped on
  arrival (counted), before any extractor spends time on it.
- Steps of all sessions go to the batcher (batcher.py), which fuses them batched per fusion shard,
  each session in turn, and hands each result back to the replies.
- Every session is bounded: the messages and bytes waiting for its worker, the rows of a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from grf_stream.serving import protocol as p
from grf_stream.serving.batcher import Batcher, Control
from grf_stream.serving.engine import FusionBackend, SeededFusion, StepRequest
from grf_stream.serving.modalities import RawModality, raw_modality
from grf_stream.serving.policy import ExtractorBackend, WindowPolicy, cause
from grf_stream.serving.replies import Replies
from grf_stream.serving.session import Session


@dataclass(frozen=True)
class FrontEndConfig:
    max_sessions: int = 256
    idle_timeout_s: float = 30.0
    max_batch: int = 64
    max_wait_ms: float = 0.0  # extra wait to fill a batch; 0: only what queued during the last batch
    max_audio_chunks: int = 50  # waiting audio chunks per session before the oldest is dropped
    max_waiting_messages: int = 256  # per session: text, features and control messages not yet taken
    max_waiting_bytes: int = 16 * 1024 * 1024  # per session: the bytes of every message not yet taken
    max_queued_steps: int = 1024  # per fusion shard; a full queue holds the sessions' workers back
    max_session_steps: int = 16  # per session: steps waiting for fusion; more hold its worker (only its) back
    max_media_speed: float = 8.0  # per session and raw modality: media seconds a second, past the burst
    media_burst_s: float = 60.0  # how far ahead of real time a client may run at once; beyond: dropped
    limits: p.Limits = p.Limits()  # what a message and a step may hold; told to clients in welcome

    def told_to_clients(self) -> dict:
        """The limits a welcome tells: what a message and a step may hold, and the session bounds."""
        return {**dataclasses.asdict(self.limits), "max_sessions": self.max_sessions,
                "idle_timeout_s": self.idle_timeout_s, "max_waiting_bytes": self.max_waiting_bytes,
                "max_media_speed": self.max_media_speed, "media_burst_s": self.media_burst_s}


class FrontEnd:
    def __init__(self, modalities: dict[str, int], rates: dict[str, float], fusion: FusionBackend,
                 extractors: ExtractorBackend | None, config: FrontEndConfig,
                 clock: Callable[[], float] = time.monotonic, feature_spec: dict[str, dict] | None = None):
        self.modalities = modalities  # what the model fuses: name -> feature size
        self.fusion = SeededFusion(fusion)  # keeps every session's state to seed a restarted shard with
        self.config, self.clock = config, clock
        self.feature_spec = feature_spec or {}  # told to clients in welcome
        self.sessions: dict[str, Session] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.replies = Replies(self.sessions, clock)
        self.outbox = self.replies.outbox  # what serve.py sends
        self.policy = WindowPolicy(modalities, rates, extractors, config.limits, self.submit, self.replies.drop)
        self.batcher = Batcher(self.fusion, config.max_batch, config.max_wait_ms, config.max_queued_steps, clock,
                               self.replies.prediction, self.replies.step_failed, config.max_session_steps)

    # -- messages in -------------------------------------------------------------------------

    async def handle(self, identity: bytes, data: bytes | memoryview) -> float:
        """One client message, every problem an error reply; returns the socket loop's pause after it."""
        try:
            message = p.decode(data, self.config.limits)
            if isinstance(message, p.Hello):
                self.open(identity, message)
            elif isinstance(message, p.StatsRequest):
                numbers = self.replies.numbers.for_clients(len(self.sessions))
                self.replies.send(identity, p.ServerStats(message.session, message.seq, time.time(), numbers))
            else:
                self.route(identity, message)
        except p.ProtocolError as error:
            self.replies.error(identity, error.code, error.message, error.session, error.seq)
        except Exception as error:  # a bug of ours must not take the server, or other sessions, down
            self.replies.error(identity, p.INTERNAL, f"the server failed on this message: {cause(error)}", None, None)
        return self.replies.pause_after(identity)

    def route(self, identity: bytes, message: p.Message) -> None:
        """Into the session's inbox, applying the late-data rules."""
        session = open_session(self.sessions, identity, message)
        session.last_seen = self.clock()
        raw = raw_modality(message)
        if raw is not None:
            message = session.check_chunk(raw, message)
            if not session.within_budget(raw, message, self.clock(), self.config.max_media_speed,
                                         self.config.media_burst_s):
                self.replies.drop(session, raw.name)  # faster than any live source: dropped before it costs anything
                return
        session.admit(message, raw, self.config.max_waiting_messages, self.config.max_waiting_bytes)
        if raw is None:
            session.inbox.put_nowait(message)
        elif session.queue_chunk(message, raw, raw.waiting(self.config.max_audio_chunks)):
            self.replies.drop(session, raw.name)

    def open(self, identity: bytes, hello: p.Hello) -> None:
        """Check a hello and start the session's worker, which opens it on the fusion side and then
        says welcome: the socket loop never waits for a fusion actor (one may be restarting)."""
        check_hello(hello, self.sessions, self.config.max_sessions, self.modalities)
        session = Session(hello.session, identity, tuple(hello.modalities), hello.window, hello.window_s,
                          hello.sample_rate, hello.carry_context, self.clock(), last_seq=hello.seq)
        self.sessions[session.id] = session  # messages that come before the welcome wait in its inbox
        self.workers[session.id] = asyncio.create_task(self.work(session, hello.seq))

    async def welcome(self, session: Session, seq: int) -> bool:
        """Open the session on the fusion side, then welcome it; False (and an error) if that failed."""
        try:
            await self.fusion.open(self.batcher.shard(session.id), session.id, None)
        except Exception as error:
            self.replies.error(session.identity, p.INTERNAL, f"the session could not be opened: {cause(error)}. "
                               "Send hello again", session.id, seq)
            self.sessions.pop(session.id, None)
            self.workers.pop(session.id, None)
            return False
        self.replies.send(session.identity, p.Welcome(session.id, seq, time.time(), sorted(self.modalities),
                                                      self.feature_spec, self.config.told_to_clients(), p.VERSION))
        return True

    # -- one session's worker ------------------------------------------------------------------

    async def work(self, session: Session, hello_seq: int) -> None:
        """Open the session, then its messages in order; errors answer that message and the session goes on."""
        if not await self.welcome(session, hello_seq):
            return
        while not session.closing:
            message = await session.inbox.get()
            try:
                await self.process(session, message)
            except p.ProtocolError as error:
                self.replies.error(session.identity, error.code, error.message, session.id, error.seq)
            except Exception as error:  # an extractor or backend failure: this message only
                kind = message.name if isinstance(message, RawModality) else type(message).__name__.lower()
                self.replies.error(session.identity, p.INTERNAL, f"{kind} failed: {error}", session.id,
                                   getattr(message, "seq", None))

    async def process(self, session: Session, message: p.Message | RawModality) -> None:
        if isinstance(message, RawModality):  # a token: the oldest chunk of that modality waiting
            await self.on_chunk(session, message)
            return
        session.release(message)
        if isinstance(message, p.Features):
            await self.policy.features(session, message)
        elif isinstance(message, (p.SegmentEnd, p.Bye)):
            await self.end_segment(session, message.seq)
        if isinstance(message, p.Bye):
            await self.close(session, "bye")

    async def on_chunk(self, session: Session, raw: RawModality) -> None:
        chunks = session.chunks(raw.name, raw.waiting(self.config.max_audio_chunks))
        if chunks:
            message = chunks.popleft()
            session.release(message)
            await self.policy.chunk(session, raw, message)

    async def end_segment(self, session: Session, seq: int) -> None:
        """Fuse what the segment holds, then start a new one (in order with the session's steps)."""
        await self.policy.segment_end(session, seq)

        async def end() -> None:
            await self.fusion.end_segment(self.batcher.shard(session.id), session.id, session.carry_context)

        await self.batcher.put(session.id, Control(end))

    async def close(self, session: Session, reason: str) -> None:
        """Stop taking the session's messages; it is closed once its queued steps are answered."""
        async def close() -> None:
            self.sessions.pop(session.id, None)
            await self.fusion.close(self.batcher.shard(session.id), session.id)
            self.replies.send(session.identity, p.Closed(session.id, session.last_seq, time.time(), reason,
                                                         dict(session.stats)))
            self.policy.forget(session.id)

        if session.closing:
            return
        session.closing = True
        worker = self.workers.pop(session.id, None)
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        await self.batcher.put(session.id, Control(close))

    def shutdown(self) -> None:
        """The server is stopping: every open session hears `closed` (server_shutdown), not silence."""
        for session in list(self.sessions.values()):
            session.closing = True
            self.replies.send(session.identity, p.Closed(session.id, session.last_seq, time.time(),
                                                         "server_shutdown", dict(session.stats)))
        self.sessions.clear()

    async def reap_idle(self) -> None:
        """Close the sessions that sent nothing for idle_timeout_s."""
        now = self.clock()
        idle = [s for s in self.sessions.values() if not s.closing and now - s.last_seen > self.config.idle_timeout_s]
        self.replies.error_budget.forget_full()
        self.replies.discards.forget_full()
        for session in idle:
            await self.close(session, "idle_timeout")

    # -- steps ------------------------------------------------------------------------------

    async def submit(self, session: Session, seq: int, modality: str, features: np.ndarray, mask: np.ndarray) -> None:
        self.replies.numbers.queued((session.id, seq, modality))
        request = StepRequest(session.id, seq, modality, np.ascontiguousarray(features, np.float32), mask)
        await self.batcher.put(session.id, request)


def check_hello(hello: p.Hello, sessions: dict[str, Session], max_sessions: int, served: dict[str, int]) -> None:
    """A hello opens a session only with a new id, a free place, and modalities the model fuses."""
    if hello.session in sessions:
        raise p.ProtocolError(p.BAD_STATE, f"session {hello.session!r} is already open", hello.session, hello.seq)
    if len(sessions) >= max_sessions:  # closing ones count until they are gone
        raise p.ProtocolError(p.BUSY, f"{len(sessions)} sessions are open, the limit is {max_sessions}: try again "
                              "later", hello.session, hello.seq)
    unknown = [m for m in hello.modalities if m not in served]
    if unknown:
        raise p.ProtocolError(p.UNKNOWN_MODALITY, f"modality {unknown[0]!r} is not served: this model fuses "
                              f"{sorted(served)}", hello.session, hello.seq)


def open_session(sessions: dict[str, Session], identity: bytes, message: p.Message) -> Session:
    """The open session a message is for: of this connection, not closing, and the message's seq after its last."""
    session = sessions.get(message.session)
    if session is not None and session.identity != identity:
        session = None  # another connection's session: as good as unknown to this one
    if session is None or session.closing:
        state = "is closing" if session is not None else "is not open: send hello first"
        raise p.ProtocolError(p.UNKNOWN_SESSION, f"session {message.session!r} {state}", message.session, message.seq)
    if not session.accept_seq(message.seq):
        raise p.ProtocolError(p.SEQ_BACKWARDS, f"seq {message.seq} is not after {session.last_seq}: seq must "
                              "increase within a session", message.session, message.seq)
    return session
