"""Feature extractors for text, audio and video: the same classes serve live sessions and offline files.

    from grf_stream.features import build_extractors
    extractors = build_extractors(["text", "audio", "video"])
    features, mask = extractors["text"].extract("I really liked it")

See base.py for the interface, and text.py, audio.py, video.py for what each one computes.
"""

from __future__ import annotations

from grf_stream.features.audio import AudioChunk, AudioExtractor
from grf_stream.features.base import DEFAULT_SESSION, Extractor, SignalChunk
from grf_stream.features.text import TextExtractor
from grf_stream.features.video import VideoExtractor, stored_mask
from grf_stream.spec import FeatureSpec

# The registry of raw modalities: name -> extractor class. A modality of one's own is added with
# grf_stream.serving.modalities.register (see the README, "A modality of your own").
EXTRACTORS: dict[str, type[Extractor]] = {"text": TextExtractor, "audio": AudioExtractor, "video": VideoExtractor}
MODALITIES = tuple(EXTRACTORS)  # the built-in ones


def _classes(modalities) -> dict[str, type[Extractor]]:
    unknown = [m for m in modalities if m not in EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}: choose from {list(EXTRACTORS)}")
    return {m: EXTRACTORS[m] for m in modalities}


def build_extractors(modalities=MODALITIES) -> dict[str, Extractor]:
    """One loaded extractor per modality name ("text", "audio", "video")."""
    return {m: cls() for m, cls in _classes(modalities).items()}


def feature_spec(modalities=MODALITIES) -> FeatureSpec:
    """The spec these modalities' extractors produce, without loading any model."""
    return FeatureSpec({m: cls.output_spec() for m, cls in _classes(modalities).items()})


__all__ = [
    "AudioChunk", "AudioExtractor", "DEFAULT_SESSION", "EXTRACTORS", "Extractor", "MODALITIES", "SignalChunk",
    "TextExtractor", "VideoExtractor", "build_extractors", "feature_spec", "stored_mask",
]
