"""The front-end: decoded messages in, work to extractors and fusion, replies out. No sockets, no Ray.

`serve.py` feeds it from a ZeroMQ ROUTER socket and sends what it puts in `outbox`; tests feed it
messages directly ("these messages in, these out").

- `handle` only decodes, checks and queues, so the socket loop never waits on one session.
- Each session has a worker task that takes its messages in order: raw chunks go to the
  extractors, feature rows become steps by the session's window policy (`segment`: one step per
  modality when the segment ends; `window`: every `window_s` seconds of audio or video, every final
  transcript phrase, every `features` message).
- Late data: a session keeps only its newest waiting video frame and a bounded queue of audio
  chunks (the oldest dropped); text is never dropped. Drops are counted per session.
- Steps of all sessions go to the batcher (batcher.py), which fuses them batched per fusion shard
  and hands each result back to `deliver`.
- Every session is bounded: the messages and bytes waiting for its worker, the rows of a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from grf_stream.serving import protocol as p
from grf_stream.serving.batcher import Batcher, Control
from grf_stream.serving.engine import FusionBackend, SeededFusion, StepRequest, StepResult
from grf_stream.serving.modalities import BY_NAME, RawModality, raw_modality
from grf_stream.serving.session import Session, message_bytes
from grf_stream.windows import cut, window_rows


class ExtractorBackend(Protocol):
    """Where raw chunks become feature rows (per session state lives there)."""

    async def extract(self, modality: str, session: str, chunk: Any) -> tuple[np.ndarray, np.ndarray]: ...
    async def flush(self, modality: str, session: str) -> tuple[np.ndarray, np.ndarray]: ...
    async def close(self, session: str) -> None: ...


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
    limits: p.Limits = p.Limits()  # what a message and a step may hold; told to clients in welcome


STATS_EVERY_S = 0.25  # how fresh the numbers a `stats` request gets are
# Error replies per connection: a burst, then a rate. Beyond it errors are counted, not sent: a client
# flooding bad messages would otherwise fill the one reply queue and delay every other session's replies.
ERROR_BURST, ERROR_REPLIES_PER_S = 100, 100.0


class FrontEnd:
    def __init__(self, modalities: dict[str, int], rates: dict[str, float], fusion: FusionBackend,
                 extractors: ExtractorBackend | None, config: FrontEndConfig,
                 clock: Callable[[], float] = time.monotonic, feature_spec: dict[str, dict] | None = None):
        self.modalities = modalities  # what the model fuses: name -> feature size
        self.rates = rates  # feature rows per second of each raw modality (window policy)
        self.fusion = SeededFusion(fusion)  # keeps every session's state to seed a restarted shard with
        self.extractors, self.config, self.clock = extractors, config, clock
        self.feature_spec = feature_spec or {}  # told to clients in welcome
        self.sessions: dict[str, Session] = {}
        self.workers: dict[str, asyncio.Task] = {}
        self.outbox: asyncio.Queue[tuple[bytes, p.Message]] = asyncio.Queue()
        self.batcher = Batcher(self.fusion, config.max_batch, config.max_wait_ms, config.max_queued_steps, clock,
                               self.deliver, self.step_failed)
        # (session, seq, modality) -> (when its first window was queued, windows of it not yet answered):
        # one chunk can complete several windows, and each is timed from the same moment.
        self.received_at: dict[tuple[str, int, str], tuple[float, int]] = {}
        self.stats = {"steps": 0, "errors": 0, "drops": 0, "errors_unanswered": 0}
        self.gates: dict[str, list[float]] = {}  # modality -> mean gate of each fusion step, since the board read them
        self.recent: deque[tuple[float, float]] = deque(maxlen=10_000)  # (when, latency ms) of recent steps
        self.cached_numbers: tuple[float, dict[str, float]] | None = None  # (when, numbers) told to clients
        self.error_tokens: dict[bytes, tuple[float, float]] = {}  # connection -> (error replies it may get, when)

    # -- messages in -------------------------------------------------------------------------

    async def handle(self, identity: bytes, data: bytes) -> None:
        """One client message; every problem becomes an error reply, nothing propagates."""
        try:
            message = p.decode(data, self.config.limits)
            if isinstance(message, p.Hello):
                self.open(identity, message)
            elif isinstance(message, p.StatsRequest):
                self.send(identity, p.ServerStats(message.session, message.seq, time.time(), self.client_numbers()))
            else:
                self.route(identity, message)
        except p.ProtocolError as error:
            self.reply_error(identity, error.code, error.message, error.session, error.seq)
        except Exception as error:  # a bug of ours must not take the server, or other sessions, down
            self.reply_error(identity, p.INTERNAL, f"the server failed on this message: {_cause(error)}", None, None)

    def route(self, identity: bytes, message: p.Message) -> None:
        """Into the session's inbox, applying the late-data rules."""
        session = self.sessions.get(message.session)
        if session is not None and session.identity != identity:
            session = None  # another connection's session: as good as unknown to this one
        if session is None or session.closing:
            state = "is closing" if session is not None else "is not open: send hello first"
            raise p.ProtocolError(p.UNKNOWN_SESSION, f"session {message.session!r} {state}",
                                  message.session, message.seq)
        if not session.accept_seq(message.seq):
            raise p.ProtocolError(p.SEQ_BACKWARDS, f"seq {message.seq} is not after {session.last_seq}: "
                                  "seq must increase within a session", message.session, message.seq)
        session.last_seen = self.clock()
        raw = raw_modality(message)
        if raw is not None and raw.name not in session.modalities:
            raise p.ProtocolError(p.UNKNOWN_MODALITY, f"{raw.name} was not opened: this session sends "
                                  f"{list(session.modalities)} (say so in hello)", session.id, message.seq)
        self.admit(session, message, raw)
        if raw is None:
            session.inbox.put_nowait(message)
            return
        chunks = session.chunks(raw.name, self.waiting_chunks(raw))
        if len(chunks) == chunks.maxlen:  # the oldest goes, its bytes released; its token serves the newest
            self.count_drop(session, raw.name)
            session.release(chunks.popleft())
            chunks.append(message)
            return
        chunks.append(message)
        session.inbox.put_nowait(raw)  # a token: the worker takes the oldest chunk waiting then

    def waiting_chunks(self, raw: RawModality) -> int | None:
        return {"newest": 1, "queue": self.config.max_audio_chunks, "all": None}[raw.keep]

    def admit(self, session: Session, message: p.Message, raw: RawModality | None) -> None:
        """Refuse a message the session has no room for: its waiting messages and bytes are bounded."""
        size = message_bytes(message)
        bounded = raw is not None and raw.keep != "all"  # by their own keep rules
        if not bounded and session.inbox.qsize() >= self.config.max_waiting_messages:
            raise p.ProtocolError(p.BUSY, f"session {session.id!r} has {session.inbox.qsize()} messages waiting, the "
                                  f"limit is {self.config.max_waiting_messages}: send slower", session.id, message.seq)
        if session.waiting_bytes + size > self.config.max_waiting_bytes:
            raise p.ProtocolError(p.BUSY, f"session {session.id!r} has {session.waiting_bytes} bytes waiting and this "
                                  f"message is {size}, the limit is {self.config.max_waiting_bytes}: send slower or "
                                  "smaller", session.id, message.seq)
        session.hold_bytes(size)

    def open(self, identity: bytes, hello: p.Hello) -> None:
        """Check a hello and start the session's worker, which opens it on the fusion side and then
        says welcome: the socket loop never waits for a fusion actor (one may be restarting)."""
        if hello.session in self.sessions:
            raise p.ProtocolError(p.BAD_STATE, f"session {hello.session!r} is already open", hello.session, hello.seq)
        if len(self.sessions) >= self.config.max_sessions:  # closing ones count until they are gone
            raise p.ProtocolError(p.BUSY, f"{len(self.sessions)} sessions are open, the limit is "
                                  f"{self.config.max_sessions}: try again later", hello.session, hello.seq)
        unknown = [m for m in hello.modalities if m not in self.modalities]
        if unknown:
            raise p.ProtocolError(p.UNKNOWN_MODALITY, f"modality {unknown[0]!r} is not served: this model fuses "
                                  f"{sorted(self.modalities)}", hello.session, hello.seq)
        session = Session(hello.session, identity, tuple(hello.modalities), hello.window, hello.window_s,
                          hello.sample_rate, hello.carry_context, self.clock(), last_seq=hello.seq)
        self.sessions[session.id] = session  # messages that come before the welcome wait in its inbox
        self.workers[session.id] = asyncio.create_task(self.work(session, hello.seq))

    async def welcome(self, session: Session, seq: int) -> bool:
        """Open the session on the fusion side, then welcome it; False (and an error) if that failed."""
        try:
            await self.fusion.open(self.batcher.shard(session.id), session.id, None)
        except Exception as error:
            self.reply_error(session.identity, p.INTERNAL, f"the session could not be opened: {_cause(error)}. Send "
                             "hello again", session.id, seq)
            self.sessions.pop(session.id, None)
            self.workers.pop(session.id, None)
            return False
        limits = {**dataclasses.asdict(self.config.limits), "max_sessions": self.config.max_sessions,
                  "idle_timeout_s": self.config.idle_timeout_s, "max_waiting_bytes": self.config.max_waiting_bytes}
        self.send(session.identity, p.Welcome(session.id, seq, time.time(), sorted(self.modalities), self.feature_spec,
                                              limits, p.VERSION))
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
                self.reply_error(session.identity, error.code, error.message, session.id, error.seq)
            except Exception as error:  # an extractor or backend failure: this message only
                kind = message.name if isinstance(message, RawModality) else type(message).__name__.lower()
                self.reply_error(session.identity, p.INTERNAL, f"{kind} failed: {error}", session.id,
                                 getattr(message, "seq", None))

    async def process(self, session: Session, message: p.Message | RawModality) -> None:
        if isinstance(message, RawModality):  # a token: the oldest chunk of that modality waiting
            await self.on_chunk(session, message)
            return
        session.release(message)
        if isinstance(message, p.Features):
            await self.on_features(session, message)
        elif isinstance(message, p.SegmentEnd):
            await self.on_segment_end(session, message.seq)
        elif isinstance(message, p.Bye):
            await self.on_segment_end(session, message.seq)
            await self.close(session, "bye")

    async def on_chunk(self, session: Session, raw: RawModality) -> None:
        chunks = session.chunks(raw.name, self.waiting_chunks(raw))
        if not chunks:
            return
        message = chunks.popleft()
        session.release(message)
        rows, mask = await self.extract(session, raw, message)
        if raw.timed:
            await self.on_rows(session, raw.name, message.seq, rows, mask)
        else:
            await self.on_phrase(session, raw.name, message, rows, mask)

    async def extract(self, session: Session, raw: RawModality, message) -> tuple[np.ndarray, np.ndarray]:
        if self.extractors is None:
            raise p.ProtocolError(p.BAD_STATE, f"{raw.name} needs the feature extractors, which this server does "
                                  "not run: send features", session.id, message.seq)
        try:
            return await self.extractors.extract(raw.name, session.id, raw.chunk(message))
        except Exception as error:
            raise p.ProtocolError(raw.bad_chunk, f"{raw.name} chunk could not be read ({_cause(error)}): send "
                                  f"{raw.help}", session.id, message.seq) from error

    async def on_features(self, session: Session, message: p.Features) -> None:
        expected = self.modalities.get(message.modality)
        if message.modality not in session.modalities:
            raise p.ProtocolError(p.UNKNOWN_MODALITY, f"modality {message.modality!r} was not opened: this "
                                  f"session sends {list(session.modalities)}", session.id, message.seq)
        if message.features.shape[1] != expected:
            raise p.ProtocolError(p.BAD_SHAPE, f"{message.modality} features have size {message.features.shape[1]}:"
                                  f" this model takes {expected}", session.id, message.seq)
        mask = message.mask if message.mask is not None else np.ones(len(message.features), bool)
        held = session.held_rows(message.modality) if session.policy == "segment" else 0
        self.check_step_rows(session, message.modality, held + len(mask), message.seq)
        if session.policy == "segment":
            session.hold(message.modality, message.features, mask)
        else:
            await self.submit(session, message.seq, message.modality, message.features, mask)

    async def on_phrase(self, session: Session, modality: str, message: p.Text, rows: np.ndarray,
                        mask: np.ndarray) -> None:
        """A transcript phrase: held (a partial one replaced by the next), one step when final in window policy."""
        held = session.held_rows(modality) - session.partial_rows  # a partial is replaced, not added to
        self.check_step_rows(session, modality, held + len(rows), message.seq)
        session.hold_phrase(modality, rows, mask, message.final)
        if session.policy == "window" and message.final:  # one step per finished phrase
            for _, features, held_mask in session.take_pending([modality]):
                await self.submit(session, message.seq, modality, features, held_mask)

    async def on_rows(self, session: Session, modality: str, seq: int, rows: np.ndarray, mask: np.ndarray) -> None:
        """A timed modality's rows (audio, video): held, and in window policy cut into steps of window_s seconds."""
        if len(rows):
            self.check_step_rows(session, modality, session.held_rows(modality) + len(rows), seq)
            session.hold(modality, rows, mask)
        if session.policy != "window":
            return
        size = window_rows(session.window_s, self.rates[modality])
        windows = cut(session.held_rows(modality), size, ended=False)
        if windows:
            features, held_mask = session.take_rows(modality, windows[-1].stop)
            for window in windows:
                await self.submit(session, seq, modality, features[window], held_mask[window])

    def check_step_rows(self, session: Session, modality: str, rows: int, seq: int) -> None:
        """A step carries at most limits.max_step_rows rows (the model's own limit is never reached)."""
        limit = self.config.limits.max_step_rows
        if rows > limit:
            raise p.ProtocolError(p.TOO_LARGE, f"this {modality} would make a step of {rows} rows, the limit is "
                                  f"{limit}: send shorter phrases or fewer feature steps, or end segments sooner "
                                  "(segment_end)", session.id, seq)

    async def on_segment_end(self, session: Session, seq: int) -> None:
        """Flush the extractors' held-back rows, fuse what the segment holds, then start a new one."""
        if self.extractors is not None:
            for modality in [m for m in session.modalities if m in BY_NAME and BY_NAME[m].timed]:
                rows, mask = await self.extractors.flush(modality, session.id)
                room = self.config.limits.max_step_rows - session.held_rows(modality)
                if len(rows) > room:  # the extractor's last few rows, past a full segment: dropped
                    self.count_drop(session, modality)
                    rows, mask = rows[:max(room, 0)], mask[:max(room, 0)]
                if len(rows):
                    session.hold(modality, rows, mask)
        for modality, features, mask in session.take_pending():
            if mask.any():  # a window of only masked rows (no face at all) tells the model nothing
                await self.submit(session, seq, modality, features, mask)

        async def end() -> None:
            await self.fusion.end_segment(self.batcher.shard(session.id), session.id, session.carry_context)

        await self.batcher.put(session.id, Control(end))

    async def close(self, session: Session, reason: str) -> None:
        """Stop taking the session's messages; it is closed once its queued steps are answered."""
        async def close() -> None:
            self.sessions.pop(session.id, None)
            await self.fusion.close(self.batcher.shard(session.id), session.id)
            if self.extractors is not None:
                await self.extractors.close(session.id)
            self.send(session.identity, p.Closed(session.id, session.last_seq, time.time(), reason,
                                                 dict(session.stats)))

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
            self.send(session.identity, p.Closed(session.id, session.last_seq, time.time(), "server_shutdown",
                                                 dict(session.stats)))
        self.sessions.clear()

    async def reap_idle(self) -> None:
        """Close the sessions that sent nothing for idle_timeout_s."""
        now = self.clock()
        idle = [s for s in self.sessions.values() if not s.closing and now - s.last_seen > self.config.idle_timeout_s]
        refilled = ERROR_BURST / ERROR_REPLIES_PER_S  # a bucket untouched this long is full: forget it
        self.error_tokens = {k: v for k, v in self.error_tokens.items() if now - v[1] < refilled}
        for session in idle:
            await self.close(session, "idle_timeout")

    # -- steps ------------------------------------------------------------------------------

    async def submit(self, session: Session, seq: int, modality: str, features: np.ndarray, mask: np.ndarray) -> None:
        key = (session.id, seq, modality)
        queued_at, waiting = self.received_at.get(key, (self.clock(), 0))
        self.received_at[key] = (queued_at, waiting + 1)
        request = StepRequest(session.id, seq, modality, np.ascontiguousarray(features, np.float32), mask)
        await self.batcher.put(session.id, request)

    def forget_timing(self, session: str, seq: int, modality: str) -> float | None:
        """When a step's chunk was first queued; forgotten once its last window is answered."""
        key = (session, seq, modality)
        if key not in self.received_at:
            return None
        queued_at, waiting = self.received_at[key]
        if waiting > 1:
            self.received_at[key] = (queued_at, waiting - 1)
        else:
            del self.received_at[key]
        return queued_at

    def step_failed(self, request: StepRequest, error: BaseException) -> None:
        self.forget_timing(request.session, request.seq, request.modality)
        self.reply_error_to_session(request.session, p.INTERNAL, f"step failed: {_cause(error)}", request.seq)

    def deliver(self, result: StepResult) -> None:
        session = self.sessions.get(result.session)
        started = self.forget_timing(result.session, result.seq, result.modality)
        if session is None:  # closed while its step was in flight
            return
        session.stats["steps"] += 1
        latency_ms = (self.clock() - started) * 1000 if started is not None else 0.0
        self.recent.append((self.clock(), latency_ms))
        if result.step > 1:  # a segment's first step has no gate
            self.gates.setdefault(result.modality, []).append(result.gate)
        self.stats["steps"] += 1
        self.send(session.identity, p.Prediction(
            result.session, result.seq, time.time(), result.segment, result.step, result.modality,
            list(result.modalities), result.value, result.gate, latency_ms))

    def client_numbers(self) -> dict[str, float]:
        """live_numbers for `stats` requests, computed at most every STATS_EVERY_S: percentiles over
        10,000 latencies cost about a millisecond, and a client may ask thousands of times a second."""
        now = self.clock()
        if self.cached_numbers is None or now - self.cached_numbers[0] >= STATS_EVERY_S:
            self.cached_numbers = (now, self.live_numbers())
        return self.cached_numbers[1]

    def live_numbers(self, window_s: float = 10.0) -> dict[str, float]:
        """What `client --stats` and TensorBoard show: the last `window_s` seconds, and totals since the start."""
        now = self.clock()
        latencies = [ms for at, ms in self.recent if now - at <= window_s]
        numbers = {"active_sessions": len(self.sessions), "steps_per_s": len(latencies) / window_s,
                   "steps": self.stats["steps"], "errors": self.stats["errors"], "drops": self.stats["drops"],
                   "errors_unanswered": self.stats["errors_unanswered"]}
        if latencies:
            numbers["step_latency_p50_ms"] = float(np.percentile(latencies, 50))
            numbers["step_latency_p99_ms"] = float(np.percentile(latencies, 99))
        return numbers

    # -- messages out ------------------------------------------------------------------------

    def send(self, identity: bytes, message: p.Message) -> None:
        self.outbox.put_nowait((identity, message))

    def count_drop(self, session: Session, modality: str) -> None:
        session.stats[f"drops_{modality}"] += 1
        self.stats["drops"] += 1

    def reply_error(self, identity: bytes, code: str, message: str, session: str | None, seq: int | None) -> None:
        self.stats["errors"] += 1
        if session in self.sessions:
            self.sessions[session].stats["errors"] += 1
        if self.may_answer_error(identity):
            self.send(identity, p.Error(session, seq, time.time(), code, message))
        else:
            self.stats["errors_unanswered"] += 1

    def may_answer_error(self, identity: bytes) -> bool:
        """A token bucket per connection: ERROR_BURST error replies, refilled at ERROR_REPLIES_PER_S."""
        now = self.clock()
        tokens, since = self.error_tokens.get(identity, (ERROR_BURST, now))
        tokens = min(ERROR_BURST, tokens + (now - since) * ERROR_REPLIES_PER_S)
        self.error_tokens[identity] = (tokens - 1 if tokens >= 1 else tokens, now)
        return tokens >= 1

    def reply_error_to_session(self, session: str, code: str, message: str, seq: int | None) -> None:
        if session in self.sessions:
            self.reply_error(self.sessions[session].identity, code, message, session, seq)




def _cause(error: BaseException) -> str:
    """The root message of an error, without Ray's wrapping."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__



class InProcessExtractors:
    """The extraction backend in this process: extractors run on one worker thread, off the event loop."""

    def __init__(self, extractors: dict[str, Any]):
        from concurrent.futures import ThreadPoolExecutor

        self.extractors = extractors
        self.thread = ThreadPoolExecutor(max_workers=1)  # one at a time: extractors are not thread-safe

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    async def extract(self, modality: str, session: str, chunk) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(self.extractors[modality].extract, chunk, session)

    async def flush(self, modality: str, session: str) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(self.extractors[modality].flush, session)

    async def close(self, session: str) -> None:
        for extractor in self.extractors.values():
            await self._run(extractor.close, session)
