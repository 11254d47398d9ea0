"""How one session's messages become fusion steps, by the session's window policy.

- `segment`: rows are held, and each modality's rows become one step when the segment ends.
- `window`: audio and video (any timed modality) become a step every `window_s` seconds
  (grf_stream/windows.py, the rule the trainer uses too), each final transcript phrase one step,
  each `features` message one step; what is left of a window when the segment ends, one last step.

Raw chunks go through the extractors first. A partial transcript (final: false) is held and
replaced by the next one. A step carries at most `limits.max_step_rows` rows, a phrase at most
`limits.max_phrase_rows`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from grf_stream.serving import protocol as p
from grf_stream.serving.modalities import BY_NAME, RawModality
from grf_stream.serving.session import Session
from grf_stream.windows import cut, window_rows

Submit = Callable[[Session, int, str, np.ndarray, np.ndarray], Awaitable[None]]


class ExtractorBackend(Protocol):
    """Where raw chunks become feature rows (per session state lives there)."""

    async def extract(self, modality: str, session: str, chunk: Any) -> tuple[np.ndarray, np.ndarray]: ...
    async def flush(self, modality: str, session: str) -> tuple[np.ndarray, np.ndarray]: ...
    async def close(self, session: str) -> None: ...


class WindowPolicy:
    def __init__(self, modalities: dict[str, int], rates: dict[str, float], extractors: ExtractorBackend | None,
                 limits: p.Limits, submit: Submit, count_drop: Callable[[Session, str], None]):
        self.modalities = modalities  # what the model fuses: name -> feature size
        self.rates = rates  # feature rows per second of each raw modality
        self.extractors, self.limits, self.submit, self.count_drop = extractors, limits, submit, count_drop
        self.forgetting: set[asyncio.Task] = set()  # closed sessions' extractor state being let go

    async def chunk(self, session: Session, raw: RawModality, message: p.Message) -> None:
        """A raw chunk, taken from the session's waiting chunks: extracted, then held or fused."""
        rows, mask = await self.extract(session, raw, message)
        if raw.timed:
            await self.rows(session, raw.name, message.seq, rows, mask)
        else:
            await self.phrase(session, raw.name, message, rows, mask)

    async def extract(self, session: Session, raw: RawModality, message) -> tuple[np.ndarray, np.ndarray]:
        if self.extractors is None:
            raise p.ProtocolError(p.BAD_STATE, f"{raw.name} needs the feature extractors, which this server does "
                                  "not run: send features", session.id, message.seq)
        try:
            return await self.extractors.extract(raw.name, session.id, raw.chunk(message))
        except Exception as error:
            raise p.ProtocolError(raw.bad_chunk, f"{raw.name} chunk could not be read ({cause(error)}): send "
                                  f"{raw.help}", session.id, message.seq) from error

    async def features(self, session: Session, message: p.Features) -> None:
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

    async def phrase(self, session: Session, modality: str, message: p.Text, rows: np.ndarray,
                     mask: np.ndarray) -> None:
        """A transcript phrase: held (a partial one replaced by the next), one step when final in window policy."""
        if len(rows) > self.limits.max_phrase_rows:  # one such step would hold up every session of its shard
            raise p.ProtocolError(p.TOO_LARGE, f"this phrase is {len(rows)} {modality} rows (word pieces), a phrase "
                                  f"is at most {self.limits.max_phrase_rows}: send the transcript phrase by phrase, "
                                  "as each one ends", session.id, message.seq)
        held = session.held_rows(modality) - session.partial_rows  # a partial is replaced, not added to
        self.check_step_rows(session, modality, held + len(rows), message.seq)
        session.hold_phrase(modality, rows, mask, message.final)
        if session.policy == "window" and message.final:  # one step per finished phrase
            for _, features, held_mask in session.take_pending([modality]):
                await self.submit(session, message.seq, modality, features, held_mask)

    async def rows(self, session: Session, modality: str, seq: int, rows: np.ndarray, mask: np.ndarray) -> None:
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
        if rows > self.limits.max_step_rows:
            raise p.ProtocolError(p.TOO_LARGE, f"this {modality} would make a step of {rows} rows, the limit is "
                                  f"{self.limits.max_step_rows}: send shorter phrases or fewer feature steps, or "
                                  "end segments sooner (segment_end)", session.id, seq)

    async def segment_end(self, session: Session, seq: int) -> None:
        """Flush the extractors' held-back rows and fuse what the segment holds (the rest of each window)."""
        if self.extractors is not None:
            for modality in [m for m in session.modalities if m in BY_NAME and BY_NAME[m].timed]:
                rows, mask = await self.extractors.flush(modality, session.id)
                room = self.limits.max_step_rows - session.held_rows(modality)
                if len(rows) > room:  # the extractor's last few rows, past a full segment: dropped
                    self.count_drop(session, modality)
                    rows, mask = rows[:max(room, 0)], mask[:max(room, 0)]
                if len(rows):
                    session.hold(modality, rows, mask)
        for modality, features, mask in session.take_pending():
            if mask.any():  # a window of only masked rows (no face at all) tells the model nothing
                await self.submit(session, seq, modality, features, mask)

    def forget(self, session: str) -> None:
        """A closed session's extractor state goes, in the background: a close runs in its fusion shard's
        loop, and an extractor still busy with the session's backlog would hold up the whole shard."""
        if self.extractors is not None:
            self.forgetting.add(task := asyncio.create_task(self._close_extractors(session)))
            task.add_done_callback(self.forgetting.discard)

    async def _close_extractors(self, session: str) -> None:
        try:
            await self.extractors.close(session)
        except Exception as error:  # the session is gone either way; an actor restart drops its state too
            print(f"grf-stream: closing session {session!r} on the extractors failed: {cause(error)}",
                  file=sys.stderr, flush=True)


def cause(error: BaseException) -> str:
    """The root message of an error, without Ray's wrapping."""
    root = getattr(error, "cause", None) or error.__cause__ or error
    return str(root).strip().splitlines()[-1] if str(root).strip() else type(root).__name__
