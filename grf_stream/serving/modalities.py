"""The raw modalities a client streams, one row each: everything the front-end knows of them.

A raw modality arrives as chunks in its own message type; its extractor turns a chunk into feature
rows. The row says how a chunk is read out of its message, how many chunks may wait for the
session's worker before the oldest is dropped (`keep`), whether its rows come at a rate (cut into
windows of `window_s`, and flushed from the extractor when a segment ends) or as phrases (a step
per final phrase), and what to tell a client whose chunk cannot be read. Adding a raw modality
means its extractor (grf_stream/features), its message (protocol.py) and a row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from grf_stream.features.audio import AudioChunk
from grf_stream.serving import protocol as p


@dataclass(frozen=True)
class RawModality:
    name: str
    message: type  # the message class that carries its chunks
    chunk: Callable[[Any], Any]  # message -> what its extractor takes
    keep: str  # "newest": one chunk waits, a newer one replaces it; "queue": max_audio_chunks wait; "all"
    timed: bool  # rows at a rate (windows of window_s, flushed at segment end); else one step per final phrase
    bad_chunk: str  # the error code of a chunk its extractor cannot read
    help: str  # what to send instead


RAW_MODALITIES = (
    RawModality("video", p.Video, lambda m: m.jpeg if m.jpeg is not None else m.frame, "newest", True, p.BAD_JPEG,
                "JPEG bytes or a raw uint8 frame (H, W, 3) in BGR order"),
    RawModality("audio", p.Audio, lambda m: AudioChunk(m.pcm, m.sample_rate), "queue", True, p.BAD_FIELD,
                "PCM16 mono little-endian samples with their sample rate"),
    RawModality("text", p.Text, lambda m: m.text, "all", False, p.BAD_FIELD, "non-empty UTF-8 text"),
)
BY_MESSAGE = {raw.message: raw for raw in RAW_MODALITIES}
BY_NAME = {raw.name: raw for raw in RAW_MODALITIES}
