"""Real services on loopback for the tests: a mosquitto broker and a GStreamer RTSP server."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """The daemon's /metrics as ``{'name{labels}': value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


SUMMARY = re.compile(r"events delivered (\d+), undelivered (\d+), dropped (\d+)")


def shutdown_summary(log: str) -> tuple[int, int, int]:
    """(delivered, undelivered, dropped) from the daemon's last "stopped: …" log line."""
    delivered, undelivered, dropped = map(int, SUMMARY.findall(log)[-1])
    return delivered, undelivered, dropped


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def spawn_daemon(config: dict, work: Path) -> subprocess.Popen:
    """The daemon as a user starts it: ``python -m edge run`` on ``work/edge.yaml``, its log in
    ``work/daemon.log`` (the benches' way; tests use their DaemonProcess fixture)."""
    import sys

    import yaml

    (work / "edge.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(work / "edge.yaml")],
        cwd=TESTS.parent,
        stderr=(work / "daemon.log").open("w"),
    )


class BrokenCamera:
    """A TCP endpoint on loopback that behaves as a broken camera: with ``garbage``, it sends
    those bytes to each connection and hangs up; without, it accepts and never answers a byte
    (a camera that hangs, not one that refuses)."""

    def __init__(self, garbage: bytes | None = None) -> None:
        self.garbage = garbage
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._accepted = threading.Condition()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def wait_connections(self, count: int, timeout: float) -> None:
        """Until ``count`` connections have come (each camera's open under way)."""
        with self._accepted:
            if not self._accepted.wait_for(lambda: self.connections >= count, timeout):
                raise AssertionError(f"{self.connections} of {count} connections in {timeout} s")

    def url(self, path: str = "/live") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._accepted:
                self.connections += 1
                self._accepted.notify_all()
            if self.garbage is None:
                self.held.append(conn)  # kept open, never read or written
                continue
            with conn:
                conn.sendall(self.garbage)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Service:
    """A server process of the tests'."""

    proc: subprocess.Popen | None

    def freeze(self) -> None:
        """It hangs with its connections open (a device that locks up, a cable pulled behind
        a switch): nothing more arrives and nothing closes."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


class Broker(Service):
    """mosquitto with persistence, so a restart keeps subscribers' sessions like a real broker."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra: str = "", anonymous: bool = True
    ) -> None:
        if not shutil.which("mosquitto"):
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            # Stay the test's user: mosquitto would otherwise switch to user "mosquitto", which
            # cannot write the persistence file into the test's private temporary folder.
            "user root\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            # Default 1000 silently drops QoS 1 bursts to slow subscribers.
            "max_queued_messages 0\n"
            "log_dest stderr\n" + extra
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "mosquitto.log").open("ab"),
        )
        wait_for_port(self.port)
        return self

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password file, as an operator rotating one does."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()  # a frozen one too
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence file
            self.proc.wait(10)
        self.proc = None


class RtspServer(Service):
    def __init__(
        self,
        clip: Path,
        paths: tuple[str, ...] = ("/cam",),
        port: int | None = None,
        fps: int = 15,
        pre_encoded: bool = False,
        udp_only: bool = False,
    ):
        self.clip, self.paths, self.fps, self.pre_encoded = clip, paths, fps, pre_encoded
        self.udp_only = udp_only
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, path: str = "/cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def start(self) -> RtspServer:
        args = ["/usr/bin/python3", str(TESTS / "rtsp_server.py"), "--port", str(self.port)]
        args += ["--clip", str(self.clip), "--fps", str(self.fps)]
        for path in self.paths:
            args += ["--path", path]
        if self.pre_encoded:
            args.append("--pre-encoded")
        if self.udp_only:
            args.append("--udp-only")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"RTSP server did not start: {self.proc.stderr.read()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()  # a frozen one too
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class Subscriber:
    """Collects every message under a topic filter; tests wait on conditions, never sleep."""

    def __init__(
        self,
        port: int,
        topic: str,
        client_id: str = "test-subscriber",
        ca: Path | None = None,
        credentials: tuple[str, str] | None = None,
        changed: threading.Condition | None = None,
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.received_at: list[float] = []  # wall-clock receipt time of each message
        # Subscribers given one condition wake each other: wait on what they receive together.
        self._changed = changed or threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        if credentials:
            self.client.username_pw_set(*credentials)
        self.subscribed = False  # the broker acknowledged the subscription
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage):
        with self._changed:
            self.messages.append(message)
            self.received_at.append(time.time())
            self._changed.notify_all()

    def _on_subscribe(self, client: mqtt.Client, *_: object) -> None:
        with self._changed:
            self.subscribed = True
            self._changed.notify_all()

    def wait_subscribed(self, timeout: float = 10) -> None:
        """Until the broker has acknowledged the subscription: what is published after it counts."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.subscribed, timeout):
                raise AssertionError(f"{self.topic}: subscription not acknowledged in {timeout} s")

    def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout: float):
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.messages), timeout):
                topics = [m.topic for m in self.messages[-10:]]
                raise AssertionError(f"condition not met in {timeout} s; last topics {topics}")
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
