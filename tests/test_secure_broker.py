"""A broker with TLS and passwords: right credentials deliver, wrong ones are named in the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED, run_cli
from services import Broker, Subscriber, shutdown_summary
from test_daemon import DaemonProcess

CLIP = SHARED / "media" / "asl-again.mkv"


def openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        ca_key,
        "-out",
        ca,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        key,
        "-out",
        csr,
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sign(csr, folder, cert, "-extfile", ext)
    return ca, cert, key


def sign(csr: Path, folder: Path, cert: Path, *extra: object) -> None:
    """``csr`` signed by the CA that ``make_certificates`` made in ``folder``, valid two days."""
    openssl(
        "x509", "-req", "-in", csr, "-CA", folder / "ca.crt", "-CAkey", folder / "ca.key",
        "-CAcreateserial", "-days", "2", *extra, "-out", cert,
    )  # fmt: skip


@pytest.fixture
def secure_broker(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", passwords, "edge", "s3cret-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", passwords, "reader", "r3ader"], check=True)
    extra = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\npassword_file {passwords}\n"
    broker = Broker(tmp_path, extra=extra, anonymous=False).start()
    yield broker, ca
    broker.stop()


def secure_config(port: int, ca: Path, password: str) -> dict:
    """A looping clip, events to the TLS broker as user "edge"."""
    mqtt = {
        "host": "127.0.0.1",
        "port": port,
        "username": "edge",
        "password": password,
        "tls": {"ca_file": str(ca)},
    }
    return {
        "device_id": "porch",
        "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
        "mqtt": mqtt,
    }


def test_tls_and_password_deliver_events(secure_broker, tmp_path):
    broker, ca = secure_broker
    sub = Subscriber(broker.port, "edge-emotion/#", ca=ca, credentials=("reader", "r3ader"))
    daemon = DaemonProcess(tmp_path, secure_config(broker.port, ca, "s3cret-pw"))
    try:
        messages = sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), 30)
        assert json.loads(next(m for m in messages if m.topic.endswith("/event")).payload)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sub.close()
    assert "s3cret-pw" not in daemon.log()


def test_wrong_password_is_logged_clearly_and_never_printed(secure_broker, tmp_path):
    broker, ca = secure_broker
    daemon = DaemonProcess(tmp_path, secure_config(broker.port, ca, "wrong-pw"))
    try:
        daemon.wait_metric(
            'edge_emotion_frames_processed_total{camera="clip"}', lambda v: v > 5, timeout=30
        )
        assert daemon.metrics()["edge_emotion_mqtt_connected"] == 0
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    log = daemon.log()
    assert "refused the connection: Not authorized" in log or "Bad user name or password" in log
    assert "wrong-pw" not in log
    # The refusal is the whole story: not also a hint that the port may not speak MQTT.
    assert "closed the connection before accepting" not in log, log


def refusal_times(log: str) -> list[datetime]:
    return [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in log.splitlines()
        if "refused the connection" in line
    ]


def test_refused_credentials_are_retried_with_backoff_and_the_queue_is_kept(
    secure_broker, tmp_path
):
    """The device got its new password before the broker: nothing is lost meanwhile."""
    broker, ca = secure_broker
    config = secure_config(broker.port, ca, "n3w-pw")
    config["mqtt"]["reconnect_max_s"] = 2
    config["tracking"] = {"heartbeat_s": 0.2}  # a steady stream of events to queue
    sub = Subscriber(broker.port, "edge-emotion/+/+/event", ca=ca, credentials=("reader", "r3ader"))
    daemon = DaemonProcess(tmp_path, config)
    try:
        daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 10, timeout=30)
        daemon.wait_log(lambda log: len(refusal_times(log)) >= 3, timeout=30)
        daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 10, timeout=5)
        metrics_text = "\n".join(daemon.metrics())
        assert daemon.metrics()["edge_emotion_events_dropped_total"] == 0
        # The broker learns the new password; the daemon's next retry gets in and delivers.
        passwords = tmp_path / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", passwords, "edge", "n3w-pw"], check=True)
        broker.reload()
        daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=15)
        daemon.wait_metric("edge_emotion_events_queued", lambda v: v == 0, timeout=15)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    log = daemon.log()
    times = refusal_times(log)
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert min(gaps) >= 0.9, gaps  # paho's reconnect delay: 1 s, doubling up to reconnect_max_s
    delivered, undelivered, dropped = shutdown_summary(log)
    assert (undelivered, dropped) == (0, 0)
    received = sub.wait_for(lambda ms: len({m.payload for m in ms}) >= delivered, timeout=10)
    sub.close()
    assert len({m.payload for m in received}) == delivered
    assert "n3w-pw" not in log and "n3w-pw" not in metrics_text


def test_check_config_never_prints_the_password(tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text(
        "cameras: [{name: clip, source: " + str(CLIP) + "}]\n"
        "mqtt: {host: 127.0.0.1, username: edge, password: n3w-pw}\n"
    )
    for env in ({}, {"EDGE_MQTT__PASSWORD": "env-s3cret"}):
        done = subprocess.run(
            [sys.executable, "-m", "edge", "check-config", "--config", str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert "edge" in done.stdout and "***" in done.stdout
        output = done.stdout + done.stderr
        assert "n3w-pw" not in output and "env-s3cret" not in output


def test_a_broker_certificate_from_another_ca_is_named_in_the_log(secure_broker, tmp_path):
    """paho retries TLS failures silently; the daemon says why, once."""
    broker, _ = secure_broker
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_certificates(other)
    daemon = DaemonProcess(tmp_path, secure_config(broker.port, wrong_ca, "s3cret-pw"))
    try:
        daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 1, timeout=30)
        daemon.wait_log(lambda log: "MQTT cannot connect" in log, timeout=15)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    log = daemon.log()
    assert "certificate verify failed" in log
    assert log.count("MQTT cannot connect") == 1  # once per outage, not once per retry
    assert "s3cret-pw" not in log


def make_client_certificate(folder: Path, passphrase: str) -> tuple[Path, Path]:
    """A client certificate signed by ``make_certificates``' CA in ``folder``, its key encrypted
    with ``passphrase`` (as a device's provisioning often leaves it)."""
    key, csr, cert = (folder / n for n in ("c.key", "c.csr", "c.crt"))

    openssl("genpkey", "-algorithm", "RSA", "-aes256", "-pass", f"pass:{passphrase}", "-out", key)
    openssl(
        "req",
        "-new",
        "-key",
        key,
        "-passin",
        f"pass:{passphrase}",
        "-subj",
        "/CN=edge",
        "-out",
        csr,
    )
    sign(csr, folder, cert)
    return cert, key


def test_a_client_certificate_with_an_encrypted_key_gets_in(tmp_path, monkeypatch):
    """A broker that admits only certificates of its CA; the device's key is encrypted and its
    passphrase comes from the environment (the unit's credentials), never printed."""
    ca, server_cert, server_key = make_certificates(tmp_path)
    cert, key = make_client_certificate(tmp_path, "k3y-pass")
    extra = f"cafile {ca}\ncertfile {server_cert}\nkeyfile {server_key}\nrequire_certificate true\n"
    broker = Broker(tmp_path, extra=extra).start()
    config = secure_config(broker.port, ca, "unused")
    del config["mqtt"]["username"], config["mqtt"]["password"]
    config["mqtt"]["tls"] |= {"cert_file": str(cert), "key_file": str(key)}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        without = run_cli("edge", "check-config", "--config", path)
        assert without.returncode == 2
        assert (
            "the key is encrypted: give its passphrase as mqtt.tls.key_password" in without.stderr
        )
        monkeypatch.setenv("EDGE_MQTT__TLS__KEY_PASSWORD", "k3y-pass")
        checked = run_cli("edge", "check-config", "--config", path)
        assert checked.returncode == 0, checked.stderr
        daemon = DaemonProcess(tmp_path, config)
        try:
            daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=30)
            daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 1, 30)
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    finally:
        broker.stop()
    assert all("k3y-pass" not in text for text in (checked.stdout, checked.stderr, daemon.log()))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_the_brokers_acl_refuses_are_counted_and_named_not_delivered(tmp_path, protocol):
    """A broker whose ACL lets the daemon's user publish its status but not its events: under
    MQTT 3.1.1 mosquitto acknowledges a refused message and drops it, so every event was
    counted as delivered and nothing was said. MQTT 5 (the default) is told of the refusal."""
    passwords, acl = tmp_path / "passwords", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", passwords, "edge", "s3cret-pw"], check=True)
    acl.write_text("user edge\ntopic readwrite edge-emotion/porch/status\n")
    # mosquitto 2.0.11 with persistence and an unlimited queue (max_queued_messages 0) drops
    # the connection of a client whose QoS 1 message it denied: a limit, as most brokers have.
    extra = f"password_file {passwords}\nacl_file {acl}\nmax_queued_messages 100000\n"
    broker = Broker(tmp_path, extra=extra, anonymous=False).start()
    mqtt = {"host": "127.0.0.1", "port": broker.port, "username": "edge", "password": "s3cret-pw"}
    config = {
        "device_id": "porch",
        "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
        "mqtt": {**mqtt, "protocol": protocol},
        "tracking": {"heartbeat_s": 0.2},
    }
    daemon = DaemonProcess(tmp_path, config)
    try:
        if protocol == "3.1.1":  # what the broker says nothing about, the daemon cannot know
            daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 3, 30)
            assert "refused" not in daemon.log()
        else:
            daemon.wait_metric("edge_emotion_events_dropped_total", lambda v: v >= 3, 30)
            assert daemon.metrics()["edge_emotion_events_published_total"] == 0
            log = daemon.wait_log(lambda text: "refused the message" in text, 10)
            assert log.count("refused the message on edge-emotion/porch/clip/event") == 1, log
            assert "Not authorized" in log and "s3cret-pw" not in log
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        broker.stop()


