"""Tracking: stable ids, smoothing against noisy frames, events only when they matter."""

from __future__ import annotations

import numpy as np
import pytest

from convert import EMOTIONS
from edge.faces import Box
from edge.track import Tracker

HAPPY, SAD = EMOTIONS.index("happy"), EMOTIONS.index("sad")


def probs(label: int, confidence: float = 0.8) -> np.ndarray:
    p = np.full(len(EMOTIONS), (1 - confidence) / (len(EMOTIONS) - 1))
    p[label] = confidence
    return p


def tracker(**kw) -> Tracker:
    return Tracker(EMOTIONS, **{"heartbeat_s": 0, **kw})


def test_a_face_moving_slowly_keeps_its_track_id():
    t = tracker()
    events = []
    for i in range(20):
        events += t.update([Box(100 + 3 * i, 100, 80, 80)], np.array([probs(HAPPY)]), now=i * 0.1)
    assert [(e.kind, e.track_id, e.emotion) for e in events] == [("start", 1, "happy")]


def test_one_noisy_frame_does_not_flip_the_emotion():
    t = tracker()
    box = [Box(100, 100, 80, 80)]
    events = t.update(box, np.array([probs(HAPPY)]), now=0.0)
    events += t.update(box, np.array([probs(SAD, 0.95)]), now=0.1)  # one outlier
    for i in range(2, 10):
        events += t.update(box, np.array([probs(HAPPY)]), now=i * 0.1)
    assert [e.kind for e in events] == ["start"]


def test_a_lasting_change_is_reported_once():
    t = tracker()
    box = [Box(100, 100, 80, 80)]
    events = t.update(box, np.array([probs(HAPPY)]), now=0.0)
    for i in range(1, 15):
        events += t.update(box, np.array([probs(SAD)]), now=i * 0.1)
    assert [(e.kind, e.emotion) for e in events] == [("start", "happy"), ("change", "sad")]


def test_two_faces_get_two_tracks_and_each_ends_when_gone():
    t = tracker(lost_after_s=0.5)
    left, right = Box(10, 10, 60, 60), Box(300, 10, 60, 60)
    events = t.update([left, right], np.array([probs(HAPPY), probs(SAD)]), now=0.0)
    events += t.update([left, right], np.array([probs(HAPPY), probs(SAD)]), now=0.1)
    events += t.update([left], np.array([probs(HAPPY)]), now=0.3)
    events += t.update([left], np.array([probs(HAPPY)]), now=0.6)
    summary = [(e.kind, e.track_id, e.emotion) for e in events]
    assert summary == [("start", 1, "happy"), ("start", 2, "sad"), ("end", 2, "sad")]
    assert [(e.kind, e.track_id) for e in t.close()] == [("end", 1)]


def test_heartbeat_while_a_face_stays():
    t = tracker(heartbeat_s=1.0)
    box = [Box(100, 100, 80, 80)]
    kinds = [e.kind for i in range(14) for e in t.update(box, np.array([probs(HAPPY)]), i / 4)]
    assert kinds == ["start", "heartbeat", "heartbeat", "heartbeat"]  # at 0.25 and 1.25, ...


def test_heartbeats_keep_their_period_whatever_the_frame_rate():
    """Frames every 0.375 s, heartbeat every 1 s: 29 heartbeats in the 29 s after the start,
    not one per 1.125 s (each came at the first frame after the last one's time + 1 s)."""
    t = tracker(heartbeat_s=1.0)
    box = [Box(100, 100, 80, 80)]
    times = [i * 0.375 for i in range(81)]  # up to 30 s
    kinds = [e.kind for now in times for e in t.update(box, np.array([probs(HAPPY)]), now)]
    assert kinds.count("heartbeat") == 29


def test_a_face_seen_in_one_frame_only_makes_no_event():
    """Haar's false faces last a frame: no start, no end, no face count for them."""
    t = tracker()
    face, ghost = Box(100, 100, 80, 80), Box(400, 300, 120, 120)
    events = t.update([face], np.array([probs(HAPPY)]), now=0.0)
    events += t.update([face, ghost], np.array([probs(HAPPY), probs(SAD)]), now=0.1)
    events += t.update([face], np.array([probs(HAPPY)]), now=0.2)
    for i in range(3, 30):
        events += t.update([face], np.array([probs(HAPPY)]), now=i * 0.1)
    assert [(e.kind, e.track_id) for e in events] == [("start", 1)]
    assert t.present() == [("happy", pytest.approx(0.8))]


