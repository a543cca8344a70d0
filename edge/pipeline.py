"""Analysis: each camera's freshest frame -> faces -> emotions -> tracks -> events.

A ``CameraAnalysis`` holds what belongs to one camera (its face scanner, tracker and last
published state); an ``AnalysisPool`` of a few worker threads, two per core by default, each
with its own interpreter, analyses whichever camera has waited longest for its turn. So the
cost is set by the cores, not by the number of cameras: a thread and an interpreter per camera
made the CPU per analysed frame grow from 14 to 22.5 ms between 4 and 8 cameras (issue 11).
When the CPU is short, every camera is served in turn (earliest due first), so none starves;
frames that arrive while a camera waits replace each other and are counted as dropped.

The daemon builds the stages and wires them here; the stages know nothing of each other.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edge.comms import Publisher
from edge.emotions import EmotionClassifier
from edge.events import CameraState, Event
from edge.faces import FaceScanner, crop, to_gray
from edge.metrics import Metrics
from edge.track import Tracker, TrackEvent
from edge.video import CameraReader, Frame

log = logging.getLogger(__name__)

# A camera without a new frame this long is still "analysed" (with no faces), so its tracks end
# on time when its stream stops, and the pool notices a file that has ended.
IDLE_TICK_S = 0.5
# Frames of a new size whose aspect ratio is within this of the old one's show the same view
# (640x480 -> 1280x960, 1920x1080 -> 1280x720): its faces keep their tracks.
SAME_VIEW_TOLERANCE = 0.02


@dataclass(frozen=True)
class Shown:
    """The latest analysed frame of a camera and its tracked faces, for the live view."""

    gray: np.ndarray
    faces: list[dict]  # track_id, box [x, y, w, h], emotion, confidence
    monotonic: float

    def age(self) -> float:
        return time.monotonic() - self.monotonic


class CameraAnalysis:
    """One camera's analysis state; only one worker at a time runs ``process`` on it."""

    def __init__(
        self,
        device_id: str,
        reader: CameraReader,
        scanner: FaceScanner,
        tracker: Tracker,
        publisher: Publisher,
        metrics: Metrics,
        fps: float,
        keep_shown: bool = False,
    ) -> None:
        self.device_id, self.reader, self.scanner = device_id, reader, scanner
        self.tracker, self.publisher, self.metrics = tracker, publisher, metrics
        self.interval = 1.0 / fps
        self.name = reader.camera.name
        self.last_processed = time.monotonic()  # of the last analysed frame
        self.next_due = 0.0  # monotonic time from which the next frame may be analysed
        # When a worker last took this camera, for a frame or an idle tick: the watchdog's
        # sign that the analysis goes on. From the start: the same grace for the first turn.
        self.last_tick = time.monotonic()
        self.failed_frames = 0
        self._frame_shape: tuple[int, ...] | None = None
        self.done = False  # its file ended and its tracks are closed
        self._last_failure_log = 0.0
        self._state: tuple[int, str, bool] | None = None  # last published CameraState.summary
        self.keep_shown = keep_shown  # the live view is on: keep the latest frame (not a copy)
        self.shown: Shown | None = None
        self._analysed_at: deque[float] = deque(maxlen=32)

    def process(self, frame: Frame, classifier: EmotionClassifier) -> None:
        """Analyse one frame; a failure is counted and logged, never raised."""
        try:
            self._analyse(frame, classifier)
        except Exception:  # one bad frame must not stop the camera for good
            self._failed_frame()
            # Not a sighting: faces not seen for lost_after_s still end (while every frame
            # failed, they stayed "present" for ever, and the state with them). Should that
            # fail too (the failure was in publishing), the failure above already said so.
            with contextlib.suppress(Exception):
                self._emit(self.tracker.tick(frame.monotonic))

    def idle(self) -> None:
        """No frame for a while: let tracks age out, and close the camera once its file ended."""
        if self.reader.finished and not self.reader.has_frame:
            self.close()
            return
        self._emit(self.tracker.tick(time.monotonic()))

    def close(self) -> None:
        """End every track and publish the final state (once)."""
        if not self.done:
            self.done = True
            self._emit(self.tracker.close())
            self._publish_state()

    def _analyse(self, frame: Frame, classifier: EmotionClassifier) -> None:
        m, camera = self.metrics, self.name
        started = time.perf_counter()
        m.stage_seconds.labels(camera, "read").observe(max(0.0, time.monotonic() - frame.monotonic))
        gray = to_gray(frame.image)
        if gray.shape != self._frame_shape:
            if self._frame_shape is not None:
                self._resized(self._frame_shape, gray.shape)
            self._frame_shape = gray.shape
        boxes = self.scanner.find(gray)
        detected = time.perf_counter()
        probs = classifier.predict([crop(gray, box) for box in boxes])
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
        self._analysed_at.append(self.last_processed)
        if self.keep_shown:
            self.shown = Shown(gray, self._faces(), self.last_processed)

    def _resized(self, old: tuple[int, ...], new: tuple[int, ...]) -> None:
        """The camera changed its resolution (a stream's profile, a file's next part). The
        same view at another size keeps its faces' tracks, their boxes scaled: ending them made
        each face an `end`, a new track id and a `start`, and the state said 0 faces between.
        Another view (the aspect ratio changed: a crop) matches nothing: its faces end and
        are found anew."""
        factor_y, factor_x = new[0] / old[0], new[1] / old[1]
        if abs(factor_x / factor_y - 1) <= SAME_VIEW_TOLERANCE:
            self.tracker.rescale((factor_x + factor_y) / 2)
        else:
            self._emit(self.tracker.close())
        self.scanner.forget()

    def due(self) -> bool:
        """The rate cap allows another frame now (a frame waiting past this is overdue)."""
        return time.monotonic() >= self.next_due

    def analysed_fps(self) -> float:
        """Frames analysed per second over the last few (0 once nothing came for 5 s)."""
        times = list(self._analysed_at)
        if len(times) < 2 or time.monotonic() - times[-1] > 5:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def _faces(self) -> list[dict]:
        labels = self.tracker.labels
        return [
            {
                "track_id": t.track_id,
                "box": t.box.as_list(),
                "emotion": labels[t.emotion],
                "confidence": round(float(t.scores[t.emotion]), 3),
            }
            for t in self.tracker.tracks
        ]

    def _emit(self, events: list[TrackEvent]) -> None:
        for track_event in events:
            event = Event(self.device_id, self.name, track_event)
            self.publisher.publish(event)
            self.metrics.events.labels(self.name, track_event.kind, track_event.emotion).inc()
            if track_event.kind != "end":
                self.metrics.end_to_end_seconds.labels(self.name).observe(event.latency())
        self._publish_state()

    def _publish_state(self) -> None:
        """The camera's state, only when the face count, the dominant emotion or whether the
        camera is up changed (idle ticks come here too: a camera going down is said)."""
        state = CameraState(
            self.device_id, self.name, tuple(self.tracker.present()), self.reader.stats.up
        )
        if state.summary() != self._state:
            self._state = state.summary()
            self.publisher.publish_state(state)

    def _failed_frame(self) -> None:
        """Log the first failure with its traceback, then at most one line a minute."""
        self.failed_frames += 1
        self.metrics.frames_failed.labels(self.name).inc()
        now = time.monotonic()
        if self.failed_frames == 1:
            log.exception("camera %s: frame analysis failed", self.name)
        elif now - self._last_failure_log >= 60:
            log.error("camera %s: %d frames failed so far", self.name, self.failed_frames)
        else:
            return
        self._last_failure_log = now


