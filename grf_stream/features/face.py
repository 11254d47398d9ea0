"""Face landmarks: MediaPipe's face detector and 468-point face mesh, run by OpenCV's DNN module.

The two networks are MediaPipe's own (`models/`, Apache-2.0, copied unchanged from the
mediapipe 0.10.21 wheel; see models/README.md). This file re-implements the few steps of
MediaPipe's face-mesh graph around them, so the project needs no mediapipe install (see the README
for why): BlazeFace finds a face when none is tracked; the mesh runs on a 192x192 crop rotated
so the eyes are level; the next frame's crop comes from this frame's landmarks, and detection runs
again only when the mesh's face score drops (MediaPipe's tracking mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MODELS = Path(__file__).resolve().parent / "models"
DETECTOR_SIZE, MESH_SIZE = 128, 192  # network input sides in pixels
MIN_DETECTION_SCORE, MIN_FACE_SCORE = 0.5, 0.5  # MediaPipe's defaults
ROI_SCALE = 1.5  # crop side / face side, as MediaPipe
NMS_OVERLAP = 0.3  # detections overlapping the best by more than this IoU are blended into it
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # mesh indices that level the next crop


@dataclass(frozen=True)
class FaceCrop:
    """A square region of an image, rotated by `angle` (radians, the eye line's angle in the image)."""

    cx: float
    cy: float
    side: float
    angle: float

    def to_image(self, size: int) -> np.ndarray:
        """2x3 affine map from crop pixels (size x size) to image pixels."""
        scale = self.side / size
        cos, sin = math.cos(self.angle) * scale, math.sin(self.angle) * scale
        half = size / 2
        return np.array([[cos, -sin, self.cx - cos * half + sin * half], [sin, cos, self.cy - sin * half - cos * half]])


class FaceDetector:
    """BlazeFace short-range: the most confident face of an image as a FaceCrop, or None."""

    def __init__(self) -> None:
        self.net = cv2.dnn.readNetFromTFLite(str(MODELS / "face_detection_short_range.tflite"))
        self.anchors = _blazeface_anchors()  # (896, 2) anchor centres in [0, 1]

    def __call__(self, bgr: np.ndarray) -> FaceCrop | None:
        height, width = bgr.shape[:2]
        scale = DETECTOR_SIZE / max(height, width)  # letterbox: keep the aspect ratio, pad with black
        offset_x, offset_y = (DETECTOR_SIZE - width * scale) / 2, (DETECTOR_SIZE - height * scale) / 2
        to_input = np.array([[scale, 0, offset_x], [0, scale, offset_y]])
        square = cv2.warpAffine(bgr, to_input, (DETECTOR_SIZE, DETECTOR_SIZE), flags=cv2.INTER_LINEAR)
        scores, boxes = self._run(square)
        best = int(np.argmax(scores))
        if scores[best] < MIN_DETECTION_SCORE:
            return None
        box = _blend_overlapping(boxes, scores, best) * DETECTOR_SIZE  # (cx, cy, w, h, 6 keypoints) in input pixels
        box[0::2] = (box[0::2] - offset_x) / scale  # back to image pixels; x at even indices, y at odd ones
        box[1::2] = (box[1::2] - offset_y) / scale
        right_eye, left_eye = box[4:6], box[6:8]
        angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
        return FaceCrop(float(box[0]), float(box[1]), float(max(box[2], box[3])) * ROI_SCALE, angle)

    def _run(self, square_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb = cv2.cvtColor(square_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0  # the network wants [-1, 1]
        self.net.setInput(rgb.transpose(2, 0, 1)[None])  # (1, 3, 128, 128)
        logits, regressors = self.net.forward(["classificators", "regressors"])  # (1, 896, 1), (1, 896, 16)
        scores = 1 / (1 + np.exp(-np.clip(logits[0, :, 0].astype(np.float64), -100, 100)))
        boxes = regressors[0] / DETECTOR_SIZE  # offsets in input sides, relative to the anchor centre
        boxes[:, [0, 1]] += self.anchors
        boxes[:, 4::2] += self.anchors[:, :1]
        boxes[:, 5::2] += self.anchors[:, 1:]
        return scores, boxes


class FaceMesh:
    """468 face landmarks (x, y in image pixels, z at the same scale) and a face score in [0, 1]."""

    def __init__(self) -> None:
        self.net = cv2.dnn.readNetFromTFLite(str(MODELS / "face_landmark.tflite"))
        self.outputs = list(self.net.getUnconnectedOutLayersNames())

    def __call__(self, bgr: np.ndarray, crop: FaceCrop) -> tuple[np.ndarray, float]:
        to_image = crop.to_image(MESH_SIZE)
        patch = cv2.warpAffine(bgr, to_image, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        rgb = cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0  # the network wants [0, 1]
        self.net.setInput(rgb.transpose(2, 0, 1)[None])  # (1, 3, 192, 192)
        outputs = sorted(self.net.forward(self.outputs), key=np.size)
        face_logit, points = float(outputs[0].ravel()[0]), outputs[1].reshape(468, 3)  # crop pixels
        landmarks = np.empty_like(points, dtype=np.float64)
        landmarks[:, :2] = points[:, :2] @ to_image[:, :2].T + to_image[:, 2]
        landmarks[:, 2] = points[:, 2] * crop.side / MESH_SIZE
        return landmarks, 1 / (1 + math.exp(-max(min(face_logit, 100.0), -100.0)))


def crop_from_landmarks(landmarks: np.ndarray) -> FaceCrop:
    """The next frame's crop: the landmarks' box in the eye-levelled frame, enlarged as MediaPipe does."""
    eye_line = landmarks[LEFT_EYE_OUTER, :2] - landmarks[RIGHT_EYE_OUTER, :2]
    angle = math.atan2(eye_line[1], eye_line[0])
    cos, sin = math.cos(angle), math.sin(angle)
    levelled = landmarks[:, :2] @ np.array([[cos, -sin], [sin, cos]])  # rotate by -angle
    low, high = levelled.min(axis=0), levelled.max(axis=0)
    centre = (low + high) / 2 @ np.array([[cos, sin], [-sin, cos]])  # rotate back by +angle
    return FaceCrop(centre[0], centre[1], float((high - low).max()) * ROI_SCALE, angle)


def _blend_overlapping(boxes: np.ndarray, scores: np.ndarray, best: int) -> np.ndarray:
    """MediaPipe's weighted non-maximum suppression, for the best face only."""
    corners = np.concatenate([boxes[:, :2] - boxes[:, 2:4] / 2, boxes[:, :2] + boxes[:, 2:4] / 2], axis=1)
    top_left = np.maximum(corners[:, :2], corners[best, :2])
    bottom_right = np.minimum(corners[:, 2:], corners[best, 2:])
    overlap = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    areas = np.prod(boxes[:, 2:4], axis=1)
    iou = overlap / np.maximum(areas + areas[best] - overlap, 1e-12)
    weights = np.where((iou > NMS_OVERLAP) & (scores >= MIN_DETECTION_SCORE), scores, 0.0)
    weights[best] = scores[best]
    return (weights[:, None] * boxes).sum(axis=0) / weights.sum()


def _blazeface_anchors() -> np.ndarray:
    """Anchor centres of BlazeFace short-range: 2 per cell of a 16x16 grid, then 6 per cell of 8x8."""
    centres = []
    for grid, per_cell in ((16, 2), (8, 6)):
        y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cells = np.stack([(x.ravel() + 0.5) / grid, (y.ravel() + 0.5) / grid], axis=1)
        centres.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(centres)
