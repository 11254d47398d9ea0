"""Real but unrelated audio and video, paired with labelled samples that have none.

CMU-MOSI's labels come here with transcripts, not with recordings. A model served on text, audio
and video must still meet real audio and video: a sample that lacks one of `modalities` gets, with
chance `p`, a random window of that modality's features cut from recordings that have nothing to
do with its label. The label stays the text's, so training teaches the gates to take what the text
says and to let unrelated audio and video move the prediction as little as they can.

The windows come from the same extractor classes the server runs, over every recording in
`media` (a folder searched recursively), so their scale and rate are what serving sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grf_stream.data.samples import Sample, no_data
from grf_stream.data.store import sample_from_arrays
from grf_stream.spec import FeatureSpec

EVALUATION = 1_000_000  # the "epoch" of validation and test windows: the same every epoch and in trainer.evaluate


@dataclass
class DistractorConfig:
    """Where unrelated audio and video come from, and how often a sample gets them."""

    media: str = ""
    """Folder of recordings (audio files, videos); empty = no distractors."""
    modalities: list[str] = field(default_factory=lambda: ["audio", "video"])
    """The modalities given to samples that lack them."""
    p: float = 0.5
    """Chance, per training sample and modality, of a window (validation and test: always one)."""
    seconds: list[float] = field(default_factory=lambda: [0.5, 4.0])
    """Shortest and longest window, in seconds of media."""
    vary: float = 0.0
    """How far a training window strays from the recordings it is cut from, as if another camera or
    microphone had made it: each feature scaled by exp(N(0, vary)) about its mean and shifted by
    N(0, vary) of its spread. A few recordings then stand for many, and a model cannot learn to
    ignore only those. 0 = as recorded; validation and test windows are always as recorded."""

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"data.distractors.p={self.p} must be in [0, 1]")
        if len(self.seconds) != 2 or not 0 < self.seconds[0] <= self.seconds[1]:
            raise ValueError(f"data.distractors.seconds={self.seconds} must be [shortest, longest] with 0 < shortest <= longest")
        if self.vary < 0:
            raise ValueError(f"data.distractors.vary={self.vary} must be >= 0 (0 = windows as recorded)")
        unknown = set(self.modalities) - {"audio", "video"}
        if unknown:
            raise ValueError(f"data.distractors.modalities names {sorted(unknown)}: only audio and video come from recordings")


class Distractors:
    """Feature sequences of unrelated recordings, per modality, and windows cut from them."""

    def __init__(self, sequences: dict[str, list[tuple[np.ndarray, np.ndarray]]], spec: FeatureSpec,
                 config: DistractorConfig):
        empty = [m for m in config.modalities if not sequences.get(m)]
        if empty:
            raise ValueError(f"{config.media or 'the distractor media'} gave no {' or '.join(empty)} features: "
                             f"add recordings with {' and '.join(empty)} there")
        self.sequences, self.spec, self.config = sequences, spec, config
        self.spread = {m: (rows.mean(axis=0), rows.std(axis=0)) for m in config.modalities for rows in [self.rows(m)]}

    @classmethod
    def from_media(cls, config: DistractorConfig) -> "Distractors":
        """Extract every recording under config.media with the server's extractor classes."""
        # Here, not at the top: the extractors' libraries (OpenCV, librosa, transformers) load only when
        # distractor recordings are used, so the data package imports on a machine without them.
        from grf_stream.features import feature_spec
        from grf_stream.features.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES
        from grf_stream.features.offline import SampleExtractor, SampleJob

        folder = Path(config.media)
        if not folder.is_dir():
            raise FileNotFoundError(f"data.distractors.media={config.media!r} is not a folder of recordings")
        # An audio file has no video: it goes to an extractor without the video modality.
        for_video = SampleExtractor(config.modalities)
        for_audio = SampleExtractor([m for m in config.modalities if m != "video"])
        sequences: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in config.modalities}
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES + VIDEO_SUFFIXES):
            is_video = path.suffix.lower() in VIDEO_SUFFIXES
            job = SampleJob(path.stem, None, str(path), str(path) if is_video else None, None, None)
            arrays = (for_video if is_video else for_audio)(job)
            stored = sample_from_arrays(path.stem, 0.0, arrays)  # masked as the store masks (no-face frames)
            for m in arrays:
                rows, mask = stored.features[m], stored.masks[m]
                if mask.any():
                    sequences[m].append((rows, mask))
        return cls(sequences, feature_spec(config.modalities), config)

    def rows(self, modality: str) -> np.ndarray:
        """Every real row of a modality, (N, d): what feature statistics are measured on."""
        return np.concatenate([rows[mask] for rows, mask in self.sequences[modality]])

    def window(self, modality: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random window: recording chosen by length, length uniform in config.seconds."""
        lengths = np.array([len(rows) for rows, _ in self.sequences[modality]], float)
        rows, mask = self.sequences[modality][rng.choice(len(lengths), p=lengths / lengths.sum())]
        shortest, longest = self.config.seconds
        rate = self.spec.modalities[modality].rate
        size = min(len(rows), max(1, round(rng.uniform(shortest, longest) * rate)))
        start = rng.integers(0, len(rows) - size + 1)
        return rows[start:start + size], mask[start:start + size]

    def varied(self, modality: str, rows: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
        """`rows` as another recording might give them (see DistractorConfig.vary); as they are at 0."""
        if amount == 0:
            return rows
        mean, std = self.spread[modality]
        scale = np.exp(rng.normal(0.0, amount, rows.shape[1]))
        shift = rng.normal(0.0, amount, rows.shape[1]) * std
        return (mean + (rows - mean) * scale + shift).astype(rows.dtype)

    def attach(self, sample: Sample, rng: np.random.Generator, p: float, vary: float = 0.0) -> Sample:
        """The sample, with a window (chance p, varied by `vary`) of each distractor modality it has no data for."""
        features, masks = dict(sample.features), dict(sample.masks)
        for m in self.config.modalities:
            if m in masks and masks[m].any():
                continue
            if rng.random() < p:
                rows, masks[m] = self.window(m, rng)
                features[m] = self.varied(m, rows, rng, vary)
            else:
                features[m], masks[m] = no_data(self.spec.modalities[m].size)
        return Sample(sample.id, sample.label, features, masks)


def pair_split(samples: list[Sample], distractors: Distractors, p: float, seed: int, epoch: int,
               vary: float = 0.0) -> list[Sample]:
    """Every sample with its distractors; the windows depend only on (seed, epoch, position)."""
    return [distractors.attach(s, np.random.default_rng([seed, epoch, i]), p, vary) for i, s in enumerate(samples)]
