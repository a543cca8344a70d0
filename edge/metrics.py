"""Metrics stage: Prometheus metrics under one prefix, on loopback by default.

Counters owned by other stages (reader and publisher stats) are read at scrape time by a
collector, so those stages know nothing about Prometheus; latencies are observed by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.comms import PublisherStats
from edge.serving import bound, request_path
from edge.track import EVENT_KINDS
from edge.video import ReaderStats

PREFIX = "edge_emotion"
# Seconds, with millisecond resolution where per-stage costs live (1 ms .. 2.5 s).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No <name>_created series: one more per counter and histogram label set, which
        # Prometheus' text format does not need (process-wide in prometheus_client).
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames_processed = Counter(
            f"{PREFIX}_frames_processed", "Frames analysed", ["camera"], registry=r
        )
        self.frames_failed = Counter(
            f"{PREFIX}_frames_failed",
            "Frames whose analysis failed (logged once, then once a minute)",
            ["camera"],
            registry=r,
        )
        self.faces_detected = Counter(
            f"{PREFIX}_faces_detected", "Faces found by the detector", ["camera"], registry=r
        )
        self.events = Counter(
            f"{PREFIX}_events", "Events produced", ["camera", "event", "emotion"], registry=r
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds",
            "Time per frame in each pipeline stage",
            ["camera", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            f"{PREFIX}_end_to_end_seconds",
            "Frame capture to event hand-off",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Info(f"{PREFIX}_model", "The emotion model in use", registry=r)
        # A reload (SIGHUP) re-executes the same process: counters start again from 0 while
        # process_start_time_seconds stays, so a restart alert needs this one.
        self.start_time = Gauge(
            f"{PREFIX}_start_time_seconds",
            "When the daemon last started or reloaded (Unix time)",
            registry=r,
        )
        self.start_time.set_to_current_time()
        # process_resident_memory_bytes, process_cpu_seconds_total...: what a long run costs.
        ProcessCollector(registry=r)

    def add_camera(self, name: str, emotions: Sequence[str]) -> None:
        """Series at 0 from the start: a camera that never delivers a frame must show up as
        ``rate(..._frames_processed_total) == 0`` in an alert, not as a missing series, and
        the first event of a kind and emotion must count in ``increase()`` (a series that
        appears at 1 does not; for a rare emotion that was most of them)."""
        self.frames_processed.labels(name)
        self.frames_failed.labels(name)
        self.faces_detected.labels(name)
        for kind in EVENT_KINDS:
            for emotion in emotions:
                self.events.labels(name, kind, emotion)

    def watch(
        self, readers: Callable[[], Iterable[tuple[str, ReaderStats]]], publisher: PublisherStats
    ) -> None:
        self.registry.register(_StatsCollector(readers, publisher))

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (useful with port 0). Its
        connections are bounded in number and time (``edge.serving``)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound(server, "metrics")  # looked up per connection: in force from the first scrape
        server.set_app(_metrics_path_only(server.get_app()))
        return server.server_port


def _metrics_path_only(app: WsgiApp) -> WsgiApp:
    """``/metrics`` only, as the startup line says: prometheus_client answers metrics on any
    path, which hides a scrape job's wrong path. HEAD (``wget --spider``, uptime checks) is
    answered like GET, without the body."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = request_path(environ.get("PATH_INFO", ""))
        if path is None:
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"400 bad request: not a request target\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"404 not found: the metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") == "HEAD":
            # GET's headers with GET's length (HEAD must not say 0 where GET sends 19 KB).
            answer: list = []
            body = b"".join(app({**environ, "REQUEST_METHOD": "GET"}, lambda *a: answer.extend(a)))
            status, headers = answer[0], list(answer[1])
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return []
        return app(environ, start_response)

    return serve


class _StatsCollector(Collector):
    def __init__(
        self, readers: Callable[[], Iterable[tuple[str, ReaderStats]]], publisher: PublisherStats
    ) -> None:
        self.readers, self.publisher = readers, publisher

    def collect(self) -> Iterator[Metric]:
        read = CounterMetricFamily(f"{PREFIX}_frames_read", "Frames decoded", labels=["camera"])
        dropped = CounterMetricFamily(
            f"{PREFIX}_frames_dropped",
            "Frames replaced by a newer one unanalysed while analysis was due: the CPU is behind",
            labels=["camera"],
        )
        skipped = CounterMetricFamily(
            f"{PREFIX}_frames_skipped",
            "Frames not analysed by design: the camera's fps cap",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            f"{PREFIX}_camera_reconnects", "Times a camera was reopened", labels=["camera"]
        )
        up = GaugeMetricFamily(f"{PREFIX}_camera_up", "1 while frames arrive", labels=["camera"])
        for name, stats in self.readers():
            read.add_metric([name], stats.frames_read)
            dropped.add_metric([name], stats.frames_dropped)
            skipped.add_metric([name], stats.frames_skipped)
            reconnects.add_metric([name], stats.reconnects)
            up.add_metric([name], 1.0 if stats.up else 0.0)
        yield from (read, dropped, skipped, reconnects, up)
        p = self.publisher
        yield CounterMetricFamily(
            f"{PREFIX}_events_published", "Events delivered to the broker", value=p.published
        )
        yield CounterMetricFamily(
            f"{PREFIX}_events_dropped",
            "Events not delivered: refused by a full queue, or unsent at qos 0 while disconnected",
            value=p.dropped,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_events_queued", "Events waiting for the broker", value=p.queued
        )
        if p.connected is not None:  # without a broker there is nothing to be connected to
            yield GaugeMetricFamily(
                f"{PREFIX}_mqtt_connected",
                "1 while connected to the broker",
                value=float(p.connected),
            )
        yield CounterMetricFamily(
            f"{PREFIX}_homeassistant_announcements_coalesced",
            "Home Assistant 'online' messages folded into an announcement already due",
            value=p.announcements_coalesced,
        )
