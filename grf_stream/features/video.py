"""Video: facial-expression geometry per frame, from MediaPipe's 468-point face mesh.

CMU-MOSI's visual features were FACET action units; MMSA-FET computes OpenFace or MediaPipe
landmarks. This extractor measures, per frame, what those describe: where the face is, how the
head is turned, and how mouth, eyes and brows are shaped. Distances are 3D landmark distances
divided by the distance between the outer eye corners, and heights are measured along the face's
own up axis, so the values do not change with face size, position or roll in the image:

    0  face_x         face centre, -1 (left edge) .. 1 (right edge)
    1  face_y         face centre, -1 (top) .. 1 (bottom)
    2  face_size      eye-corner distance / longer image side (nearness to the camera)
    3  yaw            head turn, radians (depth tilt of the eye line)
    4  pitch          head nod, radians (depth tilt of the chin-to-forehead line)
    5  roll           head tilt, radians (eye line angle in the image)
    6  mouth_open     inner lips apart
    7  mouth_width    mouth corner to corner
    8  smile          mouth corners' height above the lip centre
    9  right_eye_open lid gap / eye width (the subject's right eye)
    10 left_eye_open
    11 right_brow     brow middle's height above the upper lid
    12 left_brow
    13 brow_gap       inner brow ends apart (small when frowning)
    14 jaw_drop       nose tip to chin
    15 upper_lip      nose tip to upper lip
    16 face_score     the mesh's confidence that a face is there

A frame with no face gives a row of zeros with mask False. Frames are BGR uint8 (OpenCV's
order); a session keeps the face crop of its last frame, so tracking survives across chunks and
chunked extraction equals whole-video extraction exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from grf_stream.features.base import Extractor
from grf_stream.features.face import MIN_FACE_SCORE, FaceCrop, FaceDetector, FaceMesh, crop_from_landmarks

# Rows per second. Offline, every file is sampled at this rate (grf_stream/features/media.py); live, a
# row is one frame received, so a client should send frames at this rate (the server keeps only the
# newest frame of a session when it falls behind).
FRAME_RATE = 30.0

GEOMETRY = ["face_x", "face_y", "face_size", "yaw", "pitch", "roll", "mouth_open", "mouth_width", "smile",
            "right_eye_open", "left_eye_open", "right_brow", "left_brow", "brow_gap", "jaw_drop", "upper_lip", "face_score"]

# Face-mesh landmark indices (MediaPipe's canonical face model; "right" is the subject's right).
RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER = 33, 133, 362, 263
RIGHT_UPPER_LID, RIGHT_LOWER_LID, LEFT_UPPER_LID, LEFT_LOWER_LID = 159, 145, 386, 374
RIGHT_BROW_MIDDLE, LEFT_BROW_MIDDLE, RIGHT_BROW_INNER, LEFT_BROW_INNER = 105, 334, 107, 336
MOUTH_RIGHT, MOUTH_LEFT, INNER_LIP_TOP, INNER_LIP_BOTTOM, OUTER_LIP_TOP, OUTER_LIP_BOTTOM = 61, 291, 13, 14, 0, 17
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10


@dataclass
class _Track:
    crop: FaceCrop | None = None  # where the face was in the session's last frame


class VideoExtractor(Extractor):
    """Video frames -> (n_frames, 17) float32 face geometry; rows without a face are masked."""

    name, version, size, rate = "face-mesh-geometry", "1", len(GEOMETRY), FRAME_RATE

    def __init__(self) -> None:
        super().__init__()
        cv2.setNumThreads(1)  # as torch: one thread per extractor, parallelism across extractors
        self.detector, self.mesh = FaceDetector(), FaceMesh()

    def _new_state(self) -> _Track:
        return _Track()

    def warm_input(self) -> bytes:
        return cv2.imencode(".jpg", np.full((480, 640, 3), 128, np.uint8))[1].tobytes()  # as clients send frames

    def warm(self) -> None:
        super().warm()  # the detector finds no face in a blank frame, so run the mesh on a crop of it too
        self.mesh(np.full((480, 640, 3), 128, np.uint8), FaceCrop(320.0, 240.0, 240.0, 0.0))

    def _extract(self, track: _Track, chunk) -> tuple[np.ndarray, np.ndarray]:
        frames = as_bgr_frames(chunk)
        features = np.zeros((len(frames), self.size), np.float32)
        mask = np.zeros(len(frames), bool)
        for i, frame in enumerate(frames):
            landmarks, score = self._find_face(track, frame)
            if landmarks is not None:
                features[i], mask[i] = face_geometry(landmarks, score, frame.shape), True
        return features, mask

    def _find_face(self, track: _Track, frame: np.ndarray) -> tuple[np.ndarray | None, float]:
        """Follow the session's face from its last crop; detect it afresh when there is none or it was lost."""
        landmarks, score = self._mesh_in(frame, track.crop)
        if landmarks is None:
            landmarks, score = self._mesh_in(frame, self.detector(frame))
        track.crop = crop_from_landmarks(landmarks) if landmarks is not None else None
        return landmarks, score

    def _mesh_in(self, frame: np.ndarray, crop: FaceCrop | None) -> tuple[np.ndarray | None, float]:
        if crop is None:
            return None, 0.0
        landmarks, score = self.mesh(frame, crop)
        return (landmarks, score) if score >= MIN_FACE_SCORE else (None, 0.0)


