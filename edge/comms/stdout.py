"""Events as JSON lines on standard output: the daemon without a broker (demos, pipes)."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import TextIO

from edge.comms import PublisherStats
from edge.events import CameraState, Event

log = logging.getLogger(__name__)


class StdoutPublisher:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stats = PublisherStats(connected=None)
        self._stream = stream or sys.stdout  # None: started with stdout closed (`>&-`)
        self._lock = threading.Lock()
        self._failing = False

    def start(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        line = event.payload().decode()
        with self._lock:
            if self.stats.gone:
                self.stats.dropped += 1
                return
            try:
                if self._stream is None:
                    raise OSError(errno.EBADF, "standard output is closed")
                self._stream.write(line + "\n")
                self._stream.flush()
            except BrokenPipeError:
                # The reader went away (`edge run | head`): nothing will read another event, so
                # the daemon stops (stats.gone), as a pipeline's writer does on SIGPIPE. The
                # stream points at /dev/null so the interpreter's last flush cannot fail again.
                self.stats.gone = True
                self.stats.dropped += 1
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
                return
            except OSError as error:
                # A full disk behind `> events.jsonl`, a closed stdout: the event is lost, so
                # it is counted and said (once per failing spell), and analysis goes on.
                self.stats.dropped += 1
                if not self._failing:
                    log.warning(
                        "events cannot be written to standard output (%s): dropped, counted "
                        "in edge_emotion_events_dropped_total",
                        error.strerror or error,
                    )
                self._failing = True
                return
            if self._failing:
                log.warning("events are written to standard output again")
            self._failing = False
            self.stats.published += 1

    def publish_state(self, state: CameraState) -> None:
        """Not written: a pipe of events carries the same information, and states would double
        every line a demo prints."""

    def close(self, timeout: float) -> None:
        pass
