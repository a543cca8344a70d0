"""Event stage: a track event becomes a versioned JSON payload; no image data ever leaves.

Schema (``schema_version`` 1) is documented in the README; add fields, never change their meaning
without bumping the version.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from edge.track import TrackEvent

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Event:
    """One message for subscribers; ``latency_ms`` is stamped when it is handed to the broker."""

    device_id: str
    camera: str
    track: TrackEvent
    # Unique per event: QoS 1 and the spool deliver at least once, so a consumer that must
    # count each event once deduplicates on it.
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def payload(self) -> bytes:
        track = self.track
        body = {
            "schema_version": SCHEMA_VERSION,
            "event_id": self.event_id,
            "device_id": self.device_id,
            "camera": self.camera,
            "track_id": track.track_id,
            "event": track.kind,
            "emotion": track.emotion,
            "confidence": track.confidence,
            "scores": track.scores,
            "box": track.box.as_list(),
            "frame_time": iso_utc(track.frame_time),
            "latency_ms": round(self.latency() * 1000, 1),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def latency(self) -> float:
        """Seconds from the frame to now, on the monotonic clock (wall-clock times, subtracted,
        moved by an hour when NTP stepped the clock in between)."""
        return max(0.0, time.monotonic() - self.track.frame_monotonic)


@dataclass(frozen=True)
class CameraState:
    """What a camera sees now: the retained ``<camera>/state`` message (Home Assistant sensors).

    ``dominant`` is the emotion most of the tracked faces show (ties go to the larger summed
    confidence), ``none`` without faces.
    """

    device_id: str
    camera: str
    faces: tuple[tuple[str, float], ...]  # (emotion, confidence) per tracked face
    # Frames arrive: without it, a camera that is down read as an empty room ("0 faces").
    camera_up: bool = True
    since: float = field(default_factory=time.time)  # when the camera came to this state

    @property
    def dominant(self) -> str:
        totals: dict[str, tuple[int, float]] = {}
        for emotion, confidence in self.faces:
            count, summed = totals.get(emotion, (0, 0.0))
            totals[emotion] = (count + 1, summed + confidence)
        return max(totals, key=totals.__getitem__) if totals else "none"

    def summary(self) -> tuple[int, str, bool]:
        """What subscribers see change: republished only when this differs."""
        return len(self.faces), self.dominant, self.camera_up

    def payload(self) -> bytes:
        body = {
            "schema_version": SCHEMA_VERSION,
            "device_id": self.device_id,
            "camera": self.camera,
            "faces": len(self.faces),
            "dominant_emotion": self.dominant,
            "camera_up": self.camera_up,
            "since": iso_utc(self.since),
        }
        return json.dumps(body, separators=(",", ":")).encode()


def iso_utc(unix: float) -> str:
    return (
        datetime.fromtimestamp(unix, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
