"""The raw modalities a client streams, one row each: everything the front-end knows of them.

A raw modality arrives as chunks in a message; its extractor turns a chunk into feature rows. The
row says how a chunk is read out of its message, how many chunks may wait for the session's
worker before the oldest is dropped (`keep`), whether its rows come at a rate (cut into windows of
`window_s`, and flushed from the extractor when a segment ends) or as phrases (a step per final
phrase), and what to tell a client whose chunk cannot be read.

The three built-in modalities have messages of their own (video, audio, text). Any other one, a
pulse, skin conductance, a joystick, comes in `signal` messages that name it, and is added without
touching this package: a module that calls `register` with its row and its extractor, loaded by the
server with `plugins=[module]` (README, "A modality of your own").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from grf_stream.features import EXTRACTORS, Extractor
from grf_stream.features.audio import AudioChunk
from grf_stream.features.base import SignalChunk
from grf_stream.features.video import FRAME_RATE
from grf_stream.serving import protocol as p


@dataclass(frozen=True)
class RawModality:
    name: str
    message: type  # the message class that carries its chunks
    chunk: Callable[[Any], Any]  # message -> what its extractor takes
    keep: str  # "newest": one chunk waits, a newer one replaces it; "queue": max_audio_chunks wait; "all"
    bad_chunk: str  # the error code of a chunk its extractor cannot read
    help: str  # what to send instead
    seconds: Callable[[Any], float] | None = None  # message -> seconds of media it holds (None: not timed)

    @property
    def timed(self) -> bool:
        """Rows at a rate (windows of window_s, flushed at segment end); else one step per final phrase."""
        return self.seconds is not None

    def waiting(self, queue: int) -> int | None:
        """How many of its chunks may wait for a session's worker (None: all); `queue` for a queue."""
        return {"newest": 1, "queue": queue, "all": None}[self.keep]


def signal_modality(name: str, help: str) -> RawModality:
    """The row of a sampled sensor sent as `signal` messages: its chunks queue as audio's do."""
    return RawModality(name, p.Signal, lambda m: SignalChunk(m.values, m.rate), "queue", p.BAD_FIELD, help,
                       lambda m: len(m.values) / m.rate)


RAW_MODALITIES = [
    RawModality("video", p.Video, lambda m: m.jpeg if m.jpeg is not None else m.frame, "newest", p.BAD_JPEG,
                "JPEG bytes or a raw uint8 frame (H, W, 3) in BGR order", lambda m: 1 / FRAME_RATE),
    RawModality("audio", p.Audio, lambda m: AudioChunk(m.pcm, m.sample_rate), "queue", p.BAD_FIELD,
                "PCM16 mono little-endian samples with their sample rate", lambda m: len(m.pcm) / m.sample_rate),
    RawModality("text", p.Text, lambda m: m.text, "all", p.BAD_FIELD, "non-empty UTF-8 text"),
]
BY_MESSAGE = {raw.message: raw for raw in RAW_MODALITIES}  # the built-in modalities' own messages
BY_NAME = {raw.name: raw for raw in RAW_MODALITIES}


def register(raw: RawModality, extractor: type[Extractor]) -> None:
    """Add a raw modality: its row here and its extractor in grf_stream.features' registry. A modality
    of one's own comes in `signal` messages (build its row with `signal_modality`)."""
    if raw.name in BY_NAME and EXTRACTORS.get(raw.name) is not extractor:
        raise ValueError(f"modality {raw.name!r} is already registered: give yours another name")
    if raw.message is not p.Signal:
        raise ValueError(f"modality {raw.name!r}: a modality of one's own comes in signal messages "
                         "(build its row with signal_modality)")
    missing = [a for a in ("name", "version", "size", "rate") if not hasattr(extractor, a)]
    if missing:
        raise ValueError(f"{extractor.__name__} does not set {', '.join(missing)}: an extractor says what it "
                         "produces (see grf_stream/features/base.py)")
    RAW_MODALITIES[:] = [r for r in RAW_MODALITIES if r.name != raw.name] + [raw]
    BY_NAME[raw.name] = raw
    EXTRACTORS[raw.name] = extractor


def raw_modality(message: p.Message) -> RawModality | None:
    """The raw modality a message carries a chunk of; None for the other messages (features, control)."""
    if isinstance(message, p.Signal):
        raw = BY_NAME.get(message.modality)
        if raw is None or raw.message is not p.Signal:
            raise p.ProtocolError(p.UNKNOWN_MODALITY, f"no signal modality {message.modality!r} is served: "
                                  f"this server takes signals of {signal_names() or 'none'}", message.session,
                                  message.seq)
        return raw
    return BY_MESSAGE.get(type(message))


def signal_names() -> list[str]:
    return [raw.name for raw in RAW_MODALITIES if raw.message is p.Signal]
