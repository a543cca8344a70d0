"""Event stage: a track event becomes a versioned JSON payload; no image data ever leaves.

Schema (``schema_version`` 1) is documented in the README; add fields, never change their meaning
without bumping the version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from edge.track import TrackEvent

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Event:
    """One message for subscribers; ``latency_ms`` is stamped when it is handed to the broker."""

    device_id: str
    camera: str
    track: TrackEvent

    def payload(self, sent: float | None = None) -> bytes:
        sent = time.time() if sent is None else sent
        track = self.track
        body = {
            "schema_version": SCHEMA_VERSION,
            "device_id": self.device_id,
            "camera": self.camera,
            "track_id": track.track_id,
            "event": track.kind,
            "emotion": track.emotion,
            "confidence": track.confidence,
            "scores": track.scores,
            "box": track.box.as_list(),
            "frame_time": iso_utc(track.frame_time),
            "latency_ms": round(max(0.0, sent - track.frame_time) * 1000, 1),
        }
        return json.dumps(body, separators=(",", ":")).encode()


def iso_utc(unix: float) -> str:
    return (
        datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
