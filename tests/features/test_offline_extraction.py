"""python -m grf_stream.extract: CSVs, finding media, segments, Ray, resuming, bad files."""

import shutil

import av
import numpy as np
import pytest

from conftest import MOSI_CLIP, MOSI_CSV, MOSI_WAV, need_media
from grf_stream.data.store import FeatureStore
from grf_stream.features import AudioChunk, feature_spec
from grf_stream.features.media import MediaError, read_audio, video_frames
from grf_stream.features.offline import MediaIndex, SampleExtractor, SampleJob, plan, read_labels

MMSA_HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"


def write_video(path, frames, fps=30):
    """A small mpeg4 file (no sound) written with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def sample_extractor():
    return SampleExtractor(["text", "audio", "video"])


@pytest.fixture
def mmsa_folder(tmp_path, mosi_frames):
    """MMSA's layout: Raw/<video_id>/<clip_id>.<ext> and label.csv; one good clip, a 1-frame video, a corrupt file."""
    need_media(MOSI_CLIP, MOSI_WAV)
    raw = tmp_path / "Raw"
    for folder in ("Oz06ZWiO20M", "oneframe", "broken"):
        (raw / folder).mkdir(parents=True)
    shutil.copy(MOSI_CLIP, raw / "Oz06ZWiO20M" / "6.mp4")
    write_video(raw / "oneframe" / "1.mp4", mosi_frames[:1])
    (raw / "broken" / "1.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 20)
    labels = tmp_path / "label.csv"
    labels.write_text(MMSA_HEADER + "Oz06ZWiO20M,6,SO I WANT TO SAY,-0.8,,,,,train\n"
                      "oneframe,1,ONE FRAME ONLY,0.5,,,,,valid\nbroken,1,A BROKEN FILE,1.0,,,,,test\n"
                      "absent,1,NO MEDIA AT ALL,0.0,,,,,test\n")
    return tmp_path


def test_reads_the_cmu_mosi_csv():
    need_media(MOSI_CSV)
    rows = read_labels(MOSI_CSV)
    assert len(rows) == 2199
    assert {r.split for r in rows} == {"train", "valid", "test"}
    clip = next(r for r in rows if r.id == "Oz06ZWiO20M_6")
    assert clip.label == -0.8 and clip.start is not None and clip.end > clip.start and clip.text


def test_bad_label_csvs_say_what_is_wrong(tmp_path):
    (tmp_path / "a.csv").write_text("name,score\nx,1\n")
    with pytest.raises(ValueError, match="lack 'label'"):
        read_labels(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text(MMSA_HEADER + "v,1,hi,good,,,,,train\n")
    with pytest.raises(ValueError, match=r"b.csv:2: label 'good' is not a number"):
        read_labels(tmp_path / "b.csv")


def test_media_is_found_as_clip_or_cut_from_the_whole_video(tmp_path):
    need_media(MOSI_CSV, MOSI_CLIP)
    rows = [r for r in read_labels(MOSI_CSV) if r.video_id == "Oz06ZWiO20M"]
    (tmp_path / "clips").mkdir()
    shutil.copy(MOSI_CLIP, tmp_path / "clips" / "Oz06ZWiO20M_6.mp4")  # one clip file, named by id
    jobs, skipped = plan(rows, MediaIndex(tmp_path / "clips"), ["text", "audio", "video"])
    assert [j.id for j in jobs] == ["Oz06ZWiO20M_6"] and len(skipped) == len(rows) - 1
    assert jobs[0].start is None and jobs[0].video_path == jobs[0].audio_path  # a clip is used whole
    assert "no video file and no audio or video file found" in skipped[0][1]

    (tmp_path / "whole").mkdir()
    shutil.copy(MOSI_CLIP, tmp_path / "whole" / "Oz06ZWiO20M.mp4")  # stands in for the whole video
    jobs, skipped = plan(rows, MediaIndex(tmp_path / "whole"), ["audio", "video"])
    assert len(jobs) == len(rows) and not skipped
    assert all(j.start == r.start and j.end == r.end for j, r in zip(jobs, rows))


def test_audio_files_are_preferred_and_text_only_needs_no_media(tmp_path):
    need_media(MOSI_CSV, MOSI_WAV)
    rows = read_labels(MOSI_CSV)[:3]
    shutil.copy(MOSI_WAV, tmp_path / "03bSnISJMiM_1.wav")
    jobs, skipped = plan(rows, MediaIndex(tmp_path), ["text", "audio"])
    assert [j.id for j in jobs] == ["03bSnISJMiM_1"] and jobs[0].audio_path.endswith(".wav")
    jobs, skipped = plan(rows, MediaIndex(None), ["text"])
    assert len(jobs) == 3 and not skipped and jobs[0].audio_path is None


def test_a_segment_gives_its_own_length(sample_extractor):
    need_media(MOSI_CLIP)
    features = sample_extractor(SampleJob("cut", "HELLO", str(MOSI_CLIP), str(MOSI_CLIP), start=2.0, end=3.0))
    assert features["video"].shape == (30, 17) and features["audio"].shape == (100, 26)


def test_a_one_frame_video_and_a_corrupt_file(sample_extractor, tmp_path, mosi_frames):
    write_video(tmp_path / "one.mp4", mosi_frames[:1])
    features = sample_extractor(SampleJob("one", "ONE", str(tmp_path / "one.mp4"), str(tmp_path / "one.mp4")))
    assert features["video"].shape == (1, 17) and features["video"][0, -1] > 0.5  # the face is found
    assert features["audio"].shape == (0, 26)  # no sound track
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    with pytest.raises(MediaError, match="bad.mp4: cannot decode"):
        sample_extractor(SampleJob("bad", "BAD", str(tmp_path / "bad.mp4"), str(tmp_path / "bad.mp4")))
    assert sample_extractor.extractors["video"].open_sessions == []


def test_extract_on_ray_writes_the_live_features_and_resumes(local_ray, mmsa_folder, mosi_frames, text_extractor, audio_extractor, video_extractor, capsys):
    from grf_stream.extract import main

    out = mmsa_folder / "store"
    command = ["--labels", str(mmsa_folder / "label.csv"), "--media", str(mmsa_folder / "Raw"), "--out", str(out), "--workers", "2"]
    assert main(command) == 1  # the corrupt file is reported, the rest extracted
    report = capsys.readouterr().err
    assert "1 could not be extracted" in report and "broken_1: MediaError" in report
    assert "absent_1: no video file and no audio or video file found" in report

    store = FeatureStore.open(out)
    assert store.spec == feature_spec()
    assert {(r["id"], r["split"]) for r in store.index()} == {("Oz06ZWiO20M_6", "train"), ("oneframe_1", "valid")}
    (stored,) = store.load_split("train")

    # the offline tool's features are the live extractors' features, fed chunk by chunk
    live_text, _ = text_extractor.extract("SO I WANT TO SAY", session="live")
    audio = read_audio(MOSI_CLIP)
    live_audio = [audio_extractor.extract(AudioChunk(audio.samples[i : i + 4410], audio.sample_rate), "live")[0] for i in range(0, len(audio.samples), 4410)]
    live_video = [video_extractor.extract(mosi_frames[i : i + 5], "live")[0] for i in range(0, len(mosi_frames), 5)]
    np.testing.assert_array_equal(stored.features["text"], live_text)
    np.testing.assert_array_equal(stored.features["audio"], np.concatenate(live_audio + [audio_extractor.flush("live")[0]]))
    np.testing.assert_array_equal(stored.features["video"], np.concatenate(live_video + [video_extractor.flush("live")[0]]))
    assert len(list(video_frames(MOSI_CLIP, 30.0))) == len(stored.features["video"]) == 225

    # run again: nothing is redone; remove one sample: only that one is
    finished = store.feature_path("Oz06ZWiO20M_6")
    written = finished.stat().st_mtime_ns
    store.feature_path("oneframe_1").unlink()
    assert main(command) == 1
    report = capsys.readouterr().err
    assert "1 already in" in report and "2 to extract" in report, report
    assert finished.stat().st_mtime_ns == written and store.has("oneframe_1")
    (shutil.rmtree(mmsa_folder / "Raw" / "broken"))
    assert main(command) == 0
    assert "2 already in" in capsys.readouterr().err
    assert finished.stat().st_mtime_ns == written
