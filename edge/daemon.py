"""The daemon: builds every stage from the configuration, wires them, runs until told to stop."""

from __future__ import annotations

import logging
import signal
import threading
import time

import cv2

from edge.comms import Publisher
from edge.comms.mqtt import MqttPublisher
from edge.comms.stdout import StdoutPublisher
from edge.config import EdgeConfig
from edge.emotions import EmotionClassifier
from edge.faces import FaceDetector, FaceScanner
from edge.metrics import Metrics
from edge.pipeline import CameraPipeline
from edge.track import Tracker
from edge.video import CameraReader
from edge.watchdog import Notifier

log = logging.getLogger(__name__)

# Together well inside the 5 s a stop may take: stop the pipelines, then flush and say offline.
PIPELINE_STOP_S = 1.5
SHUTDOWN_FLUSH_S = 2.5


class Daemon:
    def __init__(
        self,
        config: EdgeConfig,
        publisher: Publisher | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.publisher = publisher or make_publisher(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.stop_requested = threading.Event()
        # Loaded up front so a missing or corrupt model stops start-up with a clear error.
        self.classifiers = [
            EmotionClassifier(config.model.path, config.model.threads) for _ in config.cameras
        ]
        self.readers = [CameraReader(camera) for camera in config.cameras]
        self.pipelines = [
            CameraPipeline(
                config.device_id,
                reader,
                FaceScanner(
                    FaceDetector(**config.detector.model_dump(exclude={"full_scan_every"})),
                    config.detector.full_scan_every,
                ),
                classifier,
                Tracker(classifier.labels, **config.tracking.model_dump()),
                self.publisher,
                self.metrics,
                camera.fps,
            )
            for camera, reader, classifier in zip(
                config.cameras, self.readers, self.classifiers, strict=True
            )
        ]
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
        self.metrics_port: int | None = None

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or every finite source has ended); returns the exit code."""
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(
                self.config.metrics.host, self.config.metrics.port
            )
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, self.metrics_port)
        self.publisher.start()
        for reader in self.readers:
            reader.start()
        for pipeline in self.pipelines:
            pipeline.start()
        self.notifier.ready()
        log.info("running %d camera(s) as %s", len(self.readers), self.config.device_id)
        code = self._supervise()
        self.shutdown()
        return code

    def _supervise(self) -> int:
        """Ping the watchdog while frames flow; returns the exit code once it is time to stop."""
        interval = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self.stop_requested.wait(interval):
            live = [p for p in self.pipelines if p.reader.camera.kind != "file"]
            if any(p.done for p in live):  # cannot happen by design: let systemd restart us
                log.error("a camera pipeline stopped unexpectedly; exiting to be restarted")
                return 1
            if all(p.done for p in self.pipelines):
                log.info("every source has ended")
                return 0
            newest = max(p.last_processed for p in self.pipelines)
            # Pings stop half a WatchdogSec after the last analysed frame, so systemd restarts a
            # daemon whose cameras all gave nothing for 1.5 x WatchdogSec (90 s by default): a
            # restart also resets wedged FFmpeg/V4L2 state; one camera alone never causes it.
            stale_after = (self.notifier.watchdog_interval or 1.0) + max(
                1 / c.fps for c in self.config.cameras
            )
            if time.monotonic() - newest < max(stale_after, 2.0):
                self.notifier.alive()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        for reader in self.readers:
            reader.stop()
        for pipeline in self.pipelines:
            pipeline.stop()
        # Pipelines publish their tracks' end events as they stop: let them, before the flush.
        deadline = time.monotonic() + PIPELINE_STOP_S
        for pipeline in self.pipelines:
            pipeline.join(max(0.0, deadline - time.monotonic()))
        self.publisher.close(SHUTDOWN_FLUSH_S)
        for reader in self.readers:
            reader.join(0.2)
        stats = self.publisher.stats
        log.info(
            "stopped: events delivered %d, undelivered %d, dropped %d",
            stats.published,
            stats.queued,
            stats.dropped,
        )

    def readers_alive(self) -> bool:
        return any(reader.alive for reader in self.readers)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_requested.set())


def make_publisher(config: EdgeConfig) -> Publisher:
    if config.mqtt is None:
        return StdoutPublisher()
    return MqttPublisher(config.mqtt, config.device_id, [c.name for c in config.cameras])


def tune_opencv(cameras: int) -> None:
    """One OpenCV thread per pipeline when several cameras share the cores."""
    if cameras > 1:
        cv2.setNumThreads(1)
