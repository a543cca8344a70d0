"""Events as JSON lines on standard output: the daemon without a broker (demos, pipes)."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from edge.comms import PublisherStats
from edge.events import Event


class StdoutPublisher:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stats = PublisherStats(connected=True)
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

    def close(self, timeout: float) -> None:
        pass
