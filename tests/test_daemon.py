"""The daemon as users run it: real RTSP stream, real mosquitto, the shipped model, SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED
from services import (
    BrokenCamera,
    Broker,
    RtspServer,
    Subscriber,
    free_port,
    scrape,
    shutdown_summary,
)

CLIP = SHARED / "media" / "asl-again.mkv"
EMOTIONS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
EVENT_KEYS = {
    "schema_version",
    "event_id",
    "device_id",
    "camera",
    "track_id",
    "event",
    "emotion",
    "confidence",
    "scores",
    "box",
    "frame_time",
    "latency_ms",
}


class DaemonProcess:
    def __init__(self, tmp_path: Path, config: dict, env: dict | None = None) -> None:
        self.metrics_port = free_port()
        config = {"metrics": {"port": self.metrics_port}, **config}
        self.config = tmp_path / "edge.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.stderr = tmp_path / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.stderr.open("w"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def wait_metric(self, name: str, predicate, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                value = self.metrics().get(name)
            except OSError:
                value = None
            if value is not None and predicate(value):
                return value
            time.sleep(0.2)
        raise AssertionError(f"{name} = {value} after {timeout} s\n{self.log()}")

    def wait_log(self, predicate, timeout: float) -> str:
        """Until the log satisfies ``predicate`` (a file: polled, there is no event to wait on)."""
        deadline = time.monotonic() + timeout
        while not predicate(log := self.log()):
            assert time.monotonic() < deadline and self.proc.poll() is None, log
            time.sleep(0.2)
        return log

    def stop(self, timeout: float = 5.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.stderr.read_text()[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def rtsp():
    server = RtspServer(CLIP).start()
    yield server
    server.stop()


@pytest.fixture
def daemons(tmp_path):
    started: list[DaemonProcess] = []

    def start(config: dict, env: dict | None = None) -> DaemonProcess:
        folder = tmp_path / f"daemon-{len(started)}"  # config and log of each daemon
        folder.mkdir()
        d = DaemonProcess(folder, config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def events(messages) -> list[dict]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/event")]


def test_rtsp_stream_to_mqtt_events_end_to_end(broker, rtsp, daemons):
    sub = Subscriber(broker.port, "edge-emotion/#")
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": rtsp.url(), "fps": 10}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
    )
    sub.wait_for(
        lambda ms: any(
            m.topic == "edge-emotion/porch/status" and m.payload == b"online" for m in ms
        ),
        timeout=30,
    )
    sub.wait_for(lambda ms: any(e["event"] == "start" for e in events(ms)), timeout=30)
    assert daemon.wait_metric(
        'edge_emotion_frames_processed_total{camera="door"}', lambda v: v >= 5, timeout=10
    )
    assert daemon.stop() == 0, daemon.log()
    messages = sub.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=5)
    sub.close()

    status = [m for m in messages if m.topic == "edge-emotion/porch/status"]
    assert status[0].retain or status[0].payload == b"online"
    for event in events(messages):
        assert set(event) == EVENT_KEYS
        assert event["schema_version"] == 1 and event["device_id"] == "porch"
        assert event["camera"] == "door" and event["emotion"] in EMOTIONS
        assert set(event["scores"]) == EMOTIONS
        assert abs(sum(event["scores"].values()) - 1) < 0.05
        x, y, w, h = event["box"]
        assert 0 <= x < 640 and 0 <= y < 480 and 40 <= w <= 480 and w == h
        assert event["frame_time"].endswith("Z") and event["latency_ms"] >= 0
    kinds = [e["event"] for e in events(messages)]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert all(m.topic == "edge-emotion/porch/door/event" for m in messages if "event" in m.topic)


def test_broker_restart_loses_no_event(tmp_path, broker, rtsp, daemons):
    sub = Subscriber(broker.port, "edge-emotion/+/+/event")
    sub.wait_subscribed()
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": rtsp.url(), "fps": 10}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
            "tracking": {"heartbeat_s": 0.2},  # an event every 0.2 s while the face is there
        }
    )
    sub.wait_for(lambda ms: len(ms) >= 5, timeout=30)
    broker.stop()
    queued = daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 5, timeout=20)
    broker.start()
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v == 0, timeout=20)
    assert daemon.stop() == 0, daemon.log()
    delivered, undelivered, dropped = shutdown_summary(daemon.log())
    assert (undelivered, dropped) == (0, 0)
    received = sub.wait_for(lambda ms: len({m.payload for m in ms}) >= delivered, timeout=10)
    sub.close()
    assert queued >= 5
    assert len({m.payload for m in received}) == delivered


def test_a_reload_during_a_broker_outage_loses_no_event(broker, rtsp, daemons):
    """SIGHUP (or a stop and start) while the broker is away: the queued events are kept in the
    spool, sent by the next run once the broker is back."""
    sub = Subscriber(broker.port, "edge-emotion/+/+/event")
    sub.wait_subscribed()  # a persistent session: the broker keeps what comes meanwhile
    broker.stop()
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": rtsp.url(), "fps": 10}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
            "tracking": {"heartbeat_s": 0.2},
        }
    )
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 5, timeout=30)
    daemon.proc.send_signal(signal.SIGHUP)
    log = daemon.wait_log(lambda log: "undelivered events of the last run" in log, timeout=30)
    kept = int(re.search(r"with (\d+) undelivered events: kept in", log).group(1))
    assert f"sending {kept} undelivered events of the last run" in log
    broker.start()
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v == 0, timeout=20)
    assert daemon.stop() == 0, daemon.log()
    delivered, undelivered, dropped = shutdown_summary(daemon.log())
    assert (undelivered, dropped) == (0, 0) and delivered >= kept >= 5
    received = sub.wait_for(lambda ms: len({m.payload for m in ms}) >= delivered, timeout=10)
    sub.close()
    assert len({m.payload for m in received}) == delivered
    assert any(e["event"] == "end" for e in events(received))  # the reload's ends, spooled


def test_the_spool_is_kept_until_its_events_are_delivered_and_bad_lines_are_skipped(
    tmp_path, daemons
):
    """A crash while the broker is still away must not lose the last run's events; a damaged
    line is skipped (not a crash, also not one that is not UTF-8), another device's lines are
    left where they are, and this device's events from before a topic_prefix change are sent
    where its subscribers now listen."""
    spool = tmp_path / "state" / "edge-emotion" / "porch.undelivered.jsonl"  # XDG_STATE_HOME
    spool.parent.mkdir(parents=True)
    ours = json.dumps({"topic": "edge-emotion/porch/door/event", "payload": '{"kept":1}'})
    theirs = json.dumps({"topic": "edge-emotion/other/door/event", "payload": '{"kept":2}'})
    moved = json.dumps({"topic": "old-site/porch/door/event", "payload": '{"kept":3}'})
    wildcard = json.dumps({"topic": "edge-emotion/porch/+/event", "payload": "{}"})
    surrogate = '{"topic": "edge-emotion/porch/door/event", "payload": "\\ud800"}'
    # The damaged line first: a file whose first line is no event is not taken for another file.
    spool.write_text("\n".join(["garbage", ours, wildcard, surrogate, moved, theirs]) + "\n")
    port = free_port()
    config = {
        "device_id": "porch",
        "cameras": [{"name": "door", "source": str(CLIP), "loop": True}],
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_max_s": 1},
        "tracking": {"heartbeat_s": 0},
    }
    crashed = daemons(config)
    crashed.wait_log(lambda log: "sending 2 undelivered events of the last run" in log, 30)
    assert "1 of them under the current topic prefix" in crashed.log()
    assert "3 unreadable lines skipped; 1 lines of other devices left in it" in crashed.log()
    crashed.kill()  # while the broker is still away
    assert ours in spool.read_text()

    broker = Broker(tmp_path, port=port).start()
    sub = Subscriber(port, "edge-emotion/#")
    try:
        sub.wait_subscribed()
        daemon = daemons(config)
        received = sub.wait_for(
            lambda ms: {b'{"kept":1}', b'{"kept":3}'} <= {m.payload for m in ms}, timeout=30
        )
        assert {m.topic for m in received if m.payload == b'{"kept":3}'} == {
            "edge-emotion/porch/door/event"
        }
        deadline = time.monotonic() + 10
        while ours in spool.read_text():  # a file: polled
            assert time.monotonic() < deadline, spool.read_text()
            time.sleep(0.1)
        assert daemon.stop() == 0, daemon.log()
    finally:
        sub.close()
        broker.stop()
    assert spool.read_text() == theirs + "\n"


def test_a_spool_larger_than_the_event_queue_is_delivered_whole(tmp_path, broker, daemons):
    """mqtt.queue_size lowered since the last run spooled its events: the events beyond the
    queue wait their turn (already accepted, they are never refused), and the spool file
    stays until the last of them is delivered."""
    spool = tmp_path / "state" / "edge-emotion" / "porch.undelivered.jsonl"  # XDG_STATE_HOME
    spool.parent.mkdir(parents=True)
    payloads = [json.dumps({"spooled": n}) for n in range(60)]
    topic = "edge-emotion/porch/door/event"
    spool.write_text("".join(json.dumps({"topic": topic, "payload": p}) + "\n" for p in payloads))
    sub = Subscriber(broker.port, topic)
    sub.wait_subscribed()
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "queue_size": 8},
            "tracking": {"heartbeat_s": 0},
        }
    )
    wanted = {p.encode() for p in payloads}
    received = sub.wait_for(lambda ms: wanted <= {m.payload for m in ms}, timeout=30)
    sub.close()
    assert [m.payload for m in received if m.payload in wanted][:60] == sorted(
        wanted, key=lambda p: json.loads(p)["spooled"]
    )  # in their order, oldest first
    deadline = time.monotonic() + 10
    while spool.exists():  # a file: polled
        assert time.monotonic() < deadline, spool.read_text()
        time.sleep(0.1)
    assert daemon.stop() == 0, daemon.log()


def test_spooled_events_beyond_the_queue_count_as_waiting(tmp_path, daemons):
    """The last run's events not yet handed over (beyond mqtt.queue_size) are waiting just as
    much: events_queued and the shutdown line count them, not only the queue's."""
    spool = tmp_path / "state" / "edge-emotion" / "porch.undelivered.jsonl"  # XDG_STATE_HOME
    spool.parent.mkdir(parents=True)
    topic = "edge-emotion/porch/door/event"
    spool.write_text(
        "".join(json.dumps({"topic": topic, "payload": f'{{"n":{n}}}'}) + "\n" for n in range(60))
    )
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": free_port(), "queue_size": 8},
            "tracking": {"heartbeat_s": 0},
        }
    )
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 60, timeout=30)
    assert daemon.stop() == 0, daemon.log()
    kept = int(re.search(r"with (\d+) undelivered events: kept in", daemon.log()).group(1))
    assert shutdown_summary(daemon.log())[1] == kept >= 60


