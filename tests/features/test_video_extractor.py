import cv2
import numpy as np
import pytest

from grf_stream.features.video import GEOMETRY, stored_mask

COLUMN = {name: i for i, name in enumerate(GEOMETRY)}


def column(features, name):
    return features[:, COLUMN[name]]


def fresh_sessions(extractor, frames):
    """Each frame on its own, as the first frame of a session (found by detection, not tracked)."""
    rows = [extractor.extract_all(frame) for frame in frames]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def test_mosi_clip_has_a_face_in_nearly_every_frame(video_extractor, mosi_frames):
    features, mask = video_extractor.extract_all(mosi_frames)
    assert len(mosi_frames) == 225 and features.shape == (225, 17)
    assert mask.mean() >= 0.95 and np.isfinite(features).all()
    assert (column(features, "face_score")[mask] >= 0.5).all()
    assert 0.01 < column(features, "mouth_open").std()  # the speaker's mouth moves
    assert 0.1 < np.median(column(features, "right_eye_open")) < 0.5  # eyes open, lids apart about a quarter of the width
    assert 0.4 < np.median(column(features, "mouth_width")) < 0.8


def test_same_video_twice_gives_identical_features(video_extractor, mosi_frames):
    first = video_extractor.extract_all(mosi_frames[:60])
    second = video_extractor.extract_all(mosi_frames[:60])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("size", [1, 7, 64])
def test_chunked_streaming_equals_whole_video(video_extractor, mosi_frames, size):
    whole, whole_mask = video_extractor.extract_all(mosi_frames)
    parts = [video_extractor.extract(mosi_frames[i : i + size], session="chunks") for i in range(0, len(mosi_frames), size)]
    video_extractor.flush("chunks")
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_mask)


def test_frames_without_a_face_are_masked_zero_rows(video_extractor, mosi_frames):
    grey = np.full((480, 640, 3), 120, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    features, mask = video_extractor.extract_all([mosi_frames[0], grey, noise, mosi_frames[1]])
    assert mask.tolist() == [True, False, False, True]  # the face is found again after losing it
    assert (features[1:3] == 0).all()
    np.testing.assert_array_equal(stored_mask(features), mask)


def test_geometry_ignores_face_size_and_position(video_extractor, mosi_frames):
    frame = mosi_frames[30]
    height, width = frame.shape[:2]
    canvas = np.full((height * 2, width * 2, 3), 60, np.uint8)
    canvas[height:, width:] = frame  # same face, bottom right of an image twice as large
    small = cv2.resize(frame, (width * 2 // 3, height * 2 // 3), interpolation=cv2.INTER_AREA)
    rows, mask = fresh_sessions(video_extractor, [frame, canvas, small])
    assert mask.all()
    assert rows[1, COLUMN["face_x"]] > rows[0, COLUMN["face_x"]] + 0.4
    np.testing.assert_allclose(rows[1, COLUMN["face_size"]], rows[0, COLUMN["face_size"]] / 2, rtol=0.05)
    shape = [COLUMN[name] for name in ("mouth_width", "right_eye_open", "left_eye_open", "right_brow", "left_brow", "brow_gap", "jaw_drop")]
    np.testing.assert_allclose(rows[1:, shape], np.repeat(rows[:1, shape], 2, axis=0), rtol=0.08, atol=0.01)


def test_roll_follows_a_tilted_head(video_extractor, mosi_frames):
    frame = mosi_frames[30]
    height, width = frame.shape[:2]
    tilted = cv2.warpAffine(frame, cv2.getRotationMatrix2D((width / 2, height / 2), -20, 1.0), (width, height))
    rows, mask = fresh_sessions(video_extractor, [frame, tilted])  # OpenCV's negative angle turns clockwise on screen
    assert mask.all()
    np.testing.assert_allclose(rows[1, COLUMN["roll"]] - rows[0, COLUMN["roll"]], np.radians(20), atol=np.radians(3))
    np.testing.assert_allclose(rows[1, COLUMN["mouth_width"]], rows[0, COLUMN["mouth_width"]], rtol=0.08)


def test_jpeg_bytes_and_grey_frames_are_accepted(video_extractor, mosi_frames):
    frame = mosi_frames[10]
    from_array, _ = video_extractor.extract_all(frame)
    from_jpeg, mask_jpeg = video_extractor.extract_all(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    from_grey, mask_grey = video_extractor.extract_all(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    assert mask_jpeg.all() and mask_grey.all()
    np.testing.assert_allclose(from_jpeg[:, :6], from_array[:, :6], atol=0.05)  # position and pose survive compression


@pytest.mark.parametrize("chunk, message", [
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 4), np.uint8), "shape"),
    (b"not an image", "not a decodable image"),
])
def test_bad_frames_say_what_to_send(video_extractor, chunk, message):
    with pytest.raises(ValueError, match=message):
        video_extractor.extract(chunk, session="bad")
    video_extractor.close("bad")


def test_spec(video_extractor):
    spec = video_extractor.spec
    assert (spec.extractor, spec.size, spec.rate) == ("face-mesh-geometry", 17, 30.0)