def test_one_face_found_twice_in_a_frame_stays_one_track():
    """Boxes Haar returned for one face on a bench clip (head-pose-face-detection-male.gif):
    IoU 0.53. The second must not start a second track."""
    t = tracker()
    first, twice = Box(200, 40, 95, 95), Box(198, 68, 95, 95)
    events = t.update([first], np.array([probs(HAPPY)]), now=0.0)
    events += t.update([first], np.array([probs(HAPPY)]), now=0.1)
    for i in range(2, 20):
        boxes = [first, twice] if i % 3 == 0 else [first]
        events += t.update(boxes, np.array([probs(HAPPY)] * len(boxes)), now=i * 0.1)
    assert [(e.kind, e.track_id) for e in events] == [("start", 1)]
    assert len(t.present()) == 1


def test_a_clock_step_backwards_does_not_keep_a_gone_face_alive():
    """NTP stepping the wall clock back (boards without RTC) must not freeze track timing."""
    t = tracker(lost_after_s=0.5)
    box = [Box(100, 100, 80, 80)]
    t.update(box, np.array([probs(HAPPY)]), now=10.0, wall=1_800_000_000.0)
    t.update(box, np.array([probs(HAPPY)]), now=10.1, wall=1_800_000_000.5)
    events = t.update([], np.zeros((0, 7)), now=10.7, wall=1_700_000_000.0)
    assert [(e.kind, e.frame_time) for e in events] == [("end", 1_800_000_000.5)]


def test_a_face_the_detector_misses_every_other_frame_is_announced():
    """Haar found the demo's face in every other analysed frame: it is a face all the same."""
    t = tracker()
    face = Box(220, 52, 120, 120)
    events = []
    for i in range(6):
        boxes = [face] if i % 2 == 0 else []
        events += t.update(boxes, np.array([probs(HAPPY)] * len(boxes)), now=i * 0.2)
    assert [(e.kind, e.track_id) for e in events] == [("start", 1)]


def test_a_face_ends_on_time_while_every_frame_fails_to_be_analysed():
    """A frame whose analysis fails (the interpreter out of memory, a driver error) is no
    sighting: the face seen before it ends after lost_after_s as always. Tracks aged only in
    frames analysed, so while every frame failed the face stayed "present" for ever, and the
    camera's state with it; the failures are counted in frames_failed_total."""
    import time

    from conftest import SHARED

    from edge import DEFAULT_MODEL
    from edge.comms import PublisherStats
    from edge.config import CameraConfig
    from edge.emotions import EmotionClassifier
    from edge.faces import FaceDetector, FaceScanner
    from edge.metrics import Metrics
    from edge.pipeline import CameraAnalysis
    from edge.video import CameraReader, FFmpegSource, Frame

    class Kept:
        """The publisher: keeps what it is handed."""

        def __init__(self) -> None:
            self.stats, self.events, self.states = PublisherStats(connected=None), [], []

        def publish(self, event) -> None:
            self.events.append(event.track.kind)

        def publish_state(self, state) -> None:
            self.states.append(len(state.faces))

    class Broken:
        """An interpreter that fails at every call."""

        def predict(self, faces):
            raise RuntimeError("interpreter failed")

    camera = CameraConfig(name="door", source=str(SHARED / "media" / "asl-again.mkv"))
    source = FFmpegSource(camera)
    images = [image for image, _ in zip(source.frames(), range(40), strict=False)]
    source.close()
    model, kept, metrics = EmotionClassifier(DEFAULT_MODEL), Kept(), Metrics()
    analysis = CameraAnalysis(
        "hall", CameraReader(camera), FaceScanner(FaceDetector()),
        Tracker(model.labels, lost_after_s=1.0), kept, metrics, fps=10,
    )  # fmt: skip
    start = time.monotonic()

    def frame(index: int) -> Frame:
        return Frame("door", images[index], time.time(), start + index * 0.1, index)

    for index in range(5):
        analysis.process(frame(index), model)
    assert kept.events == ["start"] and kept.states[-1] == 1
    for index in range(5, 40):  # 3.5 s of frames, every one failing
        analysis.process(frame(index), Broken())
    assert kept.events == ["start", "end"] and kept.states[-1] == 0
    failed = "edge_emotion_frames_failed_total"
    assert metrics.registry.get_sample_value(failed, {"camera": "door"}) == 35
