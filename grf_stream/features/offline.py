"""Offline extraction, the plain parts: label CSVs, finding each sample's media, one sample's features.

`python -m grf_stream.extract` (grf_stream/extract.py) runs `SampleExtractor` on Ray workers; it
holds the very extractor classes the server runs, fed whole files instead of live chunks.

Label CSVs: MMSA's `label.csv` (video_id, clip_id, text, label, mode) and the CMU-MOSI CSV of this
project's data (id, video_id, clip_id, split, label, start, end, text). A sample's id is the `id`
column, else `<video_id>_<clip_id>`; its split is `mode` or `split`.

Media of a sample, searched in the media folder (and its subfolders) in this order:
  1. `<video_id>/<clip_id>.<ext>`  MMSA's Raw layout, one file per clip
  2. `<id>.<ext>`                  one file per clip
  3. `<video_id>.<ext>`            the whole video; the row's `start`/`end` columns cut the clip
Audio prefers an audio file (wav, flac, ...) and otherwise takes a video file's sound track.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from grf_stream.features import build_extractors, feature_spec
from grf_stream.features.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES, read_audio, video_frames
from grf_stream.spec import SPLITS

SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid", "test": "test"}
VIDEO_BATCH = 32  # frames per extract call: bounds memory on long videos, same features as one call


@dataclass(frozen=True)
class SampleJob:
    """Everything needed to extract one sample, small enough to send to a worker."""

    id: str
    text: str | None = None
    audio_path: str | None = None
    video_path: str | None = None
    start: float | None = None  # seconds into the media files; None = from the beginning
    end: float | None = None


@dataclass(frozen=True)
class LabelRow:
    id: str
    split: str
    label: float
    text: str
    video_id: str
    clip_id: str
    start: float | None
    end: float | None

    def index_row(self) -> dict:
        """The row of the store's samples.csv."""
        return {"id": self.id, "split": self.split, "label": self.label, "video_id": self.video_id, "clip_id": self.clip_id,
                "text": self.text, "start": _blank(self.start), "end": _blank(self.end)}


def read_labels(path: str | Path) -> list[LabelRow]:
    """Rows of an MMSA label.csv or a CMU-MOSI CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        if "label" not in columns or not ({"id"} <= columns or {"video_id", "clip_id"} <= columns):
            raise ValueError(f"{path}: columns {sorted(columns)} lack 'label' and 'id' (or 'video_id' and 'clip_id'); expected MMSA's label.csv or the CMU-MOSI CSV")
        return [_label_row(row, f"{path}:{line}") for line, row in enumerate(reader, start=2)]


def _label_row(row: dict, where: str) -> LabelRow:
    video_id, clip_id = row.get("video_id", ""), row.get("clip_id", "")
    split_name = (row.get("mode") or row.get("split") or "train").strip().lower()
    if split_name not in SPLIT_NAMES:
        raise ValueError(f"{where}: split {split_name!r} is not one of {sorted(SPLIT_NAMES)}")
    try:
        label = float(row["label"])
    except ValueError:
        raise ValueError(f"{where}: label {row['label']!r} is not a number") from None
    return LabelRow(
        id=row.get("id") or f"{video_id}_{clip_id}", split=SPLIT_NAMES[split_name], label=label, text=(row.get("text") or "").strip(),
        video_id=video_id, clip_id=clip_id, start=_seconds(row.get("start")), end=_seconds(row.get("end")),
    )


def _blank(seconds: float | None) -> float | str:
    return "" if seconds is None else seconds


def _seconds(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class MediaIndex:
    """Media files under a folder, found by clip or whole-video name."""

    def __init__(self, folder: str | Path | None):
        self.by_name: dict[str, list[Path]] = {}
        for path in sorted(Path(folder).rglob("*")) if folder else []:
            if path.suffix.lower() in VIDEO_SUFFIXES + AUDIO_SUFFIXES:
                for name in (path.stem, f"{path.parent.name}/{path.stem}"):
                    self.by_name.setdefault(name, []).append(path)

    def find(self, row: LabelRow, suffixes: tuple[str, ...]) -> tuple[Path | None, bool]:
        """(file, whether it is the whole video that start/end cut), or (None, False)."""
        for name, whole in ((f"{row.video_id}/{row.clip_id}", False), (row.id, False), (row.video_id, True)):
            for path in self.by_name.get(name, []):
                if path.suffix.lower() in suffixes:
                    return path, whole
        return None, False


def plan(rows: list[LabelRow], media: MediaIndex, modalities: list[str]) -> tuple[list[SampleJob], list[tuple[str, str]]]:
    """The jobs of rows that have every input the modalities need, and (id, reason) for the rest."""
    jobs, skipped = [], []
    for row in rows:
        video, video_whole = media.find(row, VIDEO_SUFFIXES) if "video" in modalities else (None, False)
        audio, audio_whole = media.find(row, AUDIO_SUFFIXES + VIDEO_SUFFIXES) if "audio" in modalities else (None, False)
        missing = [what for what, needed, have in (
            ("text", "text" in modalities, bool(row.text)),
            ("video file", "video" in modalities, video is not None),
            ("audio or video file", "audio" in modalities, audio is not None),
        ) if needed and not have]
        if missing:
            skipped.append((row.id, "no " + " and no ".join(missing) + " found"))
            continue
        if video_whole != audio_whole and video and audio:
            skipped.append((row.id, f"{audio.name} and {video.name} do not both hold the clip or both the whole video"))
            continue
        whole = video_whole or audio_whole
        if whole and (row.start is None or row.end is None):
            skipped.append((row.id, f"{(video or audio).name} is the whole video but the row has no start/end to cut the clip"))
            continue
        jobs.append(SampleJob(row.id, row.text if "text" in modalities else None, str(audio) if audio else None,
                              str(video) if video else None, row.start if whole else None, row.end if whole else None))
    return jobs, skipped


class SampleExtractor:
    """Features of one sample, from the extractor classes the server runs (a Ray worker wraps this)."""

    def __init__(self, modalities: list[str]):
        self.extractors = build_extractors(modalities)
        self.spec = feature_spec(modalities)

    def __call__(self, job: SampleJob) -> dict[str, np.ndarray]:
        """Modality name -> float32 (T, size); raises MediaError for a file that cannot be decoded."""
        readers = {"text": self._text, "audio": self._audio, "video": self._video}  # what each reads of a job
        return {modality: readers[modality](job) for modality in self.extractors}

    def _text(self, job: SampleJob) -> np.ndarray:
        return self.extractors["text"].extract_all(job.text)[0]

    def _audio(self, job: SampleJob) -> np.ndarray:
        extractor = self.extractors["audio"]
        chunk = read_audio(job.audio_path, job.start, job.end)
        return extractor.extract_all(chunk)[0] if chunk is not None else np.zeros((0, extractor.size), np.float32)

    def _video(self, job: SampleJob) -> np.ndarray:
        extractor = self.extractors["video"]
        frames = video_frames(job.video_path, extractor.rate, job.start, job.end)
        session = f"offline:{job.id}"
        try:
            rows = [extractor.extract(batch, session)[0] for batch in iter(lambda: list(islice(frames, VIDEO_BATCH)), [])]
            rows.append(extractor.flush(session)[0])
        finally:
            extractor.close(session)  # after a decoding error; a no-op once flushed
        return np.concatenate(rows)


assert set(SPLIT_NAMES.values()) == set(SPLITS)