def test_without_a_writable_default_spool_place_the_daemon_runs_and_says_so(daemons):
    """A container with a read-only root and no home has nowhere to spool: that must not stop
    the daemon (only an mqtt.spool_file that cannot be written does)."""
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": free_port()},
        },
        env={"XDG_STATE_HOME": str(CLIP / "state")},  # below a file: cannot be made
    )
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 0, 30)
    assert daemon.stop() == 0, daemon.log()
    assert daemon.log().count("no spool:") == 1


def test_an_outage_that_fills_the_queue_still_ends_with_the_daemon_online(broker, rtsp, daemons):
    """Events beyond mqtt.queue_size are dropped (counted, warned once), but the retained
    status must say "online" again once connected: Home Assistant shows the device by it."""
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "door", "source": rtsp.url(), "fps": 10}],
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "reconnect_max_s": 1,
                "queue_size": 5,
            },
            "tracking": {"heartbeat_s": 0.2},
        }
    )
    daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 3, timeout=30)
    broker.stop()
    daemon.wait_metric("edge_emotion_events_dropped_total", lambda v: v >= 5, timeout=30)
    broker.start()
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    status = Subscriber(broker.port, "edge-emotion/porch/status", client_id="status-reader")
    status.wait_for(lambda ms: ms and ms[-1].payload == b"online", timeout=20)
    status.close()
    published = daemon.metrics()["edge_emotion_events_published_total"]
    daemon.wait_metric("edge_emotion_events_published_total", lambda v: v > published, 20)
    assert daemon.stop() == 0, daemon.log()
    assert daemon.log().count("MQTT queue full") == 1


