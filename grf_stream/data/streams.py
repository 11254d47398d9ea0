"""Live streams: whole videos as the server sees them, for training and for the live report.

A user's session runs for minutes: audio and video windows complete every `window_s` seconds
whether or not anyone speaks, a transcript phrase arrives when it ends, and one context runs
through all of it. A `Stream` is that timeline for (a stretch of) one labelled video:

- its utterances at their own times (the store's `start`/`end` columns), each phrase one text step
  at its utterance's end;
- audio and video windows of `window_s` seconds all along, cut from real recordings unrelated to
  the video (the distractor media end to end, looped: a `MediaTrack`), as the server cuts them:
  `round(window_s * rate)` rows each, a window complete once its last row is in
  (grf_stream/windows.py);
- every step knows the latest phrase at or before it, whose label is what a viewer expects the
  prediction to show from then on.

`collate_streams` lines several streams up as one batch of fusion steps for training: a stream
with nothing at a step gets a masked window there, which leaves its context exactly as it was.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from grf_stream.data.distractors import Distractors
from grf_stream.data.samples import Sample, pad
from grf_stream.data.store import FeatureStore
from grf_stream.windows import cut, window_rows

TEXT = "text"


@dataclass(frozen=True)
class Utterance:
    """One labelled phrase of a video and when it was said (seconds into the video)."""

    sample: Sample
    start: float
    end: float


@dataclass(frozen=True)
class StreamStep:
    at: float  # seconds from the stream's start at which the step is complete
    modality: str
    features: np.ndarray  # (T, d)
    mask: np.ndarray  # (T,)
    phrase: int  # index of the latest phrase at or before this step; -1 before the first


@dataclass
class Stream:
    name: str
    steps: list[StreamStep]
    labels: np.ndarray  # (phrases,) the label of each phrase, in the order they arrive
    seconds: float  # how long the stream runs


def videos(store: FeatureStore, samples: list[Sample]) -> dict[str, list[Utterance]]:
    """The samples grouped by video, each video's utterances in the order their phrases end."""
    rows = {row["id"]: row for row in store.index()}
    untimed = [s.id for s in samples if not rows[s.id].get("end")]
    if untimed:
        raise ValueError(f"{store.root}: {len(untimed)} samples (e.g. {untimed[0]}) have no start/end times; a "
                         f"stream needs them: extract again from a label CSV with start and end columns")
    by_video: dict[str, list[Utterance]] = {}
    for s in samples:
        row = rows[s.id]
        by_video.setdefault(row["video_id"], []).append(Utterance(s, float(row["start"]), float(row["end"])))
    return {video: sorted(utts, key=lambda u: u.end) for video, utts in sorted(by_video.items())}


