"""A broker with TLS and passwords: right credentials deliver, wrong ones are named in the log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED
from services import Broker, Subscriber
from test_daemon import DaemonProcess

CLIP = SHARED / "media" / "asl-again.mkv"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )

    def run(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    run(
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
    run(
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
    run(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext,
        "-out",
        cert,
    )
    return ca, cert, key


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