def test_a_flapping_camera_is_one_warning_and_its_recovery_is_logged(daemons):
    """A stream that keeps closing soon after it opens is one outage (its repeats are debug
    lines); once it delivers steadily again the journal says so, or the camera's last word
    there would stay the warning while it works."""
    server = RtspServer(CLIP).start()
    try:
        daemon = daemons({"cameras": [{"name": "flaky", "source": server.url(), "fps": 5}]})
        up = 'edge_emotion_camera_up{camera="flaky"}'
        for _ in range(2):  # each session shorter than the 10 s that make a source steady
            daemon.wait_metric(up, lambda v: v == 1, timeout=30)
            server.stop()
            daemon.wait_metric(up, lambda v: v == 0, timeout=20)
            server.start()
        log = daemon.wait_log(lambda text: "steadily again" in text, timeout=40)
        assert log.count("camera flaky: stream stopped delivering frames") == 1, log
        assert daemon.stop() == 0
    finally:
        server.stop()


def test_a_frozen_camera_is_down_once_silent_for_read_timeout_s(daemons):
    """A camera that hangs with its connection open is down (``camera_up`` 0, one warning)
    once it has been silent for read_timeout_s: FFmpeg hands over one more frame when its
    read times out and fails only at the next timeout, which kept it up for twice as long.
    That last frame is from before the silence: analysed as new, its face was a track that
    started seconds after the camera froze."""
    server = RtspServer(CLIP).start()
    try:
        camera = {"name": "frozen", "source": server.url(), "fps": 5, "read_timeout_s": 4}
        daemon = daemons({"cameras": [camera], "tracking": {"confirm_frames": 1}})
        up = 'edge_emotion_camera_up{camera="frozen"}'
        # Delivering for longer than the 10 s that make a session steady (15 fps).
        read = 'edge_emotion_frames_read_total{camera="frozen"}'
        daemon.wait_metric(read, lambda v: v >= 11 * 15, timeout=40)
        frozen = time.time()
        server.freeze()
        daemon.wait_metric(up, lambda v: v == 0, timeout=6.5)  # not 8 s: 2 x read_timeout_s
        daemon.wait_log(lambda text: "camera frozen: no frame for" in text, timeout=5)
        reconnects = 'edge_emotion_camera_reconnects_total{camera="frozen"}'
        daemon.wait_metric(reconnects, lambda v: v == 1, timeout=15)  # the session gave up
        thawed = time.time()
        server.thaw()
        daemon.wait_metric(up, lambda v: v == 1, timeout=30)
        warnings = [line for line in daemon.log().splitlines() if "WARNING" in line]
        assert len(warnings) == 1, daemon.log()  # one outage, one line
        assert daemon.stop() == 0
        seen = [json.loads(line) for line in daemon.proc.stdout.read().splitlines()]
        when = [datetime.fromisoformat(e["frame_time"]).timestamp() for e in seen]
        assert [e for e, t in zip(seen, when, strict=True) if frozen + 1 < t < thawed] == [], seen
    finally:
        server.stop()


def test_an_outage_long_enough_to_wrap_message_ids_still_ends_online(tmp_path):
    """paho numbers every message 1..65535 in turn (camera states too) and refused a number
    still held by a queued event as if the queue were full: after a long outage the status
    "online" was never sent (the last will's "offline" stayed retained), nor discovery."""
    from types import SimpleNamespace

    from edge.comms.mqtt import MqttPublisher
    from edge.config import MqttConfig

    broker = Broker(tmp_path)
    config = MqttConfig(
        host="127.0.0.1", port=broker.port, queue_size=60000, spool=False, reconnect_max_s=1
    )
    publisher = MqttPublisher(config, "wrap", ["cam"])
    publisher.start()
    try:
        for n in range(60000):  # the broker is away: every event waits, holding its number
            event = json.dumps({"n": n}).encode()
            publisher.publish(SimpleNamespace(camera="cam", payload=lambda e=event: e))
        for n in range(6000):  # the numbers go round past the first queued event
            state = json.dumps({"state": n}).encode()
            publisher.publish_state(SimpleNamespace(camera="cam", payload=lambda s=state: s))
        assert publisher.stats.dropped == 0
        broker.start()
        deadline = time.monotonic() + 60
        while publisher.stats.published < 60000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert publisher.stats.published == 60000
        status = Subscriber(broker.port, "edge-emotion/wrap/status", client_id="status-reader")
        status.wait_for(lambda ms: [m.payload for m in ms] == [b"online"], timeout=10)
        status.close()
    finally:
        publisher.close(1)
        broker.stop()