class MediaTrack:
    """Every distractor recording of a modality end to end, looped, so a window can start anywhere."""

    def __init__(self, distractors: Distractors):
        self.distractors = distractors
        self.modalities = list(distractors.config.modalities)
        self.rates = {m: distractors.spec.modalities[m].rate for m in self.modalities}
        self.rows = {m: np.concatenate([r for r, _ in distractors.sequences[m]]) for m in self.modalities}
        self.masks = {m: np.concatenate([k for _, k in distractors.sequences[m]]) for m in self.modalities}

    def cut(self, modality: str, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        index = (start + np.arange(size)) % len(self.rows[modality])
        return self.rows[modality][index], self.masks[modality][index]

    def varied(self, rng: np.random.Generator, amount: float) -> "MediaTrack":
        """The track as another camera and microphone might give it: one change per modality, kept
        for the whole track (see DistractorConfig.vary); this track itself at 0."""
        if amount == 0:
            return self
        track = copy.copy(self)
        track.rows = {m: self.distractors.varied(m, rows, rng, amount) for m, rows in self.rows.items()}
        return track

    def offsets(self, rng: np.random.Generator) -> dict[str, int]:
        """Where in the loop each modality's track starts."""
        return {m: int(rng.integers(len(self.rows[m]))) for m in self.modalities}


def build_stream(name: str, utterances: list[Utterance], track: MediaTrack, window_s: float, begin: float,
                 end: float, offsets: dict[str, int]) -> Stream:
    """The steps of the stretch [begin, end] of a video (seconds), in the order a server fuses them.

    Each modality's rows from `begin` are cut by the server's window policy (grf_stream/windows.py):
    a window completes with its last row; a phrase at its utterance's end. Steps complete at the same
    moment go in the track's modality order, text last. The stream goes on past `end`, so a window
    not yet whole there is not a step (as for a live client, which never ends a segment).
    """
    events = []
    for rank, m in enumerate(track.modalities):
        rate, size = track.rates[m], window_rows(window_s, track.rates[m])
        for window in cut(int((end - begin) * rate + 1e-9), size, ended=False):
            events.append((window.stop / rate, rank, m, *track.cut(m, offsets[m] + window.start, size), None))
    for i, u in enumerate(utterances):
        text = u.sample.features[TEXT], u.sample.masks[TEXT]
        events.append((u.end - begin, len(track.modalities), TEXT, *text, i))
    events.sort(key=lambda e: e[:2])
    steps, latest = [], -1
    for at, _, modality, features, mask, phrase in events:
        latest = phrase if phrase is not None else latest
        steps.append(StreamStep(at, modality, features, mask, latest))
    labels = np.array([u.sample.label for u in utterances], np.float32)
    return Stream(name, steps, labels, end - begin)


def whole_video(video: str, utterances: list[Utterance], track: MediaTrack, window_s: float) -> Stream:
    """A video from its start to its last phrase, the track at a place fixed by the video's name."""
    offsets = track.offsets(np.random.default_rng(zlib.crc32(video.encode())))
    return build_stream(video, utterances, track, window_s, 0.0, max(u.end for u in utterances), offsets)


# -- training batches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stretch:
    """How a training stream is cut from a video (seconds)."""

    utterances: int  # consecutive utterances in the stream
    lead_s: float  # windows before the first utterance starts
    tail_s: float  # windows after the last phrase
    max_interval_s: float  # a longer time between two phrases is shortened to this


def stretch_stream(name: str, utterances: list[Utterance], first: int, stretch: Stretch, track: MediaTrack,
                   window_s: float, rng: np.random.Generator) -> Stream:
    """`stretch.utterances` consecutive utterances from `first` at their own times, long intervals
    shortened (a batch pays for its longest stream), windows of the track from a random place."""
    chosen = utterances[first:first + stretch.utterances]
    begin = chosen[0].start - stretch.lead_s
    shifted, shift = [], 0.0
    for previous, u in zip([None, *chosen[:-1]], chosen):
        if previous is not None:
            shift += max(0.0, u.end - previous.end - stretch.max_interval_s)
        shifted.append(Utterance(u.sample, u.start - shift, u.end - shift))
    end = shifted[-1].end + stretch.tail_s
    return build_stream(name, shifted, track, window_s, begin, end, track.offsets(rng))


@dataclass
class StreamBatch:
    """Streams lined up as fusion steps; the loss reads `targets` where `weights` > 0."""

    steps: list[tuple[str, torch.Tensor, torch.Tensor]]  # (modality, (B, T, d), (B, T)) per step
    targets: torch.Tensor  # (B, S) the latest phrase's label at each step (0 where unweighted)
    weights: torch.Tensor  # (B, S) the loss weight of each step: 0 before the first phrase and where masked
    text: torch.Tensor  # (B, S) bool: the step is a phrase
    positions: list[list[int]]  # the batch step of each stream's every step

    def to(self, device) -> "StreamBatch":
        steps = [(m, x.to(device), mask.to(device)) for m, x, mask in self.steps]
        return StreamBatch(steps, self.targets.to(device), self.weights.to(device), self.text.to(device), self.positions)


def collate_streams(streams: list[Stream], text_weight: float = 1.0) -> StreamBatch:
    """One batch of fusion steps for several streams, phrase k of every stream at the same step.

    Between phrases the streams' windows are merged into one sequence of steps: at each step the
    modality most streams want next; a stream that wants another one gets a masked window, which
    leaves its context exactly as it was. A step's loss weight is 1 (text_weight for a phrase)
    once the stream has had a phrase.
    """
    segments = [_segments(s) for s in streams]
    columns: list[tuple[str, list[StreamStep | None]]] = []
    positions: list[list[int]] = [[] for _ in streams]
    for j in range(max(len(s) for s in segments)):
        queues = [list(s[j]) if j < len(s) else [] for s in segments]
        while any(queues):
            wanted = [q[0].modality for q in queues if q]
            m = max(set(wanted), key=lambda name: (wanted.count(name), name == TEXT, name))
            cells = []
            for i, q in enumerate(queues):
                taken = q and q[0].modality == m
                cells.append(q.pop(0) if taken else None)
                if taken:
                    positions[i].append(len(columns))
            columns.append((m, cells))
    return _batch(columns, streams, text_weight, positions)


def _segments(stream: Stream) -> list[list[StreamStep]]:
    """The steps cut after each phrase: segment k ends with phrase k (the last may have no phrase)."""
    segments, current = [], []
    for step in stream.steps:
        current.append(step)
        if step.modality == TEXT:
            segments.append(current)
            current = []
    return segments + [current] if current else segments


def _batch(columns: list[tuple[str, list[StreamStep | None]]], streams: list[Stream], text_weight: float,
           positions: list[list[int]]) -> StreamBatch:
    size = len(streams)
    targets, weights = np.zeros((size, len(columns)), np.float32), np.zeros((size, len(columns)), np.float32)
    steps = []
    for k, (m, cells) in enumerate(columns):
        width = next(c.features.shape[1] for c in cells if c is not None)
        blank = np.zeros((1, width), np.float32), np.zeros(1, bool)
        features, masks = pad([c.features if c else blank[0] for c in cells], [c.mask if c else blank[1] for c in cells])
        steps.append((m, features, masks))
        for i, cell in enumerate(cells):
            if cell is not None and cell.phrase >= 0 and cell.mask.any():
                targets[i, k] = streams[i].labels[cell.phrase]
                weights[i, k] = text_weight if m == TEXT else 1.0
    text = torch.tensor([m == TEXT for m, _ in columns]).expand(size, -1)
    return StreamBatch(steps, torch.from_numpy(targets), torch.from_numpy(weights), text, positions)
