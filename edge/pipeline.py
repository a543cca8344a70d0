"""One camera's analysis loop: freshest frame -> faces -> emotions -> tracks -> events.

The daemon builds one per camera from real stage objects and wires them; the stages themselves
know nothing of each other.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from edge.comms import Publisher
from edge.emotions import EmotionClassifier
from edge.events import CameraState, Event
from edge.faces import FaceScanner, crop, to_gray
from edge.metrics import Metrics
from edge.track import Tracker, TrackEvent
from edge.video import CameraReader, Frame

log = logging.getLogger(__name__)


class CameraPipeline:
    def __init__(
        self,
        device_id: str,
        reader: CameraReader,
        scanner: FaceScanner,
        classifier: EmotionClassifier,
        tracker: Tracker,
        publisher: Publisher,
        metrics: Metrics,
        fps: float,
    ) -> None:
        self.device_id, self.reader, self.scanner = device_id, reader, scanner
        self.classifier, self.tracker, self.publisher = classifier, tracker, publisher
        self.metrics, self.interval = metrics, 1.0 / fps
        self.name = reader.camera.name
        self.last_processed = 0.0  # monotonic time of the last analysed frame (watchdog)
        self.failed_frames = 0
        self._last_failure_log = 0.0
        self._state: tuple[int, str] | None = None  # last published (faces, dominant emotion)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.name}", daemon=True)

    def start(self) -> CameraPipeline:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            next_due = time.monotonic()
            while not self._stop.is_set():
                # The rate cap: frames arriving while we wait are replaced (and counted dropped).
                self._stop.wait(max(0.0, next_due - time.monotonic()))
                frame = self.reader.latest(timeout=0.5)
                if frame is None:
                    self._emit(self.tracker.update([], self._no_probs(), time.monotonic()))
                    if self.reader.finished:
                        break
                    continue
                next_due = max(next_due + self.interval, time.monotonic())
                try:
                    self.process(frame)
                except Exception:  # one bad frame must not stop the camera for good
                    self._failed_frame()
        finally:
            self._emit(self.tracker.close())
            self._publish_state()

    def process(self, frame: Frame) -> None:
        m, camera = self.metrics, self.name
        started = time.perf_counter()
        m.stage_seconds.labels(camera, "read").observe(max(0.0, time.monotonic() - frame.monotonic))
        gray = to_gray(frame.image)
        boxes = self.scanner.find(gray)
        detected = time.perf_counter()
        probs = self.classifier.predict([crop(gray, box) for box in boxes])
        classified = time.perf_counter()
        events = self.tracker.update(boxes, probs, frame.monotonic, frame.captured)
        tracked = time.perf_counter()
        self._emit(events)
        m.stage_seconds.labels(camera, "detect").observe(detected - started)
        m.stage_seconds.labels(camera, "classify").observe(classified - detected)
        m.stage_seconds.labels(camera, "track").observe(tracked - classified)
        m.stage_seconds.labels(camera, "publish").observe(time.perf_counter() - tracked)
        m.frames_processed.labels(camera).inc()
        m.faces_detected.labels(camera).inc(len(boxes))
        self.last_processed = time.monotonic()

    def _emit(self, events: list[TrackEvent]) -> None:
        for track_event in events:
            event = Event(self.device_id, self.name, track_event)
            self.publisher.publish(event)
            self.metrics.events.labels(self.name, track_event.kind, track_event.emotion).inc()
            if track_event.kind != "end":
                self.metrics.end_to_end_seconds.labels(self.name).observe(
                    max(0.0, time.time() - track_event.frame_time)
                )
        if events or self._state is None:
            self._publish_state()

    def _publish_state(self) -> None:
        """The camera's state, only when the face count or the dominant emotion changed."""
        state = CameraState(self.device_id, self.name, tuple(self.tracker.present()))
        if state.summary() != self._state:
            self._state = state.summary()
            self.publisher.publish_state(state)

    def _failed_frame(self) -> None:
        """Log the first failure with its traceback, then at most one line a minute."""
        self.failed_frames += 1
        now = time.monotonic()
        if self.failed_frames == 1:
            log.exception("camera %s: frame analysis failed", self.name)
        elif now - self._last_failure_log >= 60:
            log.error("camera %s: %d frames failed so far", self.name, self.failed_frames)
        else:
            return
        self._last_failure_log = now

    def _no_probs(self) -> np.ndarray:
        return np.zeros((0, len(self.classifier.labels)), np.float32)