def test_a_hung_broker_is_one_warning(broker, daemons):
    """A broker that hangs (keepalive_s runs out) is one line: paho reports the timeout twice,
    and the second read as a port that never accepted a session ("is it an MQTT port?")."""
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5},
        }
    )
    connected = "edge_emotion_mqtt_connected"
    daemon.wait_metric(connected, lambda v: v == 1, timeout=20)
    broker.freeze()
    daemon.wait_metric(connected, lambda v: v == 0, timeout=20)
    broker.thaw()
    daemon.wait_metric(connected, lambda v: v == 1, timeout=20)
    assert daemon.stop() == 0
    warnings = [line for line in daemon.log().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "MQTT disconnected" in warnings[0], daemon.log()


def test_after_a_lost_session_a_port_that_is_no_broker_is_still_said(broker, daemons):
    """The broker goes and something else takes its port (it accepts, then closes: another
    service, a proxy without its backend): that is said, once, after the drop's warning."""
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
        }
    )
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    broker.stop()
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 0, timeout=20)
    impostor = socket.create_server(("127.0.0.1", broker.port))
    stop = threading.Event()

    def accept_and_close() -> None:
        impostor.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                impostor.accept()[0].close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        daemon.wait_log(lambda text: "closed the connection before accepting" in text, 30)
    finally:
        stop.set()
        thread.join()
        impostor.close()
    assert daemon.stop() == 0
    assert daemon.log().count("closed the connection before accepting") == 1


