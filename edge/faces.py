"""Faces stage: OpenCV's Haar cascade on a grayscale, optionally downscaled frame.

Detection dominates the per-frame cost (~134 ms for 640x480 at scaleFactor 1.1 on one core,
~40-65 ms downscaled 2x), so the frame is shrunk to ``max_width`` first and boxes are mapped back
to full-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Box:
    """A face in full-frame pixels."""

    x: int
    y: int
    w: int
    h: int

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union else 0.0

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class FaceDetector:
    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 40,
        max_width: int = 640,
    ) -> None:
        path = cv2.data.haarcascades + CASCADE
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path} (OpenCV 4.x is required)")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_width = min_size, max_width

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Faces in a grayscale frame, as full-frame boxes."""
        scale = min(1.0, self.max_width / gray.shape[1])
        small = gray
        if scale < 1.0:
            size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        min_side = max(8, round(self.min_size * scale))
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        return [
            Box(round(x / scale), round(y / scale), round(w / scale), round(h / scale))
            for x, y, w, h in found
        ]


def to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def crop(gray: np.ndarray, box: Box) -> np.ndarray:
    return gray[max(box.y, 0) : box.y + box.h, max(box.x, 0) : box.x + box.w]
