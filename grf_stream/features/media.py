"""Decoding recorded media for offline extraction, with PyAV (FFmpeg's libraries; no ffmpeg binary).

Audio comes out as one float chunk at the file's own rate (the audio extractor resamples it);
video comes out as BGR frames sampled at the video extractor's fixed rate, so every stored video
row is 1/30 s whatever the file's frame rate: a 25 fps file repeats a frame now and then, a 60 fps
file skips every other one. Optional `start`/`end` (seconds from the file's start) cut a segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from grf_stream.features.audio import AudioChunk

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")


class MediaError(RuntimeError):
    """A file that could not be opened or decoded."""


def read_audio(path: str | Path, start: float | None = None, end: float | None = None) -> AudioChunk | None:
    """The file's first audio stream, channels averaged to mono; None when it has no audio."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            samples, first_time = _decode_audio(container, stream)
            rate = stream.rate
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(f"{path}: cannot decode audio ({error}); check the file plays, or re-encode it") from error
    first = max(0, round(((start or 0.0) - first_time) * rate)) if start is not None else 0
    last = max(first, round((end - first_time) * rate)) if end is not None else len(samples)
    return AudioChunk(samples[first:last], rate)


def _decode_audio(container, stream) -> tuple[np.ndarray, float]:
    to_planar_float = av.AudioResampler(format="fltp")  # (channels, n) float32, rate and layout kept
    parts, first_time = [], None
    for frame in container.decode(stream):
        if first_time is None:
            first_time = frame.time or 0.0
        parts += [resampled.to_ndarray() for resampled in to_planar_float.resample(frame)]
    parts += [resampled.to_ndarray() for resampled in to_planar_float.resample(None)]
    if not parts:
        return np.zeros(0), 0.0
    return np.concatenate(parts, axis=1).mean(axis=0, dtype=np.float64), first_time or 0.0


def video_frames(path: str | Path, fps: float, start: float | None = None, end: float | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames at `fps`: at each tick k / fps the frame on screen then (sample and hold)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return
            stream = container.streams.video[0]
            if start:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)  # the keyframe before start
            yield from _sample_and_hold(_timed_frames(container, stream), fps, start, end)
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(f"{path}: cannot decode video ({error}); check the file plays, or re-encode it") from error


def _timed_frames(container, stream) -> Iterator[tuple[float, av.VideoFrame | None]]:
    """(time, frame) pairs, then (time the last frame leaves the screen, None)."""
    period, time = 1 / float(stream.average_rate or 30), None
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index * period  # some AVI files carry no timestamps
        yield time, frame
    if time is not None:
        yield time + period, None


def _sample_and_hold(timed: Iterator, fps: float, start: float | None, end: float | None) -> Iterator[np.ndarray]:
    origin, tick, held = start, 0, None
    for time, frame in timed:
        if origin is None:
            origin = time
        until = time if end is None else min(time, end)
        pixels = None
        while held is not None and origin + tick / fps < until - 1e-6:  # ticks while `held` is on screen
            pixels = held.to_ndarray(format="bgr24") if pixels is None else pixels
            yield pixels
            tick += 1
        if frame is None or (end is not None and time >= end):
            return
        held = frame