def test_a_state_in_flight_when_the_broker_hangs_never_makes_a_later_event_delivered(tmp_path):
    """A camera state in flight when the broker hangs is sent again by paho at the reconnect;
    its acknowledgement was kept as an event's that came early, and once the message ids went
    round, an event queued during a later outage with that id counted as delivered and was
    never spooled: lost. Here the ids go round during that outage."""
    from types import SimpleNamespace

    from edge.comms.mqtt import MqttPublisher
    from edge.config import MqttConfig

    broker = Broker(tmp_path).start()
    spool = tmp_path / "spool.jsonl"
    config = MqttConfig(
        host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_max_s=1,
        queue_size=60000, spool_file=spool,
    )  # fmt: skip
    publisher = MqttPublisher(config, "porch", ["door"])

    def until(condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, publisher.stats
            time.sleep(0.05)

    def event(n: int) -> SimpleNamespace:
        return SimpleNamespace(camera="door", payload=lambda: json.dumps({"n": n}).encode())

    publisher.start()
    try:
        until(lambda: publisher.stats.connected, 10)
        broker.freeze()
        state = json.dumps({"faces": 1}).encode()
        publisher.publish_state(SimpleNamespace(camera="door", payload=lambda: state))
        until(lambda: not publisher.stats.connected, 20)  # keepalive_s ran out
        broker.thaw()
        until(lambda: publisher.stats.connected, 20)
        for n in range(6000):  # the ids move on while the broker takes everything
            publisher.publish(event(n))
        until(lambda: publisher.stats.published == 6000, 30)
        broker.proc.kill()
        broker.proc.wait()
        until(lambda: not publisher.stats.connected, 10)
        for n in range(6000, 66000):  # an outage: queued, the ids go round
            publisher.publish(event(n))
        assert (publisher.stats.published, publisher.stats.dropped) == (6000, 0)
    finally:
        publisher.close(1)
        broker.stop()
    kept = [json.loads(line)["payload"] for line in spool.read_text().splitlines()]
    assert len(kept) == 60000


def _publisher_on(broker: Broker | SlowLink, **mqtt: object):
    """An MqttPublisher of device "porch" with camera "door" on ``broker``, connected."""
    from edge.comms.mqtt import MqttPublisher
    from edge.config import MqttConfig

    config = MqttConfig(host="127.0.0.1", port=broker.port, spool=False, **mqtt)
    publisher = MqttPublisher(config, "porch", ["door"])
    publisher.start()
    _until(lambda: publisher.stats.connected, 10)
    return publisher


def _until(condition, timeout: float) -> None:
    """Until ``condition()`` (paho's callbacks offer nothing to wait on from here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.05)


def _state(faces: int):
    from types import SimpleNamespace

    payload = json.dumps({"faces": faces}).encode()
    return SimpleNamespace(camera="door", payload=lambda: payload)


def test_after_a_broker_hang_the_retained_state_is_the_newest(tmp_path):
    """A state in flight when the broker hangs is sent again by paho after the reconnect,
    and the newer state went out first: the broker retained the old one ("1 face" on a
    dashboard for a room long empty, until the scene changed again)."""
    broker = Broker(tmp_path).start()
    try:
        publisher = _publisher_on(broker, keepalive_s=5, reconnect_max_s=1)
        broker.freeze()
        publisher.publish_state(_state(1))  # sent, never acknowledged
        _until(lambda: not publisher.stats.connected, 20)  # keepalive_s ran out
        publisher.publish_state(_state(0))  # the room empties during the outage
        broker.thaw()
        _until(lambda: publisher.stats.connected, 20)
        publisher.close(5)  # what is in flight is acknowledged first
        retained = Subscriber(broker.port, "edge-emotion/porch/door/state", client_id="late")
        messages = retained.wait_for(lambda ms: len(ms) >= 1, timeout=10)
        retained.close()
        assert [json.loads(m.payload) for m in messages] == [{"faces": 0}]
    finally:
        broker.stop()


def test_a_stop_with_many_events_unacknowledged_still_leaves_the_status_offline(tmp_path):
    """paho sends at most 20 messages before their acknowledgements: with 20 events waiting on
    a slow link at the stop, "offline" was only queued, and the clean DISCONNECT after it made
    the broker discard the last will: "online" stayed retained for a device long gone."""
    broker = Broker(tmp_path).start()
    link = SlowLink(broker.port)
    try:
        publisher = _publisher_on(link)
        link.hold_answers()  # the broker takes everything; its acknowledgements do not come
        for n in range(30):
            publisher.publish(_event(n))
        publisher.close(1)
        status = Subscriber(broker.port, "edge-emotion/porch/status", client_id="status")
        status.wait_for(lambda ms: ms and ms[-1].payload == b"offline", timeout=15)
        status.close()
    finally:
        link.close()
        broker.stop()


class SlowLink:
    """A TCP relay to the broker on loopback whose answers (broker to client) can be held
    back, as on a congested uplink: what the client sends arrives, nothing comes back."""

    def __init__(self, broker_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.broker_port = self.listener.getsockname()[1], broker_port
        self._answers = threading.Event()
        self._answers.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_answers(self) -> None:
        self._answers.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self._sockets += [client, broker]
            threading.Thread(target=self._relay, args=(client, broker, False), daemon=True).start()
            threading.Thread(target=self._relay, args=(broker, client, True), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, holdable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                while holdable and not self._answers.wait(0.5):
                    pass
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._answers.set()
        self.listener.close()
        for sock in self._sockets:
            sock.close()


def _event(n: int):
    from types import SimpleNamespace

    return SimpleNamespace(camera="door", payload=lambda: json.dumps({"n": n}).encode())


def test_camera_states_never_pile_up_and_the_latest_is_retained(broker):
    """A camera whose face count flickers publishes a state per change: at most one is in
    flight per camera and a newer one replaces those waiting, so the broker ends with the
    latest retained, and states take no message id from the event queue's accounting."""
    from types import SimpleNamespace

    from edge.comms.mqtt import MqttPublisher
    from edge.config import MqttConfig

    publisher = MqttPublisher(
        MqttConfig(host="127.0.0.1", port=broker.port, spool=False), "flicker", ["cam"]
    )
    publisher.start()
    states = Subscriber(broker.port, "edge-emotion/flicker/cam/state", client_id="states")
    states.wait_subscribed()
    try:
        deadline = time.monotonic() + 10
        while not publisher.stats.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in range(2000):
            state = json.dumps({"state": n}).encode()
            publisher.publish_state(SimpleNamespace(camera="cam", payload=lambda s=state: s))
        last = states.wait_for(
            lambda ms: ms and json.loads(ms[-1].payload) == {"state": 1999}, timeout=10
        )
        assert len(last) < 2000  # coalesced, not 2000 messages queued
        assert publisher.stats.published == 0 and publisher.stats.queued == 0
    finally:
        states.close()
        publisher.close(1)
    retained = Subscriber(broker.port, "edge-emotion/flicker/cam/state", client_id="late")
    retained.wait_for(lambda ms: ms and json.loads(ms[-1].payload) == {"state": 1999}, 10)
    retained.close()


def test_camera_recovers_after_stream_returns_and_others_keep_flowing(daemons):
    flaky = RtspServer(CLIP).start()
    steady = RtspServer(CLIP).start()
    try:
        daemon = daemons(
            {
                "cameras": [
                    {"name": "flaky", "source": flaky.url(), "fps": 5},
                    {"name": "steady", "source": steady.url(), "fps": 5},
                ],
            }
        )
        up = 'edge_emotion_camera_up{camera="flaky"}'
        daemon.wait_metric(up, lambda v: v == 1, timeout=30)
        flaky.stop()
        daemon.wait_metric(up, lambda v: v == 0, timeout=20)
        steady_frames = daemon.metrics()['edge_emotion_frames_read_total{camera="steady"}']
        daemon.wait_metric(
            'edge_emotion_frames_read_total{camera="steady"}',
            lambda v: v > steady_frames + 20,
            timeout=10,
        )
        flaky.start()
        returned = time.monotonic()
        daemon.wait_metric(up, lambda v: v == 1, timeout=15)
        assert time.monotonic() - returned <= 10
        frames = daemon.metrics()['edge_emotion_frames_read_total{camera="flaky"}']
        daemon.wait_metric(
            'edge_emotion_frames_read_total{camera="flaky"}', lambda v: v > frames + 10, timeout=10
        )
        assert daemon.metrics()['edge_emotion_camera_reconnects_total{camera="flaky"}'] >= 1
        assert daemon.stop() == 0
    finally:
        flaky.stop()
        steady.stop()


def test_a_camera_that_streams_only_over_udp_is_read_with_rtsp_transport_udp(daemons):
    """TCP is the default; a camera that refuses it is named with the setting that fixes it,
    and the other transport reads it."""
    server = RtspServer(CLIP, udp_only=True).start()
    try:
        daemon = daemons(
            {
                "cameras": [
                    {"name": "tcp", "source": server.url(), "fps": 5},
                    {"name": "udp", "source": server.url(), "fps": 5, "rtsp_transport": "udp"},
                ],
            }
        )
        daemon.wait_metric(
            'edge_emotion_frames_read_total{camera="udp"}', lambda v: v >= 10, timeout=30
        )
        daemon.wait_log(lambda log: "try rtsp_transport: udp" in log, timeout=10)
        assert daemon.metrics()['edge_emotion_camera_up{camera="tcp"}'] == 0
        assert daemon.stop() == 0, daemon.log()
    finally:
        server.stop()


def test_a_camera_that_refuses_the_login_is_tried_again_a_minute_later_not_at_once(daemons):
    """Many cameras lock the account after three to five failed logins: the retries came
    0.5, 1, 2 and 4 s apart, and a wrong password locked it within seconds."""
    import http.server

    logins = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization"):  # FFmpeg asks without it first
                logins.append(self.path)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://viewer:wrong@127.0.0.1:{server.server_port}/video.mjpg"
        daemon = daemons({"cameras": [{"name": "gate", "source": url}]})
        log = daemon.wait_log(lambda text: "camera gate" in text and "retrying" in text, 30)
        assert "401 Unauthorized" in log and "retrying in 60 s" in log, log
        assert "wrong" not in log
        daemon.wait_metric('edge_emotion_camera_up{camera="gate"}', lambda v: v == 0, 5)
        assert daemon.stop() == 0, daemon.log()
        assert len(logins) == 1, logins
    finally:
        server.shutdown()


def test_cameras_that_hang_never_delay_a_live_camera_start_or_recovery(daemons):
    """Three endpoints that accept and never answer, with a 30 s timeout each: were opens
    serialised (as in OpenCV's FFmpeg backend), the good camera would wait for them."""
    hanging = [BrokenCamera() for _ in range(3)]
    good = RtspServer(CLIP).start()
    slow = {"fps": 5, "open_timeout_s": 30, "read_timeout_s": 30}
    try:
        daemon = daemons(
            {
                "cameras": [
                    *(
                        {"name": f"hang{i}", "source": h.url(), **slow}
                        for i, h in enumerate(hanging)
                    ),
                    {"name": "good", "source": good.url(), "fps": 5},
                ],
            }
        )
        processed = 'edge_emotion_frames_processed_total{camera="good"}'
        daemon.wait_metric(processed, lambda v: v >= 5, timeout=20)
        up = 'edge_emotion_camera_up{camera="good"}'
        good.stop()
        daemon.wait_metric(up, lambda v: v == 0, timeout=20)
        good.start()  # the hanging cameras are still inside their 30 s opens
        frames = daemon.metrics()[processed]
        daemon.wait_metric(processed, lambda v: v >= frames + 5, timeout=20)
        values = daemon.metrics()
        assert all(values[f'edge_emotion_camera_up{{camera="hang{i}"}}'] == 0 for i in range(3))
        # Never a frame, yet a series at 0: an alert on its rate fires instead of seeing nothing.
        assert all(
            values[f'edge_emotion_{m}_total{{camera="hang{i}"}}'] == 0
            for i in range(3)
            for m in ("frames_processed", "faces_detected")
        )
        assert daemon.stop() == 0
    finally:
        good.stop()
        for h in hanging:
            h.close()
    assert "Traceback" not in daemon.log()


def test_a_camera_that_never_answers_is_named_as_such(daemons):
    """It was "Invalid data found when processing input", what FFmpeg was reading when the
    open timeout cut it: the operator looked for a codec problem, not a dead camera."""
    hanging = BrokenCamera()
    try:
        daemon = daemons(
            {"cameras": [{"name": "hang", "source": hanging.url(), "open_timeout_s": 1}]}
        )
        log = daemon.wait_log(lambda text: "camera hang: cannot open" in text, timeout=20)
        assert "no answer within open_timeout_s (1 s)" in log, log
        assert "Invalid data" not in log
        assert daemon.stop() == 0
    finally:
        hanging.close()


def test_when_the_cpu_is_short_every_camera_is_analysed_alike(daemons):
    """Six cameras asking for more than one worker can analyse: none starves, the shortfall
    is shared and counted as dropped frames per camera."""
    names = [f"cam{i}" for i in range(6)]
    daemon = daemons(
        {
            "cameras": [{"name": n, "source": str(CLIP), "fps": 60, "loop": True} for n in names],
            "workers": 1,
            "detector": {"full_scan_every": 1},  # every frame a full scan: the CPU is short
        }
    )
    processed = [f'edge_emotion_frames_processed_total{{camera="{n}"}}' for n in names]
    daemon.wait_metric(processed[-1], lambda v: v >= 3, timeout=30)  # every camera is running
    first = daemon.metrics()
    daemon.wait_metric(processed[0], lambda v: v >= first[processed[0]] + 20, timeout=60)
    values = daemon.metrics()
    analysed = [values[p] - first[p] for p in processed]
    assert min(analysed) >= 0.6 * max(analysed), analysed
    dropped = [values[f'edge_emotion_frames_dropped_total{{camera="{n}"}}'] for n in names]
    assert all(d > 0 for d in dropped), dropped
    assert daemon.stop() == 0


def test_frames_left_by_the_fps_cap_are_skipped_not_dropped(daemons):
    """``frames_dropped_total`` is the CPU-is-behind alarm: a 30 fps clip analysed at 2 fps
    leaves most frames by design, which must not raise it."""
    daemon = daemons({"cameras": [{"name": "clip", "source": str(CLIP), "fps": 2, "loop": True}]})
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v >= 90, 30)
    values = daemon.metrics()
    skipped = values['edge_emotion_frames_skipped_total{camera="clip"}']
    dropped = values['edge_emotion_frames_dropped_total{camera="clip"}']
    assert skipped >= 60 and dropped <= skipped / 10, (skipped, dropped)
    assert daemon.stop() == 0