def as_bgr_frames(chunk) -> list[np.ndarray]:
    """A chunk as a list of BGR uint8 frames.

    Accepts one frame (H, W, 3) BGR or (H, W) gray, a stack (N, H, W, 3), JPEG/PNG bytes, or a
    list of any of these.
    """
    if isinstance(chunk, (list, tuple)):
        return [frame for item in chunk for frame in as_bgr_frames(item)]
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        frame = cv2.imdecode(np.frombuffer(chunk, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError(f"video chunk of {len(chunk)} bytes is not a decodable image: send JPEG or PNG bytes, or a uint8 array")
        return [frame]
    frames = np.asarray(chunk)
    if frames.dtype != np.uint8:
        raise ValueError(f"video frames of dtype {frames.dtype} not supported: send uint8 pixels (0-255)")
    if frames.ndim == 2:
        return [cv2.cvtColor(frames, cv2.COLOR_GRAY2BGR)]
    if frames.ndim == 3 and frames.shape[2] == 3:
        return [frames]
    if frames.ndim == 4 and frames.shape[3] == 3:
        return list(frames)
    raise ValueError(f"video chunk has shape {frames.shape}: send a frame (H, W, 3) BGR, (H, W) gray, or a stack (N, H, W, 3)")


def face_geometry(p: np.ndarray, score: float, image_shape: tuple) -> np.ndarray:
    """The 17 measures of the module docstring from 468 landmarks (image pixels, z at the same scale)."""
    height, width = image_shape[:2]
    eye_span = np.linalg.norm(p[LEFT_EYE_OUTER] - p[RIGHT_EYE_OUTER])
    across, up = _face_axes(p)

    def apart(a: int, b: int) -> float:
        return float(np.linalg.norm(p[a] - p[b]) / eye_span)

    def above(a: int, b: int) -> float:  # how far a sits above b along the face's up axis
        return float((p[a] - p[b]) @ up / eye_span)

    centre = p[:, :2].mean(axis=0)
    corners, lip_centre = (p[MOUTH_RIGHT] + p[MOUTH_LEFT]) / 2, (p[OUTER_LIP_TOP] + p[OUTER_LIP_BOTTOM]) / 2
    return np.array([
        centre[0] / width * 2 - 1,
        centre[1] / height * 2 - 1,
        eye_span / max(height, width),
        np.arcsin(np.clip(across[2], -1, 1)),
        np.arcsin(np.clip(up[2], -1, 1)),
        np.arctan2(across[1], across[0]),
        apart(INNER_LIP_TOP, INNER_LIP_BOTTOM),
        apart(MOUTH_RIGHT, MOUTH_LEFT),
        float((corners - lip_centre) @ up / eye_span),
        apart(RIGHT_UPPER_LID, RIGHT_LOWER_LID) / apart(RIGHT_EYE_OUTER, RIGHT_EYE_INNER),
        apart(LEFT_UPPER_LID, LEFT_LOWER_LID) / apart(LEFT_EYE_OUTER, LEFT_EYE_INNER),
        above(RIGHT_BROW_MIDDLE, RIGHT_UPPER_LID),
        above(LEFT_BROW_MIDDLE, LEFT_UPPER_LID),
        apart(RIGHT_BROW_INNER, LEFT_BROW_INNER),
        apart(NOSE_TIP, CHIN),
        apart(NOSE_TIP, OUTER_LIP_TOP),
        score,
    ], dtype=np.float32)


def _face_axes(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors across the face (right eye to left eye) and up it (chin to forehead), 3D."""
    across = p[LEFT_EYE_OUTER] - p[RIGHT_EYE_OUTER]
    across /= np.linalg.norm(across)
    up = p[FOREHEAD] - p[CHIN]
    up -= (up @ across) * across
    return across, up / np.linalg.norm(up)


def stored_mask(features: np.ndarray) -> np.ndarray:
    """The mask of video rows read back from a feature store, which keeps rows but not masks:
    rows without a face are all zeros, and a real row's face_score is at least MIN_FACE_SCORE."""
    return features[:, GEOMETRY.index("face_score")] > 0
