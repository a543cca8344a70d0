"""Camera stage: one reader thread per camera, keeping only the freshest frame.

A live stream must be drained as fast as it arrives or its frames go stale, so each reader runs
on its own thread and overwrites a single slot; the analysis side takes the newest frame when it
is ready, and every frame overwritten unseen is counted as dropped. A reader that cannot open or
read its source releases it and reopens with capped exponential backoff, so a camera that comes
back is picked up again without restarting the daemon, and one that is down blocks nobody.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import CameraConfig

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
# Capped low enough that a stream which returns is read again within 10 s (open takes ~2 s).
BACKOFF_MAX_S = 5.0

# FFmpeg options for every network stream: TCP (no UDP packet loss smearing frames), and a socket
# timeout so a frozen server cannot block a read forever (measured: >75 s hang without it).
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|timeout;5000000")


@dataclass(frozen=True)
class Frame:
    camera: str
    image: np.ndarray  # BGR, as decoded
    captured: float  # Unix time when the reader got it (reported in events)
    monotonic: float  # the same instant on the monotonic clock (durations; immune to NTP steps)
    index: int  # per-camera sequence number


@dataclass
class ReaderStats:
    """Counters the metrics stage reads; written by the reader thread only."""

    frames_read: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    up: bool = False


Opener = Callable[[CameraConfig], cv2.VideoCapture]


def open_capture(camera: CameraConfig) -> cv2.VideoCapture:
    """Open a source with the backend and timeouts it needs; raises OSError if it won't open."""
    if camera.kind == "usb":
        capture = cv2.VideoCapture(camera.source, cv2.CAP_V4L2)
    else:
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(camera.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(camera.read_timeout_s * 1000),
        ]
        capture = cv2.VideoCapture(str(camera.source), cv2.CAP_FFMPEG, timeouts)
    if not capture.isOpened():
        capture.release()
        raise OSError(f"cannot open {camera.masked_source()}")
    return capture


class CameraReader:
    """Reads one camera on a daemon thread; ``latest()`` hands out the newest unseen frame."""

    def __init__(self, camera: CameraConfig, opener: Opener = open_capture) -> None:
        self.camera = camera
        self.stats = ReaderStats()
        self._opener = opener
        self._slot: Frame | None = None
        self._fresh = threading.Condition()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._fresh:
            self._fresh.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """True once a non-looping video file has been read to its end (or the reader stopped)."""
        return self._finished.is_set()

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not handed out before, waiting up to ``timeout`` seconds for one."""
        with self._fresh:
            if self._slot is None:
                self._fresh.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    def _run(self) -> None:
        backoff, index = BACKOFF_START_S, 0
        try:
            while not self._stop.is_set():
                try:
                    capture = self._opener(self.camera)
                except (OSError, cv2.error) as error:
                    self._down(f"{error}; retrying in {backoff:.1f} s")
                    backoff = self._pause(backoff)
                    continue
                first = index
                try:
                    index, ended = self._read_until_failure(capture, index)
                finally:
                    capture.release()
                if self._stop.is_set():
                    return
                if index == first:  # opened, but not one frame: back off like a failed open
                    self._down(f"{self.camera.masked_source()} opened but gave no frame")
                    backoff = self._pause(backoff)
                    continue
                backoff = BACKOFF_START_S
                if ended and not self.camera.loop:
                    log.info("camera %s: end of file", self.camera.name)
                    return
                if not ended:
                    self.stats.reconnects += 1
                    self._down("stream stopped delivering frames; reopening")
        finally:
            self.stats.up = False
            self._finished.set()
            with self._fresh:
                self._fresh.notify_all()

    def _pause(self, backoff: float) -> float:
        """Wait ``backoff`` seconds (or until stopped); returns the next, doubled, capped wait."""
        self._stop.wait(backoff)
        return min(backoff * 2, BACKOFF_MAX_S)

    def _read_until_failure(self, capture: cv2.VideoCapture, index: int) -> tuple[int, bool]:
        """Read until stopped or the source fails; returns (next index, reached end of file)."""
        pace = self._file_pace(capture)
        next_due = time.monotonic()
        while not self._stop.is_set():
            try:
                ok, image = capture.read()
            except cv2.error as error:  # a decoder error is a failed read, not a crash
                log.debug("camera %s: read failed: %s", self.camera.name, error)
                ok, image = False, None
            if not ok or image is None:
                return index, self.camera.kind == "file"
            if not self.stats.up:
                self._up(first_ever=index == 0)
            self._publish(Frame(self.camera.name, image, time.time(), time.monotonic(), index))
            index += 1
            if pace:
                next_due += pace
                self._stop.wait(max(0.0, next_due - time.monotonic()))
        return index, False

    def _file_pace(self, capture: cv2.VideoCapture) -> float:
        """Seconds per frame for video files, so a file plays like a live camera, not faster."""
        if self.camera.kind != "file":
            return 0.0
        fps = capture.get(cv2.CAP_PROP_FPS)
        return 1.0 / fps if 1 <= fps <= 240 else 1.0 / 25

    def _publish(self, frame: Frame) -> None:
        with self._fresh:
            if self._slot is not None:
                self.stats.frames_dropped += 1
            self._slot = frame
            self.stats.frames_read += 1
            self._fresh.notify_all()

    def _up(self, first_ever: bool) -> None:
        if first_ever or self.camera.kind != "file":
            log.info("camera %s: reading %s", self.camera.name, self.camera.masked_source())
        self.stats.up, self._warned = True, False

    def _down(self, why: str) -> None:
        """Warn once per outage; repeats while it lasts go to debug, not to the journal."""
        if self._warned:
            log.debug("camera %s: %s", self.camera.name, why)
        else:
            log.warning("camera %s: %s", self.camera.name, why)
            self._warned = True
        self.stats.up = False
