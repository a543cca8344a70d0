"""Tracking stage: faces matched across frames into tracks; smoothed scores; events on change.

Events are what subscribers want, not frames: ``start`` when a face appears, ``change`` when its
smoothed emotion changes by more than the hysteresis, ``heartbeat`` while it stays, ``end`` when it
has been gone for ``lost_after_s``.

Haar finds things that are not faces for a frame, and sometimes one face twice (two boxes
overlapping by IoU 0.4-0.5 on the bench clips). Announced at once, each would be a ``start`` and an
``end`` a second later, and a face count flickering 1-2-1 in Home Assistant. So a face is announced
once seen in ``confirm_frames`` analysed frames, each within ``lost_after_s`` of the last (Haar
misses a real face in some frames: a rule of frames in a row kept the demo's face unannounced
for seconds); a candidate not seen again for ``lost_after_s`` goes without a word. A box that
overlaps a face already tracked in the same frame is that face again, not a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.faces import Box

# What a track says, in its order: appears, changes emotion, is still there, is gone.
EVENT_KINDS = ("start", "change", "heartbeat", "end")


@dataclass(frozen=True)
class TrackEvent:
    kind: str
    track_id: int
    emotion: str
    confidence: float
    scores: dict[str, float]
    box: Box
    frame_time: float  # when the reader got the frame (Unix seconds), reported
    # The same instant on the monotonic clock: the latency is measured from it, so that an NTP
    # step (a board without a real-time clock syncing after boot) does not add an hour to it.
    frame_monotonic: float


@dataclass(eq=False)  # identity: a track is one face, whatever its current values
class Track:
    track_id: int
    box: Box
    scores: np.ndarray
    emotion: int
    last_seen: float  # monotonic
    last_event: float  # monotonic
    seen_at: float  # wall clock of the last sighting, reported in events
    hits: int = 1  # frames it was seen in, until announced

    @property
    def announced(self) -> bool:
        return self.track_id > 0


class Tracker:
    """IoU tracker for one camera. Not thread-safe: one camera's worker owns it."""

    def __init__(
        self,
        labels: Sequence[str],
        iou_threshold: float = 0.3,
        lost_after_s: float = 1.0,
        smoothing: float = 0.3,
        hysteresis: float = 0.1,
        heartbeat_s: float = 10.0,
        confirm_frames: int = 2,
    ) -> None:
        self.labels = tuple(labels)
        self.iou_threshold, self.lost_after_s = iou_threshold, lost_after_s
        self.smoothing, self.hysteresis, self.heartbeat_s = smoothing, hysteresis, heartbeat_s
        self.confirm_frames = confirm_frames
        self._tracks: list[Track] = []  # announced ones and candidates
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """The faces announced (``start`` sent) and not yet ended."""
        return [t for t in self._tracks if t.announced]

    def update(
        self, boxes: Sequence[Box], probs: np.ndarray, now: float, wall: float | None = None
    ) -> list[TrackEvent]:
        """Feed one analysed frame (boxes with their class probabilities); return its events.

        ``now`` is a monotonic time for durations (an NTP step must not end or freeze tracks);
        ``wall`` is the frame's Unix time for the events (default: ``now``).
        """
        wall = now if wall is None else wall
        events: list[TrackEvent] = []
        matched = self._match(boxes)
        taken = set(matched.values())
        # A box left over that overlaps a tracked face as much as a match would: that face again.
        new = [
            i
            for i, box in enumerate(boxes)
            if i not in taken and all(t.box.iou(box) < self.iou_threshold for t in self._tracks)
        ]
        for track, index in sorted(matched.items(), key=lambda pair: pair[1]):  # frame order
            events.extend(self._observe(track, boxes[index], probs[index], now, wall))
        for index in new:
            events.extend(self._start(boxes[index], probs[index], now, wall))
        return events + self.tick(now)

    def tick(self, now: float) -> list[TrackEvent]:
        """Time passes without a frame (a camera late or down): faces unseen for
        ``lost_after_s`` end."""
        events = []
        for track in [t for t in self._tracks if now - t.last_seen >= self.lost_after_s]:
            self._tracks.remove(track)
            if track.announced:
                events.append(self._event("end", track, track.seen_at))
        return events

    def present(self) -> list[tuple[str, float]]:
        """(emotion, confidence) of every face being tracked now, for the camera's state."""
        return [(self.labels[t.emotion], float(t.scores[t.emotion])) for t in self.tracks]

    def rescale(self, factor: float) -> None:
        """The camera's frames changed size by ``factor`` (a stream's profile switch, the same
        view): every face keeps its track, its box in the new frame's pixels."""
        for track in self._tracks:
            track.box = track.box.scaled(factor)

    def close(self) -> list[TrackEvent]:
        """End every open track (shutdown): subscribers never keep a face that is gone."""
        events = [self._event("end", t, t.seen_at) for t in self.tracks]
        self._tracks.clear()
        return events

    def _match(self, boxes: Sequence[Box]) -> dict[Track, int]:
        """Greedy matching by descending IoU: good enough for the few faces of one camera."""
        pairs = sorted(
            (
                (track.box.iou(box), i, track)
                for track in self._tracks
                for i, box in enumerate(boxes)
            ),
            key=lambda pair: pair[0],
            reverse=True,
        )
        matched: dict[Track, int] = {}
        used: set[int] = set()
        for iou, index, track in pairs:
            if iou < self.iou_threshold:
                break
            if track not in matched and index not in used:
                matched[track] = index
                used.add(index)
        return matched

    def _start(self, box: Box, probs: np.ndarray, now: float, wall: float) -> list[TrackEvent]:
        scores = probs.astype(np.float64)
        track = Track(0, box, scores, int(probs.argmax()), now, now, wall)
        self._tracks.append(track)
        return self._announce(track, now, wall)

    def _announce(self, track: Track, now: float, wall: float) -> list[TrackEvent]:
        """``start``, once seen in enough frames in a row; ids count announced faces only."""
        if track.hits < self.confirm_frames:
            return []
        track.track_id, track.emotion, track.last_event = (
            self._next_id,
            int(track.scores.argmax()),
            now,
        )
        self._next_id += 1
        return [self._event("start", track, wall)]

    def _observe(
        self, track: Track, box: Box, probs: np.ndarray, now: float, wall: float
    ) -> list[TrackEvent]:
        track.box, track.last_seen, track.seen_at = box, now, wall
        track.scores = (1 - self.smoothing) * track.scores + self.smoothing * probs
        if not track.announced:
            track.hits += 1
            return self._announce(track, now, wall)
        leader = int(track.scores.argmax())
        lead = track.scores[leader] - track.scores[track.emotion]
        if leader != track.emotion and lead >= self.hysteresis:
            track.emotion, track.last_event = leader, now
            return [self._event("change", track, wall)]
        if self.heartbeat_s and now - track.last_event >= self.heartbeat_s:
            # On the schedule, not a frame late each time (at 5 fps a 3 s heartbeat came every
            # 3.1 s); after a gap (no frames for a while) the schedule starts again from now.
            due = track.last_event + self.heartbeat_s
            track.last_event = due if now - due < self.heartbeat_s else now
            return [self._event("heartbeat", track, wall)]
        return []

    def _event(self, kind: str, track: Track, frame_time: float) -> TrackEvent:
        scores = {
            label: round(float(s), 4) for label, s in zip(self.labels, track.scores, strict=True)
        }
        return TrackEvent(
            kind=kind,
            track_id=track.track_id,
            emotion=self.labels[track.emotion],
            confidence=round(float(track.scores[track.emotion]), 4),
            scores=scores,
            box=track.box,
            frame_time=frame_time,
            frame_monotonic=track.last_seen,  # the frame_time of every event is its sighting
        )
