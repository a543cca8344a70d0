"""Where events go: one small publisher interface, an MQTT and a stdout implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge.events import CameraState, Event


@dataclass
class PublisherStats:
    published: int = 0  # acknowledged by the broker (QoS 1/2) or written (QoS 0, stdout)
    dropped: int = 0  # refused because the queue was full
    queued: int = 0  # handed over and not yet acknowledged
    connected: bool | None = False  # None: no broker to be connected to (stdout)
    # Home Assistant "online" messages answered by an announcement already due (rate limit)
    announcements_coalesced: int = 0
    gone: bool = False  # the destination closed for good (stdout's reader went away)


class Publisher(Protocol):
    stats: PublisherStats

    def start(self) -> None:
        """Begin connecting; never blocks on an absent broker."""

    def publish(self, event: Event) -> None:
        """Queue one event for delivery; thread-safe; never blocks."""

    def publish_state(self, state: CameraState) -> None:
        """Replace a camera's current state (retained); not an event, not counted as one."""

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` s, announce offline, disconnect."""