def test_a_message_over_the_brokers_size_limit_is_refused_and_the_rest_flows(tmp_path):
    """mosquitto refuses a message over its message_size_limit with a reason MQTT 5 does not
    allow on a PUBACK (0x95): paho dropped the connection as a protocol error, resent the
    message first at each reconnect, and no event got through again. Here the Home Assistant
    discovery configs (500+ bytes) are over the limit and the events (~370 bytes) under it."""
    broker = Broker(tmp_path, extra="message_size_limit 450\nmax_queued_messages 1000\n").start()
    config = {
        "device_id": "porch",
        "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "homeassistant": {"enabled": True}},
        "tracking": {"heartbeat_s": 0.2},
    }
    events = Subscriber(broker.port, "edge-emotion/porch/+/event")
    daemon = DaemonProcess(tmp_path, config)
    try:
        events.wait_for(lambda ms: len(ms) >= 5, timeout=30)
        log = daemon.log()
        assert "refused the message on homeassistant/" in log and "Packet too large" in log, log
        assert "MQTT disconnected" not in log, log
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        events.close()
        broker.stop()


def test_a_stop_with_many_events_unacknowledged_over_tls_still_leaves_the_status_offline(
    secure_broker, tmp_path
):
    """As without TLS (test_daemon): "offline" waits behind 20 unacknowledged events, so the
    connection is cut for the last will to say it, here under the TLS layer that paho's
    thread is still reading with; no thread may die of it."""
    from test_daemon import SlowLink, _event, _publisher_on

    broker, ca = secure_broker
    link = SlowLink(broker.port)
    errors = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args)
    try:
        publisher = _publisher_on(
            link, username="edge", password="s3cret-pw", tls={"ca_file": str(ca)}
        )
        link.hold_answers()  # the broker takes everything; its acknowledgements do not come
        for n in range(30):
            publisher.publish(_event(n))
        publisher.close(1)
        status = Subscriber(
            broker.port, "edge-emotion/porch/status", ca=ca, credentials=("reader", "r3ader")
        )
        status.wait_for(lambda ms: ms and ms[-1].payload == b"offline", timeout=15)
        status.close()
    finally:
        threading.excepthook = previous_hook
        link.close()
    assert errors == [], [(e.exc_type, e.exc_value, e.thread) for e in errors]