def test_unreachable_and_garbage_cameras_are_logged_and_do_not_block_others(daemons, tmp_path):
    garbage_file = tmp_path / "garbage.mp4"
    garbage_file.write_bytes(os.urandom(50_000))
    junk = BrokenCamera(garbage=os.urandom(2048))
    try:
        daemon = daemons(
            {
                "cameras": [
                    {"name": "nowhere", "source": f"rtsp://127.0.0.1:{free_port()}/x", "fps": 5},
                    {"name": "junk", "source": junk.url(), "fps": 5},
                    {"name": "garbage", "source": str(garbage_file), "fps": 5},
                    {"name": "clip", "source": str(CLIP), "fps": 5, "loop": True},
                ],
            }
        )
        daemon.wait_metric(
            'edge_emotion_frames_processed_total{camera="clip"}', lambda v: v >= 10, timeout=30
        )
        started = time.monotonic()
        daemon.wait_metric(
            'edge_emotion_frames_processed_total{camera="clip"}', lambda v: v >= 40, timeout=30
        )
        values = daemon.metrics()
        for name in ("nowhere", "junk", "garbage"):
            assert values[f'edge_emotion_camera_up{{camera="{name}"}}'] == 0
        # Series at 0, not missing: alerts on rate() see a silent camera, and a first event
        # of a kind and emotion counts in increase() (a series that appears at 1 does not).
        series = [
            'edge_emotion_frames_processed_total{camera="nowhere"}',
            'edge_emotion_frames_failed_total{camera="nowhere"}',
            *(
                f'edge_emotion_events_total{{camera="nowhere",emotion="{e}",event="{kind}"}}'
                for kind in ("start", "change", "heartbeat", "end")
                for e in EMOTIONS
            ),
        ]
        assert [values.get(name) for name in series] == [0] * len(series)
        # Retries back off (0.5 s doubling to 5 s), they do not hammer the server.
        assert junk.connections <= 4 + (time.monotonic() - started) / 0.5
        assert daemon.stop() == 0
    finally:
        junk.close()
    log = daemon.log()
    assert "camera nowhere: cannot open rtsp://127.0.0.1" in log
    assert "camera junk: cannot open rtsp://127.0.0.1" in log
    assert "camera garbage: cannot open" in log
    assert log.count("camera nowhere:") == 1  # warned once per outage, not every retry
    assert "Traceback" not in log


