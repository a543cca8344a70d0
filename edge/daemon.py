"""The daemon: builds every stage from the configuration, wires them, runs until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import cv2

from edge.cli import STOP_SIGNALS
from edge.comms import Publisher
from edge.comms.mqtt import MqttPublisher
from edge.comms.stdout import StdoutPublisher
from edge.config import ConfigError, ConfigFile, EdgeConfig
from edge.emotions import EmotionClassifier, ModelError
from edge.faces import FaceDetector, FaceScanner
from edge.metrics import Metrics
from edge.pipeline import AnalysisPool, CameraAnalysis
from edge.preflight import preflight
from edge.track import Tracker
from edge.video import CameraReader
from edge.view import ViewServer
from edge.watchdog import Notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

# Together well inside the 5 s a stop may take: stop the analysis, then flush and say offline.
PIPELINE_STOP_S = 1.5
SHUTDOWN_FLUSH_S = 2.5
# Then the camera readers, all of them together (Daemon._join_readers).
READERS_JOIN_S = 0.5


class Daemon:
    def __init__(
        self,
        config: EdgeConfig,
        publisher: Publisher | None = None,
        notifier: Notifier | None = None,
        source: ConfigFile | None = None,
    ) -> None:
        self.config = config
        # The file read again for a reload; one that fails a check is refused there.
        self.source = source
        self.publisher = publisher or make_publisher(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.stop_requested = threading.Event()
        self.reload_requested = False
        # Loaded up front so a missing or corrupt model stops start-up with a clear error.
        self.classifiers = [
            EmotionClassifier(config.model.path, config.model.threads)
            for _ in range(analysis_workers(config))
        ]
        labels = self.classifiers[0].labels
        # Readers wake the pool on each new frame (the pool is built from them just below).
        self.readers = [
            CameraReader(camera, on_frame=lambda: self.pool.wake()) for camera in config.cameras
        ]
        self.cameras = [
            CameraAnalysis(
                config.device_id,
                reader,
                FaceScanner(
                    FaceDetector(**config.detector.model_dump(exclude={"full_scan_every"})),
                    config.detector.full_scan_every,
                    # Spread the cameras' full scans over the interval, not all in one tick.
                    offset=i * config.detector.full_scan_every // len(config.cameras),
                ),
                Tracker(labels, **config.tracking.model_dump()),
                self.publisher,
                self.metrics,
                camera.fps,
                keep_shown=config.view.enabled,
            )
            for i, (camera, reader) in enumerate(zip(config.cameras, self.readers, strict=True))
        ]
        for reader, camera_analysis in zip(self.readers, self.cameras, strict=True):
            reader.due = camera_analysis.due  # dropped (behind) vs skipped (fps cap)
        self.pool = AnalysisPool(self.cameras, self.classifiers)
        meta = self.classifiers[0].metadata
        self.metrics.model_info.info(
            {
                "path": str(config.model.path),
                "quantization": meta.quantization,
                "sha256": meta.sha256[:16],
                "labels": ",".join(meta.labels),
            }
        )
        self.metrics.watch(
            lambda: [(r.camera.name, r.stats) for r in self.readers], self.publisher.stats
        )
        for camera in config.cameras:
            self.metrics.add_camera(camera.name, meta.labels)
        self.metrics_port: int | None = None
        self.view: ViewServer | None = None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or every finite source has ended); returns the exit code."""
        metrics, view = self.config.metrics, self.config.view
        if metrics.enabled:
            self.metrics_port = listening("metrics", metrics.host, metrics.port, self.metrics.serve)
        if view.enabled:
            self.view = listening(
                "view", view.host, view.port, lambda h, p: ViewServer(h, p, self.cameras).start()
            )
        # Said once both are bound: a start-up failure stays the one line that names it.
        if self.metrics_port is not None:
            log.info("metrics on http://%s/metrics", _authority(metrics.host, self.metrics_port))
        if self.view is not None:
            log.info("live view on http://%s/", _authority(view.host, self.view.port))
        self.publisher.start()
        self.pool.start()
        for reader in self.readers:
            reader.start()
        # Every thread is started, with the stop and reload signals blocked (edge.__main__):
        # the main thread alone takes them from here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.notifier.ready()
        log.info("running %d camera(s) as %s", len(self.readers), self.config.device_id)
        code = self._supervise()
        self.shutdown()
        return code

    def _supervise(self) -> int:
        """Ping the watchdog while nothing hangs; returns the exit code once it is time to stop."""
        interval = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self.stop_requested.wait(interval):
            if not self.pool.alive:  # cannot happen by design: let systemd restart us
                log.error("an analysis worker stopped unexpectedly; exiting to be restarted")
                return 1
            if any(reader.crashed for reader in self.readers):
                log.error("a camera reader stopped unexpectedly; exiting to be restarted")
                return 1
            if self.pool.done:
                log.info("every source has ended")
                return 0
            if self.publisher.stats.gone:
                log.info("the reader of the events closed standard output: stopping")
                return 0
            stalled = self._stalled()
            if stalled is None:
                self.notifier.alive()
                continue
            stalled_for, what = stalled
            if (half := self.notifier.watchdog_interval) and stalled_for >= half:
                # Halfway from the last ping to systemd's SIGABRT, which would lose the events
                # still queued for the broker: stop cleanly (they go to the spool) and let
                # Restart=on-failure start us again, as the watchdog would have.
                log.error(
                    "%s for %.0f s: exiting to be restarted before the systemd watchdog "
                    "(WatchdogSec) kills the daemon",
                    what,
                    stalled_for,
                )
                return 1
        return 0

    def _stalled(self) -> tuple[float, str] | None:
        """What has stopped making progress, and for how long past the point where pings stop;
        None while everything does. A camera that is down is not a stall: its reader retries
        on its own, and a restart every minute while it is off (at night, unplugged) only made
        the service flap. What a restart fixes is a hang: the analysis taking no camera in
        turn (a worker stuck), or a reader stuck in FFmpeg/OpenCV past its timeouts."""
        now = time.monotonic()
        # Workers take each camera at least every IDLE_TICK_S without a frame, or at its own
        # fps cap with frames; pings stop once a camera has waited half a WatchdogSec past its
        # turn (a worker stuck on one camera leaves it waiting, whatever the others).
        limit = max(self.notifier.watchdog_interval or 1.0, 2.0)
        late = max((now - c.last_tick - c.interval for c in self.cameras if not c.done), default=0)
        if late >= limit:
            return late - limit, "the analysis has taken no camera in turn"
        for reader in self.readers:
            if (stuck := reader.stuck_for(now)) > 0:
                return stuck, f"camera {reader.camera.name}: its reader is stuck in FFmpeg/OpenCV"
        return None

    def shutdown(self) -> None:
        if self.reload_requested:
            self.notifier.reloading()
        else:
            self.notifier.stopping()
        for reader in self.readers:
            reader.stop()
        # The pool closes every camera's tracks as it stops: let it, before the flush.
        self.pool.stop(PIPELINE_STOP_S)
        if self.view is not None:
            self.view.stop()
        self.publisher.close(SHUTDOWN_FLUSH_S)
        self._join_readers(READERS_JOIN_S)
        stats = self.publisher.stats
        log.info(
            "stopped: events delivered %d, undelivered %d, dropped %d",
            stats.published,
            stats.queued,
            stats.dropped,
        )

    def _join_readers(self, within: float) -> None:
        """Give the readers ``within`` seconds in all to end. One stuck in an open or a read
        (a camera that never answers) ends only at its own timeout: 0.2 s each, one after the
        other, made 40 such cameras add 8 s to the stop, past systemd's TimeoutStopSec with
        the flush (SIGKILL). Every event is flushed or spooled by now: nothing waits on them."""
        deadline = time.monotonic() + within
        for reader in self.readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop cleanly; SIGHUP (sent by many supervisors, and by
        ``systemctl kill -s HUP``) stops just as cleanly, then the process starts again with its
        configuration re-read (``edge.__main__.reload_in_place``)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def request_stop(self) -> None:
        """A stop wins over a reload under way (systemd's stop right after a reload, a host
        shutting down): the process ends instead of restarting, to be killed at the timeout."""
        self.reload_requested = False
        self.stop_requested.set()

    def request_reload(self) -> None:
        """Restart in place, but only into a configuration that starts: a typo saved before
        reload, a TLS key that is not its certificate's, a spool_file naming another file, must
        not take every camera down (exit 2 is not restarted). The checks are check-config's."""
        if self.source is not None:
            try:
                config = self.source.reread()
                preflight(config)  # what start-up would refuse: model, TLS files, spool file
                self._check_new_ports(config)
            except (ConfigError, ModelError) as error:
                log.error("reload refused, still running the previous configuration: %s", error)
                return
            except Exception as error:  # a reload must never end the daemon
                # Not its text: an unforeseen error may quote the file's values (a password).
                log.error(
                    "reload refused, still running the previous configuration: the new one "
                    "cannot be checked (%s); `edge check-config` names the problem",
                    type(error).__name__,
                )
                return
        if self.stop_requested.is_set() and not self.reload_requested:
            return  # stopping: a reload now would undo the stop
        if self.source is not None:
            self.source.accept()
        log.info("reload: the configuration checks out; stopping to restart with it")
        self.reload_requested = True
        self.stop_requested.set()

    def _check_new_ports(self, config: EdgeConfig) -> None:
        """A port the new configuration moves to must be free: the new process would fail to
        start on it, with exit code 2, which systemd does not restart. Ports kept are ours."""
        for what, new, old in (
            ("metrics", config.metrics, self.config.metrics),
            ("view", config.view, self.config.view),
        ):
            moved = not old.enabled or (new.host, new.port) != (old.host, old.port)
            if new.enabled and moved and new.port != 0:
                listening(what, new.host, new.port, _bind_and_close)


