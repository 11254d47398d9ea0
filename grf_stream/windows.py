"""The window policy: how a stream's feature rows become fusion steps, one rule for server and trainer.

A timed modality (audio, video) is cut into windows of `window_rows(window_s, rate)` rows; a
window is a step once its last row is in, so the steps of several modalities go in the order
their windows complete. When a stream (or a segment) ends, what is left is one last, shorter step.

The server cuts each session's rows with it as they arrive (serving/frontend.py), the live
training streams and the live report cut their timelines with it (data/streams.py), and windowed
per-utterance training cuts whole sequences with it (trainer/steps.py); tests/test_windows.py
shows that the server's steps for a stream are the trainer's.
"""

from __future__ import annotations


def window_rows(window_s: float, rate: float) -> int:
    """Rows in one window of `window_s` seconds of a modality with `rate` rows a second (at least one)."""
    return max(1, round(window_s * rate))


def cut(rows: int, size: int, ended: bool) -> list[slice]:
    """The steps in `rows` rows: every whole window of `size` rows and, once the stream has ended,
    the rest (a stream that goes on keeps it until its window is whole)."""
    whole = rows // size * size
    windows = [slice(start, start + size) for start in range(0, whole, size)]
    if ended and whole < rows:
        windows.append(slice(whole, rows))
    return windows