@pytest.mark.parametrize("content", [None, b"not a model at all"], ids=["missing", "corrupt"])
def test_missing_or_corrupt_model_stops_startup_with_a_clear_error(tmp_path, content):
    model = tmp_path / "model.tflite"
    if content is not None:
        model.write_bytes(content)
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "clip", "source": str(CLIP)}],
                "model": {"path": str(model)},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "model.tflite" in result.stderr
    assert "Traceback" not in result.stderr


def watchdog_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    """systemd's notify socket, as the daemon finds it in NOTIFY_SOCKET."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    return sock, address


def pings_for(sock: socket.socket, seconds: float) -> int:
    """The WATCHDOG=1 pings that arrive in the next ``seconds``."""
    count, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            count += sock.recv(256) == b"WATCHDOG=1"
        except TimeoutError:
            break
    return count


def test_systemd_ready_then_watchdog_pings_through_a_camera_outage(tmp_path, rtsp, daemons):
    """A camera that drops (switched off at night, a network outage) is retried by the daemon
    itself: the watchdog keeps being fed. Restarting the service every minute while the
    camera was off only made its MQTT status flap "offline"/"online" and filled the journal."""
    sock, address = watchdog_socket(tmp_path)
    daemon = daemons(
        {"cameras": [{"name": "door", "source": rtsp.url(), "fps": 5}]},
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"},
    )
    assert sock.recv(256) == b"READY=1"
    assert sock.recv(256) == b"WATCHDOG=1"
    rtsp.stop()
    daemon.wait_metric('edge_emotion_camera_up{camera="door"}', lambda v: v == 0, timeout=20)
    assert pings_for(sock, 5) >= 3, daemon.log()  # 2.5 x WatchdogSec: systemd would have killed
    rtsp.start()
    daemon.wait_metric('edge_emotion_camera_up{camera="door"}', lambda v: v == 1, timeout=30)
    assert daemon.stop() == 0, daemon.log()


def test_a_camera_that_never_answers_does_not_restart_the_daemon(tmp_path, daemons):
    """systemd starts the service with the camera still booting, unplugged, or its address
    wrong: the daemon keeps retrying, fed by the watchdog, and says why the camera is down."""
    sock, address = watchdog_socket(tmp_path)
    daemon = daemons(
        {"cameras": [{"name": "door", "source": f"rtsp://127.0.0.1:{free_port()}/live"}]},
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"},
    )
    assert sock.recv(256) == b"READY=1"
    assert pings_for(sock, 5) >= 3, daemon.log()
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert "camera door: cannot open" in daemon.log()


def test_an_analysis_that_takes_no_camera_in_turn_is_restarted(tmp_path, daemons):
    """A hang is what the watchdog is for: here the only worker spends seconds on each frame
    (a face scan at a scale step of 0.1%), longer than half a WatchdogSec. The pings stop, and
    before systemd's SIGABRT (which would lose what is queued) the daemon stops cleanly
    itself, with a failure code, to be restarted."""
    sock, address = watchdog_socket(tmp_path)
    daemon = daemons(
        {
            "cameras": [
                {"name": "door", "source": str(CLIP), "loop": True, "fps": 5},
                # A camera that is due only every 100 s must not hide the other's wait.
                {"name": "still", "source": str(CLIP), "loop": True, "fps": 0.01},
            ],
            "detector": {"scale_factor": 1.001, "min_size": 8},
        },
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"},
    )
    assert sock.recv(256) == b"READY=1"
    assert daemon.proc.wait(timeout=60) == 1
    assert "the analysis has taken no camera in turn for" in daemon.log(), daemon.log()
    assert "exiting to be restarted before the systemd watchdog" in daemon.log()


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.0 400 Bad Request\r\n\r\n", None], ids=["http", "silent"]
)
def test_a_broker_address_that_is_not_an_mqtt_broker_is_named_once_in_the_log(daemons, answer):
    """A port that speaks another protocol (or nothing) accepts TCP: without a word in the log,
    events would pile up unseen until the queue filled."""
    other = BrokenCamera(garbage=answer)
    try:
        daemon = daemons(
            {
                "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
                "mqtt": {"host": "127.0.0.1", "port": other.port, "keepalive_s": 5},
                "tracking": {"heartbeat_s": 0.5},
            }
        )
        # The silent one: paho's wait for an answer ran out (keepalive_s), nobody closed it.
        said = (
            "closed the connection before accepting a session"
            if answer
            else "did not answer the connect request within keepalive_s (5 s)"
        )
        daemon.wait_log(lambda log: said in log, timeout=30)
        daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 1, timeout=30)
        assert daemon.stop() == 0
    finally:
        other.close()
    log = daemon.log()
    assert log.count(said) == 1, log
    assert "is it an MQTT port, and not one that needs TLS (mqtt.tls)?" in log


def test_a_killed_daemon_is_announced_offline_by_the_last_will(broker, daemons):
    sub = Subscriber(broker.port, "edge-emotion/+/status")
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5},
        }
    )
    sub.wait_for(lambda ms: ms and ms[-1].payload == b"online", timeout=30)
    daemon.proc.kill()  # no clean shutdown: only the broker can tell
    messages = sub.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=15)
    sub.close()
    assert messages[-1].topic == "edge-emotion/porch/status"


def test_without_a_broker_no_broker_connection_is_reported(daemons):
    """A dashboard's "MQTT down" alert must not read a daemon that prints events to stdout as
    connected (it said 1) or as down: the gauge is absent."""
    daemon = daemons({"cameras": [{"name": "clip", "source": str(CLIP), "loop": True}]})
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 0, 30)
    metrics = daemon.metrics()
    assert "edge_emotion_mqtt_connected" not in metrics
    assert metrics["edge_emotion_events_dropped_total"] == 0
    assert daemon.stop() == 0, daemon.log()


def test_metrics_are_served_at_slash_metrics_only_and_answer_health_checks(daemons):
    """A scrape job with a wrong path gets a 404, not metrics that hide the mistake; HEAD
    (wget --spider, uptime checks) answers 200; no <name>_created series double the count."""
    daemon = daemons({"cameras": [{"name": "clip", "source": str(CLIP), "loop": True}]})
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 0, 30)
    url = f"http://127.0.0.1:{daemon.metrics_port}"

    def status(path: str, method: str = "GET") -> int:
        request = urllib.request.Request(url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert [status("/metrics"), status("/metrics", "HEAD")] == [200, 200]

    def body_length() -> int:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as got:
            return len(got.read())

    # HEAD's Content-Length is GET's, not 0 (RFC 9110 9.3.2). Series appear while the clip
    # plays (a first face adds its labels), so it lies between a GET before and one after.
    before = body_length()
    head = urllib.request.urlopen(
        urllib.request.Request(url + "/metrics", method="HEAD"), timeout=5
    )
    length = int(head.headers["Content-Length"])
    after = body_length()
    assert length > 1000
    assert min(before, after) - 200 < length < max(before, after) + 200, (before, length, after)
    assert [status("/"), status("/metric"), status("/metrics/x")] == [404, 404, 404]
    assert status("/metrics", "POST") == 405
    # The absolute form a proxy sends (RFC 9112 3.2.2) is the same path.
    connection = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=5)
    connection.request("GET", f"{url}/metrics")
    assert connection.getresponse().status == 200
    connection.close()
    # One that is no URL (an unclosed IPv6 bracket) is a bad request, not a traceback logged
    # at every request (anyone who can connect could fill the journal).
    with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as raw:
        raw.sendall(b"GET http://[::1/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert raw.makefile("rb").readline().split()[1] == b"400"
    names = daemon.metrics()
    assert 'edge_emotion_frames_processed_total{camera="clip"}' in names
    assert not [name for name in names if "_created" in name]
    assert daemon.stop() == 0, daemon.log()
    assert "Traceback" not in daemon.log()


def test_idle_connections_to_the_metrics_and_view_ports_are_closed(daemons):
    """Each open connection holds a server thread: ones that never send a request (a broken
    scraper, a port scan) must not pile up over months."""
    view_port = free_port()
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "view": {"enabled": True, "port": view_port},
        }
    )
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 0, 30)
    idle = [socket.create_connection(("127.0.0.1", p)) for p in (daemon.metrics_port, view_port)]
    for connection in idle:
        connection.settimeout(30)
        assert connection.recv(1) == b""  # closed by the daemon, not by our timeout
        connection.close()
    assert daemon.stop() == 0, daemon.log()
    assert "Traceback" not in daemon.log()  # the metrics server printed 17 lines for each


def test_slow_clients_cannot_take_the_daemons_file_descriptors(daemons):
    """Clients that send a byte every few seconds and never finish a request ("slowloris"):
    each held a thread and a descriptor for ever, 1,024 of them took every descriptor of the
    process, and a camera that dropped could not reconnect. The servers take a bounded number
    of connections and cut each one after a deadline, whatever it sends."""
    view_port = free_port()
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "view": {"enabled": True, "port": view_port},
        }
    )
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 0, 30)
    descriptors = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
    slow = []
    for port in (daemon.metrics_port, view_port):
        for _ in range(150):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(b"GET / HTTP/1.1\r\nX-a: ")
            slow.append(connection)
    opened = time.monotonic()
    held = 0
    try:
        while time.monotonic() - opened < 12:  # past the servers' 5 s deadline
            held = max(held, len(os.listdir(f"/proc/{daemon.proc.pid}/fd")))
            for connection in slow:
                with contextlib.suppress(OSError):
                    connection.send(b"a")
            time.sleep(1)
        assert held <= descriptors + 2 * 64 + 10, (descriptors, held)
        assert all(_closed_by_peer(connection) for connection in slow)
        assert scrape(daemon.metrics_port)  # serving again
    finally:
        for connection in slow:
            connection.close()
    # One host taking every slot it can, reconnecting as it is cut, leaves room for others:
    # a Prometheus server elsewhere on the network still scrapes.
    slow = []
    try:
        for _ in range(80):
            connection = socket.create_connection(
                ("127.0.0.1", daemon.metrics_port), source_address=("127.0.0.2", 0)
            )
            connection.sendall(b"GET /metrics HTTP/1.1\r\nX-a: ")
            slow.append(connection)
        assert scrape(daemon.metrics_port)
    finally:
        for connection in slow:
            connection.close()
    assert daemon.stop() == 0, daemon.log()


def _closed_by_peer(connection: socket.socket) -> bool:
    """Closed by the daemon (end of stream or reset), not still held open."""
    connection.settimeout(5)
    try:
        while connection.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_the_daemon_runtime_never_imports_tensorflow():
    code = (
        "import sys, edge.__main__, edge.daemon, edge.analyze, edge.demo; "
        "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_a_reload_is_visible_to_a_restart_alert(daemons):
    """A reload re-executes the same process: its counters start again from 0 while
    process_start_time_seconds stays. The daemon's own start time moves on."""
    daemon = daemons({"cameras": [{"name": "clip", "source": str(CLIP), "loop": True}]})
    first = daemon.wait_metric("edge_emotion_start_time_seconds", lambda v: v > 0, timeout=30)
    assert abs(first - time.time()) < 60
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_metric("edge_emotion_start_time_seconds", lambda v: v > first, timeout=30)
    assert daemon.stop() == 0