class AnalysisPool:
    """Worker threads that take turns over the cameras, earliest due first.

    A camera is ready when it has a new frame and its rate cap allows another (``next_due``),
    or when it has had nothing for ``IDLE_TICK_S``. Readers call ``wake`` on every new frame.
    """

    def __init__(self, cameras: list[CameraAnalysis], classifiers: list[EmotionClassifier]) -> None:
        self.cameras, self.classifiers = cameras, classifiers
        self._busy: set[str] = set()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(c,), name=f"analysis-{i}", daemon=True)
            for i, c in enumerate(classifiers)
        ]

    def start(self) -> AnalysisPool:
        for thread in self._threads:
            thread.start()
        return self

    def wake(self) -> None:
        with self._ready:
            self._ready.notify()

    def stop(self, timeout: float) -> None:
        """Stop taking frames, let the frames in hand finish, then close every camera."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for camera in self.cameras:
            if camera.name not in self._busy:
                camera.close()

    @property
    def done(self) -> bool:
        return all(camera.done for camera in self.cameras)

    @property
    def alive(self) -> bool:
        """False if a worker died (a bug): the daemon then exits to be restarted."""
        return self._stop.is_set() or all(thread.is_alive() for thread in self._threads)

    def _work(self, classifier: EmotionClassifier) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            camera, frame = job
            try:
                if frame is None:
                    camera.idle()
                else:
                    camera.process(frame, classifier)
            finally:
                with self._ready:
                    self._busy.discard(camera.name)
                    self._ready.notify()

    def _next_job(self) -> tuple[CameraAnalysis, Frame | None] | None:
        """Wait for the camera that has waited longest; claim it and take its frame."""
        with self._ready:
            while not self._stop.is_set():
                now = time.monotonic()
                job, wait = self._pick(now)
                if job is not None:
                    self._busy.add(job[0].name)
                    return job
                self._ready.wait(wait)
            return None

    def _pick(self, now: float) -> tuple[tuple[CameraAnalysis, Frame | None] | None, float]:
        best: CameraAnalysis | None = None
        wait = IDLE_TICK_S
        for camera in self.cameras:
            if camera.done or camera.name in self._busy:
                continue
            if not camera.reader.has_frame:
                idle_for = now - max(camera.last_tick, camera.next_due)
                if idle_for >= IDLE_TICK_S or camera.reader.finished:
                    camera.last_tick = now
                    return (camera, None), 0.0
                wait = min(wait, IDLE_TICK_S - idle_for)
            elif camera.next_due > now:
                wait = min(wait, camera.next_due - now)
            elif best is None or camera.next_due < best.next_due:
                best = camera
        if best is None:
            return None, max(wait, 0.001)
        frame = best.reader.latest()
        # The rate cap as a schedule, not a gap after each frame: a frame analysed late lets the
        # next one come up to half an interval early, so a camera sending exactly the capped
        # rate with some jitter is not made to drop every frame that arrives a little early.
        best.next_due = max(best.next_due + best.interval, now - best.interval / 2)
        best.last_tick = now
        return (best, frame), 0.0
