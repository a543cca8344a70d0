"""Faces stage: OpenCV's Haar cascade on a grayscale, optionally downscaled frame.

Detection dominates the per-frame cost (~134 ms for 640x480 at scaleFactor 1.1 on one core,
~40-65 ms downscaled 2x), so the frame is shrunk to ``max_width`` first and boxes are mapped back
to full-frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.emotions import ModelError

CASCADE = "haarcascade_frontalface_default.xml"
ROI_MARGIN = 0.5  # search area around a known face: its box grown by half its size per side
ROI_SIZE_RANGE = 1.25  # a known face is looked for at 0.8 .. 1.25 times its last size
# Around a known face Haar sees it at a few scales only (the search is scaled to the face), so
# it gathers fewer overlapping hits than in a full scan: with ``min_neighbors: 12`` the scan
# around a face found by a full scan missed it in every other frame. A face already found by a
# full scan at the configured strictness is followed with at most the default's 5.
ROI_MIN_NEIGHBORS = 5
# The cascade's window is 24 px: the image is shrunk until the smallest face sought is that size,
# so no scale is spent on faces smaller than wanted (24-40 px gave the same faces on the bench
# stream, 24 the lowest cost).
SMALLEST_SCANNED = 24


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

    def scaled(self, factor: float) -> Box:
        return Box(*(round(v * factor) for v in (self.x, self.y, self.w, self.h)))


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
            raise ModelError(f"{path}: cannot load the Haar cascade (OpenCV 4.x is required)")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_width = min_size, max_width

    def detect(self, gray: np.ndarray, near: Box | None = None) -> list[Box]:
        """Faces in a grayscale frame, as full-frame boxes; with ``near``, only faces of about
        that box's size in the area around it (a small fraction of the full scan's cost)."""
        if near is not None:
            return self._detect_near(gray, near)
        limit = min(1.0, self.max_width / gray.shape[1])
        return self._scan(gray, 0, 0, limit, self.min_size, None, self.min_neighbors)

    def _detect_near(self, gray: np.ndarray, box: Box) -> list[Box]:
        margin = round(box.w * ROI_MARGIN)
        x0, y0 = max(0, box.x - margin), max(0, box.y - margin)
        x1 = min(gray.shape[1], box.x + box.w + margin)
        y1 = min(gray.shape[0], box.y + box.h + margin)
        smallest = max(self.min_size, round(box.w / ROI_SIZE_RANGE))
        largest = round(box.w * ROI_SIZE_RANGE)
        if x1 - x0 < smallest or y1 - y0 < smallest:
            return []
        neighbors = min(self.min_neighbors, ROI_MIN_NEIGHBORS)
        return self._scan(gray[y0:y1, x0:x1], x0, y0, 1.0, smallest, largest, neighbors)

    def _scan(
        self,
        image: np.ndarray,
        x0: int,
        y0: int,
        limit: float,
        smallest: int,
        largest: int | None,
        neighbors: int,
    ) -> list[Box]:
        """Haar on ``image`` shrunk so the smallest face sought is ``SMALLEST_SCANNED`` px.

        OpenCV's pyramid starts at full size whatever ``minSize`` says, so scanning for 80-px
        faces on the full image paid for scales that can find nothing; shrinking first cut a
        full 640x480 scan (40-px faces) from ~77 to ~53 ms and a scan around an 80-px face from
        ~5 to ~1.5 ms on one core, with the same faces per frame on the bench stream.
        """
        scale = min(limit, SMALLEST_SCANNED / smallest)
        small = image
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            scale = 1.0
        low = max(8, round(smallest * scale))
        high = (round(largest * scale),) * 2 if largest else (0, 0)  # (0, 0): no limit
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self.scale_factor,
            minNeighbors=neighbors,
            minSize=(low, low),
            maxSize=high,
        )
        return [
            Box(
                round(x / scale) + x0,
                round(y / scale) + y0,
                round(w / scale),
                round(h / scale),
            )
            for x, y, w, h in found
        ]


class FaceScanner:
    """Where to look in each frame of one camera: the whole frame every ``full_scan_every``
    frames (and whenever nothing was found), otherwise only around the faces found last time.

    Haar on a 640x480 frame costs ~70-130 ms on one core; around an 80-px face it costs a few ms,
    so a camera with a face in view is analysed several times faster, and a new face is picked up
    within ``full_scan_every`` frames.
    """

    def __init__(self, detector: FaceDetector, full_scan_every: int = 10, offset: int = 0) -> None:
        self.detector, self.full_scan_every = detector, full_scan_every
        self._last: list[Box] = []
        # Cameras with faces in view scan fully in different frames, not all in the same tick.
        self._since_full = offset % full_scan_every

    def forget(self) -> None:
        """The next frame is scanned whole (the frame size changed: the old boxes mean nothing)."""
        self._last = []

    def find(self, gray: np.ndarray) -> list[Box]:
        self._since_full += 1
        found: list[Box] | None = None
        if self._last and self._since_full < self.full_scan_every:
            found = dedupe([b for last in self._last for b in self.detector.detect(gray, last)])
            if len(found) < len(self._last):
                # A face not found around its last place has moved past it, or Haar missed it
                # there this once: the whole frame is scanned now, not from the next frame on,
                # so a face still in view is not reported gone for a frame.
                found = None
        if found is None:
            self._since_full = 0
            found = dedupe(self.detector.detect(gray))
        self._last = found
        return found


def dedupe(boxes: list[Box], iou: float = 0.3) -> list[Box]:
    """Drop boxes that repeat one already kept: overlapping search areas find a face twice, and
    a full scan sometimes returns one face as two boxes a few pixels apart (IoU 0.4-0.5 on
    head-pose-face-detection-male.gif), which would be counted and classified twice."""
    kept: list[Box] = []
    for box in boxes:
        if all(box.iou(other) < iou for other in kept):
            kept.append(box)
    return kept


def to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def crop(gray: np.ndarray, box: Box) -> np.ndarray:
    return gray[max(box.y, 0) : box.y + box.h, max(box.x, 0) : box.x + box.w]