def _bind_and_close(host: str, port: int) -> None:
    """Whether a server could listen on ``host:port`` now (as ``listening`` reports it)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        probe.bind(address)


def _authority(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:9108``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_publisher(config: EdgeConfig) -> Publisher:
    if config.mqtt is None:
        return StdoutPublisher()
    return MqttPublisher(config.mqtt, config.device_id, [c.name for c in config.cameras])


def listening(what: str, host: str, port: int, start: Callable[[str, int], T]) -> T:
    """Start a server on ``host:port``; a port in use, not ours to bind, or a host that does not
    resolve is a start-up failure (exit code 2) that names the server and the address."""
    try:
        return start(host, port)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"{what} {host}:{port}: cannot serve: {reason}") from None


def analysis_workers(config: EdgeConfig) -> int:
    """``workers`` from the configuration, or two per core; never more than cameras.

    Two per core, because a worker in a 55-ms full Haar scan holds one camera's turn while the
    others' short frames queue behind it: at 8 cameras x 10 fps on 2 cores, 2 workers analysed
    76.4 fps, 4 workers 79.6 fps at the same CPU per frame (``bench/pipeline.py``). Haar and
    the interpreter release the GIL, so the extra threads run in parallel.
    """
    wanted = config.workers or 2 * (os.cpu_count() or 1)
    return max(1, min(wanted, len(config.cameras)))


def tune_opencv(cameras: int) -> None:
    """One OpenCV thread per analysis worker: the workers already spread over the cores.
    OpenCV's own warnings off: a missing USB camera printed two of them at every retry, for as
    long as it was missing; the reader says it once per outage."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    if cameras > 1:
        cv2.setNumThreads(1)
