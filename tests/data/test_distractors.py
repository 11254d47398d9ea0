"""Distractors: real, unrelated audio and video windows for samples that have none."""

from pathlib import Path

import numpy as np
import pytest

from grf_stream.data import DistractorConfig, Distractors, Sample, evaluation_form, pair_split
from grf_stream.data.store import sample_from_arrays
from grf_stream.features import feature_spec

MEDIA = Path(__file__).resolve().parents[3] / "shared" / "data" / "media"
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/data/media (the real recordings)")


def distractors(p=0.5, seconds=(0.5, 2.0)) -> Distractors:
    """Two recordings of audio (500 and 100 rows) and one of video with two frames without a face."""
    rng = np.random.default_rng(0)
    video = rng.normal(size=(90, 17)).astype(np.float32) + 1
    video_mask = np.ones(90, bool)
    video_mask[[10, 11]] = False
    video[~video_mask] = 0
    sequences = {
        "audio": [(rng.normal(size=(500, 26)).astype(np.float32), np.ones(500, bool)),
                  (rng.normal(size=(100, 26)).astype(np.float32), np.ones(100, bool))],
        "video": [(video, video_mask)],
    }
    return Distractors(sequences, feature_spec(("audio", "video")), DistractorConfig("media", p=p, seconds=list(seconds)))


def text_sample(i: int) -> Sample:
    return Sample(f"s{i}", float(i), {"text": np.full((5, 384), i, np.float32)}, {"text": np.ones(5, bool)})


def test_a_sample_without_audio_and_video_gets_windows_of_real_rows_within_the_configured_lengths():
    pool = distractors(p=1.0)
    for seed in range(20):
        paired = pool.attach(text_sample(1), np.random.default_rng(seed), p=1.0)
        assert paired.features["text"] is not None and paired.label == 1.0
        audio, video = paired.features["audio"], paired.features["video"]
        assert 50 <= len(audio) <= 200 and 15 <= len(video) <= 60  # 0.5-2 s at 100/s and 30/s
        assert paired.masks["audio"].all()
        assert np.array_equal(paired.masks["video"], video.any(axis=1))  # faceless frames stay masked


def test_without_a_window_a_modality_is_one_masked_step_and_stored_data_is_never_replaced():
    pool = distractors()
    empty = pool.attach(text_sample(2), np.random.default_rng(0), p=0.0)
    assert empty.features["audio"].shape == (1, 26) and not empty.masks["audio"].any()
    own_audio = np.ones((7, 26), np.float32)
    sample = Sample("own", 0.0, {"text": np.ones((3, 384), np.float32), "audio": own_audio},
                    {"text": np.ones(3, bool), "audio": np.ones(7, bool)})
    paired = pool.attach(sample, np.random.default_rng(0), p=1.0)
    assert paired.features["audio"] is own_audio and paired.features["video"].shape[0] >= 15


def test_training_windows_change_every_epoch_and_repeat_exactly_for_the_same_epoch():
    pool, samples = distractors(), [text_sample(i) for i in range(50)]
    epoch_3, again, epoch_4 = (pair_split(samples, pool, 0.5, 0, e) for e in (3, 3, 4))
    same = [np.array_equal(a.features["audio"], b.features["audio"]) for a, b in zip(epoch_3, again)]
    changed = [np.array_equal(a.features["audio"], b.features["audio"]) for a, b in zip(epoch_3, epoch_4)]
    assert all(same) and not all(changed)
    with_audio = sum(s.masks["audio"].any() for s in epoch_3)
    assert 10 < with_audio < 40  # about half at p = 0.5


def test_evaluation_gives_every_sample_both_modalities_and_the_same_windows_each_time():
    pool, samples = distractors(p=0.1), [text_sample(i) for i in range(30)]
    first, second = evaluation_form(samples, pool), evaluation_form(samples, pool)
    assert all(s.masks["audio"].any() and s.masks["video"].any() for s in first)
    assert all(np.array_equal(a.features["video"], b.features["video"]) for a, b in zip(first, second))
    assert evaluation_form(samples, None) is samples


def test_bad_configurations_say_what_to_fix():
    with pytest.raises(ValueError, match="p=1.5"):
        DistractorConfig("media", p=1.5)
    with pytest.raises(ValueError, match="shortest"):
        DistractorConfig("media", seconds=[2.0, 1.0])
    with pytest.raises(ValueError, match="only audio and video"):
        DistractorConfig("media", modalities=["text"])
    with pytest.raises(ValueError, match="no video features"):
        Distractors({"audio": [(np.ones((5, 26), np.float32), np.ones(5, bool))]}, feature_spec(("audio", "video")),
                    DistractorConfig("somewhere"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Distractors.from_media(DistractorConfig("/nonexistent/media"))


def test_a_stored_row_of_zeros_is_masked_as_the_extractor_masked_it():
    sample = sample_from_arrays("x", 0.5, {"video": np.array([[1, 2], [0, 0], [3, 0]], np.float32),
                                           "audio": np.zeros((0, 4), np.float32)})
    assert sample.masks["video"].tolist() == [True, False, True]
    assert sample.features["audio"].shape == (1, 4) and not sample.masks["audio"].any()


@needs_media
def test_the_shared_recordings_give_audio_from_every_file_and_video_from_the_mp4():
    pool = Distractors.from_media(DistractorConfig(str(MEDIA)))
    assert len(pool.sequences["audio"]) == 3 and len(pool.sequences["video"]) == 1
    assert pool.spec == feature_spec(("audio", "video"))
    seconds = sorted(len(rows) / 100 for rows, _ in pool.sequences["audio"])
    assert seconds == pytest.approx([3.3, 7.4, 11.0], abs=0.15)  # the wav, the mp4's track, jfk.flac
    assert pool.rows("video").shape[1] == 17 and np.isfinite(pool.rows("audio")).all()
