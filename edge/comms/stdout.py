"""Events as JSON lines on standard output: the daemon without a broker (demos, pipes)."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from edge.comms import PublisherStats
from edge.events import CameraState, Event


class StdoutPublisher:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stats = PublisherStats(connected=None)
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        line = event.payload().decode()
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
            self.stats.published += 1

    def publish_state(self, state: CameraState) -> None:
        """Not written: a pipe of events carries the same information, and states would double
        every line a demo prints."""

    def close(self, timeout: float) -> None:
        pass
