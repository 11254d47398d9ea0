"""Shared fixtures of the feature-extractor tests: the real media and loaded extractors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"  # the project's real media; absent on a user's fresh machine
MEDIA = DATA / "media"
MOSI_CLIP, MOSI_WAV, JFK = MEDIA / "Oz06ZWiO20M_6.mp4", MEDIA / "03bSnISJMiM_1.wav", MEDIA / "jfk.flac"
MOSI_CSV = DATA / "mosi" / "mosi_labels_transcripts.csv"


def need_media(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"real media not found ({', '.join(missing)}): these tests need the project's shared data at {DATA}")


@pytest.fixture(scope="session")
def text_extractor():
    from grf_stream.features import TextExtractor
    return TextExtractor()


@pytest.fixture(scope="session")
def audio_extractor():
    from grf_stream.features import AudioExtractor
    return AudioExtractor()


@pytest.fixture(scope="session")
def video_extractor():
    from grf_stream.features import VideoExtractor
    return VideoExtractor()


@pytest.fixture(scope="session")
def mosi_frames() -> list[np.ndarray]:
    need_media(MOSI_CLIP)
    from grf_stream.features.media import video_frames
    return list(video_frames(MOSI_CLIP, fps=30.0))
