"""Hostile and careless input: secrets never printed, signals and pipes handled, stderr ours."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED, huge_gif, huge_png, run_cli
from services import BrokenCamera, free_port
from test_daemon import broker, daemons  # noqa: F401 (fixtures)
from test_secure_broker import make_certificates

CLIP = SHARED / "media" / "asl-again.mkv"
SECRETS = ("t0psecret", "p/a#s?w", "hunter2", "envsecret")


@pytest.mark.parametrize(
    "config, env",
    [
        (
            {
                "cameras": [{"name": "a", "source": str(CLIP)}],
                "mqtt": {"host": "h", "pasword": "t0psecret"},
            },
            {},
        ),
        (
            {"cameras": [{"name": "a", "source": str(CLIP)}]},
            {"EDGE_MQTT__HOST": "h", "EDGE_MQTT__PASWORD": "envsecret"},
        ),
        ({"cameras": ["rtsp://admin:t0psecret@192.0.2.1/x"]}, {}),
        ({"cameras": [{"name": "a", "source": "ftp://admin:t0psecret@192.0.2.1/x"}]}, {}),
        ({"cameras": [{"name": "a", "sourse": "rtsp://admin:t0psecret@192.0.2.1/x"}]}, {}),
        ({"cameras": [{"name": "a", "source": "rtsp://admin:p/a#s?w@192.0.2.1/x", "fps": -1}]}, {}),
        (
            {
                "cameras": [
                    {
                        "name": "a",
                        "source": "rtsp://192.0.2.1/x?user=admin&password=hunter2",
                        "fps": 0,
                    }
                ]
            },
            {},
        ),
        (
            {"cameras": [{"name": "a", "source": str(CLIP)}]},
            {"EDGE_MQTT": '{"host": "h", "password": "envsecret", "bad"'},
        ),
        (
            {
                "cameras": [{"name": "a", "source": str(CLIP)}],
                "mqtt": {"host": "mqtt://edge:hunter2@127.0.0.1"},
            },
            {},
        ),
        ({"cameras": [{"name": "a", "source": "rtsp:/admin:t0psecret@127.0.0.1:1/x"}]}, {}),
        ({"cameras": [{"name": "a", "source": "admin:t0psecret@192.0.2.1/x"}]}, {}),
        (
            {
                "cameras": [{"name": "a", "source": str(CLIP)}],
                "mqtt": {"host": "h", "password:hunter2": None},
            },
            {},
        ),
        (
            {
                "cameras": [
                    {"name": "a", "source": str(CLIP), "metrics": {"host": "http://u:hunter2@h"}}
                ]
            },
            {},
        ),
        (
            {
                "cameras": [{"name": "a", "source": str(CLIP)}],
                "metrics": {"host": "http://u:hunter2@h"},
            },
            {},
        ),
    ],
    ids=[
        "misspelt-password",
        "misspelt-password-env",
        "camera-as-string",
        "refused-scheme",
        "misspelt-source",
        "password-with-slash-hash-query",
        "credentials-in-query",
        "section-variable-not-json",
        "broker-url-as-host",
        "scheme-with-one-slash",
        "url-without-scheme",
        "no-space-after-colon",
        "url-as-nested-unknown-key",
        "url-as-metrics-host",
    ],
)
def test_a_configuration_error_never_prints_a_secret(tmp_path, config, env):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("check-config", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "edge", command, "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
            timeout=60,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "invalid configuration" in output and "Traceback" not in output
        assert not any(secret in output for secret in SECRETS), output


@pytest.mark.parametrize(
    "text, line",
    [
        ("mqtt:\n  host: h\n  password: hunter2: x\n", "line 4, column 20"),
        ('mqtt:\n  host: h\n  password: "hunter2\n', "line 5, column 1"),
        ("mqtt:\n  host: h\n  password: *hunter2\n", "line 4, column 13"),
        ("mqtt:\n  host: h\n  password: !hunter2\n", "line 4, column 13"),
        ("mqtt:\n  host: h\n  password: |hunter2\n", "line 4, column 14"),
        ("mqtt:\n  host: h\n  username: u\n  password: &hunter2\n", "line 5, column 13"),
        ("mqtt:\n  host: h\n  password: !!int hunter2\n", "line 4, column 13"),
        ("mqtt:\n  host: h\n  password: !!bool hunter2\n", "line 4, column 13"),
        ("mqtt:\n  host: h\n  password: !!binary hunter2\n", "line 4, column 13"),
    ],
    ids=[
        "colon-in-password",
        "unclosed-quote",
        "alias",
        "tag",
        "block-scalar",
        "anchor",
        "int-tag",
        "bool-tag",
        "binary-tag",
    ],
)
def test_a_yaml_mistake_on_a_secret_line_names_the_place_not_the_text(tmp_path, text, line):
    path = tmp_path / "edge.yaml"
    path.write_text(f"cameras: [{{name: a, source: {CLIP}}}]\n" + text)
    first = one_line_exit_2(run_daemon(path))
    assert f"{path}: not valid YAML at {line}" in first
    assert "hunter2" not in run_daemon(path).stderr


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path):
    """YAML keeps the last of two `mqtt:` blocks: the first one's password would vanish."""
    path = tmp_path / "edge.yaml"
    path.write_text(
        f"cameras: [{{name: a, source: {CLIP}}}]\n"
        "mqtt: {host: h, password: hunter2}\nmqtt: {host: h}\n"
    )
    assert "line 3, column 1: key mqtt appears twice" in one_line_exit_2(run_daemon(path))


def test_check_config_masks_credentials_by_structure(tmp_path):
    path = tmp_path / "edge.yaml"
    sources = [
        "rtsp://admin:p/a#s?w@192.0.2.1:554/x",
        "rtsp://192.0.2.2/user=admin&password=hunter2&channel=1",
        "rtsp://192.0.2.3/live?user=admin&password=t0psecret",
        "rtsp://192.0.2.4/videoMain?usr=admin&pwd=hunter2",
        "http://192.0.2.5/videostream.cgi?loginuse=admin&loginpas=hunter2",
        "rtsp://192.0.2.6/live?user_password=hunter2&pw=t0psecret",
        "rtsp://192.0.2.7/live;credentials=hunter2",
        "rtsp://192.0.2.8/live?u=admin&p=t0psecret&subtype=0",
        "rtsp://admin:[hunter2]@192.0.2.9/x",  # a URL parser reads [...] as an IPv6 host
        "rtsp://admin:hunter2[@192.0.2.10/x",
    ]
    path.write_text(
        yaml.safe_dump({"cameras": [{"name": f"c{i}", "source": s} for i, s in enumerate(sources)]})
    )
    result = run_cli("edge", "check-config", "--config", path)
    assert result.returncode == 0, result.stderr
    assert not any(secret in result.stdout for secret in SECRETS), result.stdout
    assert "192.0.2.1:554" in result.stdout and "channel=1" in result.stdout
    assert "subtype=0" in result.stdout


CAMERA = {"name": "clip", "source": str(CLIP), "fps": 5, "loop": True}


def events_to_stdout(tmp_path) -> tuple[subprocess.Popen, object]:
    """A daemon printing a looping clip's events to stdout; (process, its log file)."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [CAMERA], "metrics": {"enabled": False}}))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    return proc, log


def test_sighup_restarts_in_place_with_the_configuration_reread(tmp_path):
    proc, log = events_to_stdout(tmp_path)
    try:
        assert '"event"' in proc.stdout.readline()  # running: its first event
        renamed = {**CAMERA, "name": "renamed"}
        (tmp_path / "edge.yaml").write_text(
            yaml.safe_dump({"cameras": [renamed], "metrics": {"enabled": False}})
        )
        proc.send_signal(signal.SIGHUP)
        for line in proc.stdout:  # events of the old camera, flushed, then the new one's
            if '"camera":"renamed"' in line:
                break
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert "SIGHUP: restarting with the configuration re-read" in text
    assert "Traceback" not in text


def signal_set(status: Path, field: str) -> int:
    """A signal set of a /proc status file (SigCgt: caught, SigBlk: blocked), as bits."""
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1], 16)


def catching(pid: int, signum: int, timeout: float = 30) -> None:
    """Until the process has a handler for ``signum`` (its /proc status says so): a signal sent
    before that tests the interpreter's start, not the daemon's."""
    deadline = time.monotonic() + timeout
    while True:
        if signal_set(Path(f"/proc/{pid}/status"), "SigCgt") >> (signum - 1) & 1:
            return
        assert time.monotonic() < deadline, f"no handler for signal {signum} in {timeout} s"
        time.sleep(0.01)


def test_reloads_while_starting_up_never_kill_the_daemon(tmp_path):
    """Two `systemctl reload`s a moment apart: the second arrives while the re-executed process
    is still loading; by default SIGHUP would end it, and systemd counts that a clean exit."""
    proc, log = events_to_stdout(tmp_path)
    try:
        catching(proc.pid, signal.SIGHUP)  # the first moment of start-up, before the model
        proc.send_signal(signal.SIGHUP)
        while "SIGHUP: restarting" not in log.read_text():  # a file: polled
            assert proc.poll() is None, log.read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGHUP)  # into the re-executed process's start-up
        assert '"event"' in proc.stdout.readline()  # running after all
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert "Traceback" not in log.read_text()


def reloading_slowly(broker, daemons):  # noqa: F811
    """A daemon in the middle of a reload: the configuration checked, the old run still
    flushing (the broker hangs, so the flush takes its 2.5 s)."""
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True, "fps": 5}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "tracking": {"heartbeat_s": 0.2},
        }
    )
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    broker.freeze()
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 1, timeout=20)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(lambda text: "reload: the configuration checks out" in text, timeout=10)
    return daemon


def test_a_stop_during_a_reload_stops_the_daemon(broker, daemons):  # noqa: F811
    """systemctl stop (or a host shutting down) right after a reload: the stop wins. It was
    taken for the reload's own and the process restarted, to be killed at the stop timeout
    with its queued events and without its "offline"."""
    daemon = reloading_slowly(broker, daemons)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert "SIGHUP: restarting" not in daemon.log()
    broker.thaw()


def test_a_configuration_saved_again_during_a_reload_waits_for_the_next_one(
    broker,  # noqa: F811
    daemons,  # noqa: F811
):
    """The restarted process runs with the configuration its reload checked: the file saved
    again meanwhile with a typo ended the service (exit 2, not restarted by systemd). The
    next reload checks the file as it is, and refuses it."""
    daemon = reloading_slowly(broker, daemons)
    daemon.config.write_text("cameras: [\n")  # saved again, broken, during the restart
    daemon.wait_log(lambda text: "SIGHUP: restarting" in text, timeout=10)
    broker.thaw()
    processed = 'edge_emotion_frames_processed_total{camera="clip"}'
    daemon.wait_metric(processed, lambda v: v >= 1, timeout=30)  # the restarted process
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(lambda text: "reload refused" in text, timeout=30)
    assert daemon.stop() == 0


def test_a_reload_refused_during_another_leaves_the_checked_configuration(
    broker,  # noqa: F811
    daemons,  # noqa: F811
    tmp_path,
):
    """A second SIGHUP during a reload's restart, into a file whose model start-up would
    refuse: refused, and the restart runs with what the first reload checked (the refused
    file's bytes were handed over, and the restarted process exited 2)."""
    daemon = reloading_slowly(broker, daemons)
    model = tmp_path / "bare.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + bytes(64))
    camera = {"name": "clip", "source": str(CLIP), "loop": True, "fps": 5}
    daemon.config.write_text(yaml.safe_dump({"cameras": [camera], "model": {"path": str(model)}}))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log(lambda text: "reload refused" in text, timeout=10)
    daemon.wait_log(lambda text: "SIGHUP: restarting" in text, timeout=10)
    broker.thaw()
    processed = 'edge_emotion_frames_processed_total{camera="clip"}'
    daemon.wait_metric(processed, lambda v: v >= 1, timeout=30)  # the restarted process
    assert daemon.stop() == 0


def test_after_a_reload_a_daemon_started_under_another_name_still_stops(tmp_path):
    """Started by a launcher of its own (``python -c``, a renamed script): after a reload the
    stop and reload signals stayed blocked, and systemd had to kill it at the stop timeout."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [CAMERA], "metrics": {"enabled": False}}))
    run = ["run", "--config", str(path)]
    launcher = f"import sys; from edge.__main__ import main; sys.exit(main({run!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=(tmp_path / "daemon.log").open("w"), text=True,
    )  # fmt: skip
    try:
        assert '"event"' in proc.stdout.readline()
        proc.send_signal(signal.SIGHUP)
        while "SIGHUP: restarting" not in (tmp_path / "daemon.log").read_text():  # polled
            assert proc.poll() is None
            time.sleep(0.05)
        for line in proc.stdout:  # the restarted process's events
            if '"event":"start"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def test_only_the_main_thread_takes_stop_and_reload_signals(daemons):  # noqa: F811
    """A stop taken by another thread ran its handler late: after the reload had decided to
    restart, and the stop was lost. Every other thread has them blocked."""
    daemon = daemons({"cameras": [CAMERA]})
    daemon.wait_metric('edge_emotion_frames_processed_total{camera="clip"}', lambda v: v >= 1, 30)
    wanted = (1 << (signal.SIGHUP - 1)) | (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    pid = daemon.proc.pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            blocked = signal_set(task / "status", "SigBlk")
        except FileNotFoundError:  # a thread that ended meanwhile (a connection's timer)
            continue
        assert (blocked & wanted == 0) == (int(task.name) == pid), (task.name, hex(blocked))
    assert daemon.stop() == 0


def test_a_descriptor_variable_that_is_not_a_reloads_is_ignored(tmp_path):
    """The variable that hands a reload's checked configuration to the restarted process,
    set by someone else to another descriptor (here standard input, holding another
    configuration): the daemon reads its file, and leaves the descriptor alone."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [CAMERA], "metrics": {"enabled": False}}))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"cameras": [{**CAMERA, "name": "injected"}]}))
    with other.open() as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(path)], cwd=ROOT, stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "_EDGE_EMOTION_CHECKED_CONFIG_FD": "0"},
        )  # fmt: skip
    try:
        first = json.loads(proc.stdout.readline() or "{}")
        assert first.get("camera") == "clip", proc.stderr.read() if proc.poll() else first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()


@pytest.mark.parametrize("broken", ["fps", "model", "port", "tls-key", "spool-file"])
def test_a_reload_into_a_broken_configuration_keeps_the_daemon_running(
    daemons,  # noqa: F811
    tmp_path,
    broken,
):
    """A typo saved before a reload stopped the daemon with exit code 2, which supervisors do
    not restart: every camera dark until someone looked. A model start-up would refuse (here:
    without its metadata), a metrics port another program holds, a TLS key that is not the
    certificate's, or an mqtt.spool_file naming a file that is no spool (here: the
    configuration), is refused by the reload just the same."""
    good = {"name": "clip", "source": str(CLIP), "loop": True, "fps": 5}
    daemon = daemons({"cameras": [good]})
    daemon.wait_metric('edge_emotion_frames_processed_total{camera="clip"}', lambda v: v >= 1, 30)
    camera = {"name": "clip", "source": "rtsp://admin:hunter2@192.0.2.1/x", "fps": -1}
    config = {"cameras": [camera]}
    if broken == "model":
        model = tmp_path / "bare.tflite"
        model.write_bytes(b"\0\0\0\0TFL3" + bytes(64))
        config = {"cameras": [{**camera, "fps": 5}], "model": {"path": str(model)}}
    taken = socket.create_server(("127.0.0.1", 0))  # another program's port
    port = taken.getsockname()[1]
    if broken == "port":
        config = {"cameras": [good], "metrics": {"port": port}}
    mqtt = {"host": "127.0.0.1", "port": free_port()}  # no broker: only start-up matters
    if broken == "tls-key":
        ca, cert, _ = make_certificates(tmp_path)
        tls = {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(tmp_path / "ca.key")}
        config = {"cameras": [good], "mqtt": {**mqtt, "tls": tls}}
    if broken == "spool-file":
        config = {"cameras": [good], "mqtt": {**mqtt, "spool_file": str(daemon.config)}}
    daemon.config.write_text(yaml.safe_dump(config))
    daemon.proc.send_signal(signal.SIGHUP)
    log = daemon.wait_log(lambda text: "reload refused" in text, timeout=30)
    before = daemon.metrics()['edge_emotion_frames_processed_total{camera="clip"}']
    daemon.wait_metric(  # still analysing, with the configuration it had
        'edge_emotion_frames_processed_total{camera="clip"}', lambda v: v > before, 30
    )
    assert daemon.stop() == 0
    taken.close()
    line = next(line for line in log.splitlines() if "reload refused" in line)
    assert "still running the previous configuration" in line
    expected = {
        "fps": "cameras.0.fps",
        "model": "model metadata not found",
        "port": f"metrics 127.0.0.1:{port}: cannot serve: Address already in use",
        "tls-key": f"mqtt.tls.cert_file {tmp_path / 's.crt'} / key_file {tmp_path / 'ca.key'}",
        "spool-file": f"mqtt.spool_file {daemon.config}: holds something else than undelivered",
    }[broken]
    assert expected in line
    assert daemon.log().count("reload refused") == 1, daemon.log()
    assert "hunter2" not in daemon.log()


def test_cameras_that_never_answer_do_not_hold_up_the_stop(daemons):  # noqa: F811
    """A reader inside an open that a camera never answers (open_timeout_s 30) ends only at
    its timeout: waited for 0.2 s each, one after the other, 40 such cameras added 8 s to the
    stop, and with a flush to the broker systemd killed the daemon at TimeoutStopSec=10."""
    hanging = BrokenCamera()
    slow = {"fps": 5, "open_timeout_s": 30, "read_timeout_s": 30}
    cameras = [{"name": f"hang{i}", "source": hanging.url(f"/cam{i}"), **slow} for i in range(40)]
    try:
        daemon = daemons({"cameras": cameras})
        hanging.wait_connections(len(cameras), timeout=60)  # every reader inside its open
        started = time.monotonic()
        assert daemon.stop(timeout=30) == 0, daemon.log()
        took = time.monotonic() - started
    finally:
        hanging.close()
    assert took < 5, f"the stop took {took:.1f} s"  # systemd's TimeoutStopSec is 10 s
    assert "stopped: events delivered 0" in daemon.log()


def test_a_link_planted_at_the_spools_temporary_file_is_not_followed(
    tmp_path,
    daemons,  # noqa: F811
):
    """The spool is written aside, as ``<spool_file>.partial``, then renamed over it: a link
    planted there had the daemon's stop write the events into the file it points at (any
    file the daemon's user may write), and the spool become that link."""
    spool = tmp_path / "spool.jsonl"
    partial = tmp_path / "spool.jsonl.partial"
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    partial.symlink_to(victim)
    daemon = daemons(
        {
            "device_id": "porch",
            "cameras": [CAMERA],
            "mqtt": {"host": "127.0.0.1", "port": free_port(), "spool_file": str(spool)},
        }
    )
    daemon.wait_metric("edge_emotion_events_queued", lambda v: v >= 1, timeout=30)
    assert daemon.stop() == 0, daemon.log()
    assert victim.read_text() == "someone else's file\n"
    assert spool.is_file() and not spool.is_symlink()
    assert not (partial.exists() or partial.is_symlink())
    assert spool.stat().st_mode & 0o777 == 0o600
    kept = int(re.search(r"with (\d+) undelivered events: kept in", daemon.log()).group(1))
    topics = [json.loads(line)["topic"] for line in spool.read_text().splitlines()]
    assert topics == ["edge-emotion/porch/clip/event"] * kept and kept >= 1


def test_ctrl_c_while_starting_up_is_one_line(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"name": "clip", "source": str(CLIP)}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(path)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    catching(proc.pid, signal.SIGHUP)  # start-up has begun: imports and the model to come
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert "Traceback" not in stderr
    assert proc.returncode in (0, 130), stderr


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """Also for the daemon printing events: it stops, as a pipeline's writer does."""
    looping = tmp_path / "edge.yaml"
    camera = {"name": "clip", "source": str(CLIP), "loop": True}
    looping.write_text(yaml.safe_dump({"cameras": [camera], "metrics": {"enabled": False}}))
    for args in (
        ("check-config", "--config", str(ROOT / "systemd" / "edge.example.yaml")),
        ("analyze", str(CLIP), "--json"),
        ("run", "--config", str(looping)),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        proc.stdout.read(1)
        proc.stdout.close()  # as `| head -c 1` does
        stderr = proc.stderr.read().decode()
        assert proc.wait(60) == 0, stderr
        assert "Broken pipe" not in stderr and "Traceback" not in stderr


def test_stderr_carries_only_our_own_lines():
    result = run_cli("edge", "analyze", CLIP, "--json")
    assert result.returncode == 0
    assert "XNNPACK" not in result.stderr and "INFO: Created" not in result.stderr


def test_a_missing_usb_camera_is_said_once_not_at_every_retry(daemons):  # noqa: F811
    """OpenCV printed its own two warnings at every reopen, for as long as the camera was
    missing: months of journal noise."""
    daemon = daemons(
        {
            "cameras": [
                {"name": "usb", "source": 7},  # no /dev/video7 here
                {"name": "null", "source": "/dev/null"},  # a character device, not a camera
                {"name": "clip", "source": str(CLIP), "loop": True, "fps": 10},
            ]
        }
    )
    # The reader retries after 0.5, 1 and 2 s: three retries within these 4 s of video.
    daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 120, 30)
    assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("camera usb: cannot open 7") == 1, log
    assert "/dev/video7 does not exist" in log, log  # why, where the file system can tell
    assert "cannot open /dev/null (/dev/null is not a video device)" in log, log
    assert "VIDEOIO" not in log and "WARN:" not in log, log


def test_a_camera_that_closes_after_each_frame_is_not_hammered(daemons, tmp_path):  # noqa: F811
    """An HTTP snapshot URL gives one frame per request and closes: it was reopened at once,
    hundreds of requests and log lines a second, for as long as the daemon ran."""
    import http.server
    import threading

    import cv2
    import numpy as np

    snapshot = cv2.imencode(".jpg", np.full((120, 160), 128, np.uint8))[1].tobytes()
    requests = []

    class Snapshot(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(snapshot)))
            self.end_headers()
            self.wfile.write(snapshot)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Snapshot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        daemon = daemons(
            {
                "cameras": [
                    {"name": "snap", "source": f"http://127.0.0.1:{server.server_port}/s.jpg"},
                    {"name": "clip", "source": str(CLIP), "loop": True, "fps": 10},
                ]
            }
        )
        daemon.wait_metric('edge_emotion_frames_read_total{camera="snap"}', lambda v: v >= 1, 30)
        first = requests[0]
        daemon.wait_metric('edge_emotion_frames_read_total{camera="clip"}', lambda v: v > 240, 60)
        assert daemon.stop() == 0
    finally:
        server.shutdown()
    seconds = time.monotonic() - first
    # Reopened after 0.5, 1, 2, 4, then every 5 s: a handful, however long the run.
    assert len(requests) <= 4 + seconds / 4, (len(requests), seconds)
    log = daemon.log()
    assert log.count("camera snap: stream stopped delivering frames") == 1, log


def test_a_sound_file_as_a_camera_is_named_as_having_no_video(daemons, tmp_path):  # noqa: F811
    """It said "no video (tuple index out of range)": Python's words, not the user's problem."""
    import wave

    sound = tmp_path / "doorbell.wav"
    with wave.open(str(sound), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)
    daemon = daemons({"cameras": [{"name": "bell", "source": str(sound)}]})
    assert daemon.proc.wait(timeout=30) == 0  # its only source ended: nothing to retry
    log = daemon.log()
    assert "camera bell: cannot open" in log and "it has no video stream" in log, log
    assert "tuple index" not in log


@pytest.mark.parametrize("name", ["huge.png", "huge", "huge.jfif", "huge.gif", "png-named.gif"])
def test_analyze_skips_an_image_too_large_to_decode_and_goes_on(tmp_path, name):
    """Also a photo whose name does not say it is one: known by its content, not handed to
    FFmpeg as a one-frame video (which decoded all 400 megapixels), also under a GIF's name;
    and a GIF, which FFmpeg reads (animated), by the canvas its header claims."""
    huge = tmp_path / name
    (huge_gif if name == "huge.gif" else huge_png)(huge, 20000, 20000)
    result = run_cli("edge", "analyze", huge, CLIP, "--json")
    assert result.returncode == 1  # one file failed
    assert f"{name}: larger than 50 megapixels, skipped" in result.stderr
    assert "Traceback" not in result.stderr
    assert '"source": "' + str(CLIP) in result.stdout  # the next file was still analysed


def test_two_daemons_with_one_device_id_are_told_apart_and_named(broker, daemons):  # noqa: F811
    config = {
        "device_id": "cloned",
        "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 2}],
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
    }
    first, second = daemons(config), daemons(config)
    twin = "uses device_id 'cloned' and MQTT client id 'edge-emotion-cloned'"
    deadline = time.monotonic() + 60
    while not any(twin in d.log() for d in (first, second)):
        assert time.monotonic() < deadline, first.log() + second.log()
        time.sleep(0.5)  # the daemons' logs are files: polled
    log = first.log() + second.log()
    assert "Give every device its own device_id" in log and "Traceback" not in log


def test_a_broker_that_restores_a_killed_predecessors_instance_raises_no_twin_alarm(
    broker,  # noqa: F811
    daemons,  # noqa: F811
):
    """After a kill -9 and a restart, a broker crash can bring back the old process's retained
    instance at two connects in a row: that is this machine's past, not a second device."""
    import socket
    from pathlib import Path

    import paho.mqtt.publish as publish

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    stale = f"{socket.gethostname()} pid {int(gone.stdout)} boot {boot} 0ld1nst4"
    topic = "edge-emotion/cloned/instance"

    def restore_stale() -> None:
        publish.single(topic, stale, qos=1, retain=True, hostname="127.0.0.1", port=broker.port)

    restore_stale()
    daemon = daemons(
        {
            "device_id": "cloned",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 2}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
        }
    )
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=30)
    for _ in range(2):  # two more connects, each finding the stale instance
        restore_stale()
        broker.stop()
        daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 0, timeout=20)
        broker.start()
        daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=20)
    assert daemon.stop() == 0
    assert "another daemon" not in daemon.log(), daemon.log()


def test_a_host_name_that_is_not_a_valid_device_id_gives_a_valid_default(tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"name": "a", "source": str(CLIP)}]}))
    result = subprocess.run(
        [
            "unshare",
            "--map-root-user",  # works unprivileged where user namespaces are allowed
            "--uts",
            "sh",
            "-c",
            f"hostname pi.local && {sys.executable} -m edge check-config --config {config}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.fail(f"cannot set a host name here: {result.stderr}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["device_id"] == "pi-local"


def run_daemon(config_path, env: dict | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def one_line_exit_2(result) -> str:
    """A start-up failure as systemd should see it: one line, exit code 2 (not restarted)."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("\ufeffcameras: []".encode("utf-16"), "not UTF-8 text"),
        (b"\x00\x01\x02binary\x00", "a binary file"),
        (None, "is a directory"),
    ],
    ids=["utf-16", "binary", "directory"],
)
def test_a_configuration_file_that_is_not_yaml_text_is_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "edge.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert expected in one_line_exit_2(run_daemon(path))


@pytest.mark.parametrize(
    "change, env, expected",
    [
        ({}, {"EDGE_CAMERAS": '[{"name": "a", '}, "EDGE_CAMERAS is not valid JSON"),
        ({"metrics": {"host": "no-such-host.invalid"}}, {}, "cannot serve"),
        ({"mqtt": {"host": "h", "topic_prefix": "$SYS/edge"}}, {}, "mqtt.topic_prefix"),
        ({"mqtt": {"host": "h", "client_id": ""}}, {}, "mqtt.client_id"),
        ({"tracking": {"lost_after_s": float("inf")}}, {}, "tracking.lost_after_s"),
        ({}, {"EDGE_MQTT_HOST": "broker"}, "EDGE_MQTT_HOST is not a setting"),
        ({}, {"EDGE_MQTT__PORT": "abc"}, "(got 'abc') (from EDGE_MQTT__PORT)"),
        ({}, {"EDGE_CAMERAS__0__FPS": "fast"}, "(got 'fast') (from EDGE_CAMERAS__0__FPS)"),
        ({"mqtt": {"host": "127.0.0.1", "tls": {"ca_file": str(CLIP)}}}, {}, "mqtt.tls.ca_file"),
        ({"mqtt": {"host": "127.0.0.1", "tls": {"cert_file": str(CLIP)}}}, {}, "mqtt.tls.cert"),
        ({"mqtt": {"host": "h", "tls": {"key_file": str(CLIP)}}}, {}, "give cert_file too"),
        ({"device_id": "x" * 65}, {}, "device_id"),
        ({"workers": -1, "tracking": {"smoothing": 5}}, {}, "(got 5); workers: Input"),
        (
            {"mqtt": {"host": "h", "spool_file": f"{CLIP}/x.jsonl"}},
            {},
            f"mqtt.spool_file {CLIP}/x.jsonl: cannot be written (a file is where an output "
            f"folder must go: {CLIP})",
        ),
        ({"mqtt": {"host": "h", "client_id": "a\x00b"}}, {}, "mqtt.client_id: holds U+0000"),
        ({"mqtt": {"host": "h", "username": "u\tv"}}, {}, "mqtt.username: holds U+0009"),
        ({"mqtt": {"host": "h", "topic_prefix": "ab\x80c"}}, {}, "mqtt.topic_prefix: holds U+0080"),
        ({}, {"EDGE_FOO\nBAR": "1"}, "EDGE_FOO\\nBAR is not a setting"),
        ({"mqtt": {"host": "h", "password": 12345}}, {}, "YAML read a number: quote it"),
        (
            {"CAMERAS": [{"name": "b", "source": str(CLIP)}]},
            {"EDGE_CAMERAS__1__FPS": "x"},
            "cameras.1.fps",
        ),
    ],
    ids=[
        "env-json",
        "metrics-host",
        "topic-prefix-dollar",
        "empty-client-id",
        "infinite",
        "variable-naming-no-setting",
        "variable-of-wrong-type",
        "camera-variable-of-wrong-type",
        "ca-file-not-certificates",
        "cert-file-not-a-certificate",
        "key-without-certificate",
        "device-id-too-long",
        "two-problems-on-one-line",
        "spool-under-a-file",
        "client-id-nul",  # the broker refused every connection: "closed the connection"
        "username-tab",
        "topic-prefix-c1-control",
        "variable-name-with-a-line-break",  # two lines, the second forged
        "numeric-password",
        "upper-case-cameras-with-camera-variables",  # the variables found no "CAMERAS:"
    ],
)
def test_start_up_failures_are_one_line_and_exit_2(tmp_path, change, env, expected):
    path = tmp_path / "edge.yaml"
    cameras = {} if "CAMERAS" in change else {"cameras": [{"name": "a", "source": str(CLIP)}]}
    path.write_text(yaml.safe_dump({**cameras, **change}))
    output = run_daemon(path, env).stderr
    assert expected in output, output
    one_line_exit_2(run_daemon(path, env))


def test_a_text_given_where_a_section_goes_is_not_quoted(tmp_path):
    """EDGE_MQTT__TLS=hunter2 (meant for the key below it) was quoted in the error."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"name": "a", "source": str(CLIP)}]}))
    line = one_line_exit_2(run_daemon(path, {"EDGE_MQTT__TLS": "hunter2"}))
    assert "mqtt.tls: Input should be a valid dictionary" in line and "hunter2" not in line


@pytest.mark.parametrize("key", ["1", "null", "2020-01-01"])
def test_a_top_level_key_that_is_not_a_name_is_one_line(tmp_path, key):
    """YAML reads `1:`, `null:` and dates as numbers, null and dates: a TypeError traceback
    (exit 1, restarted by systemd for ever)."""
    path = tmp_path / "edge.yaml"
    path.write_text(f"cameras: [{{name: a, source: {CLIP}}}]\n{key}: x\n")
    assert "a top-level key is" in one_line_exit_2(run_daemon(path))


def test_a_named_pipe_as_the_configuration_is_refused_not_waited_on(tmp_path):
    """No program writes to it: the open waited for ever, with the stop signals blocked
    (edge run), so SIGTERM did not end it either."""
    fifo = tmp_path / "edge.yaml"
    os.mkfifo(fifo)
    line = one_line_exit_2(run_daemon(fifo, timeout=30))
    assert line.endswith(f"{fifo}: a pipe with nothing to read (no program writes to it)")


@pytest.mark.parametrize("target", ["configuration", "model", "pipe"])
def test_a_spool_file_that_names_another_file_is_refused_and_the_file_kept(tmp_path, target):
    """The spool is replaced whole and removed once delivered: naming the configuration (or
    the model, a TLS key) by a typo destroyed it at the first start, and the next start
    failed; a pipe blocked the start."""
    model = tmp_path / "m.tflite"
    shutil.copyfile(ROOT / "models" / "emotion.tflite", model)
    model.with_suffix(".json").write_bytes((ROOT / "models" / "emotion.json").read_bytes())
    path = tmp_path / "edge.yaml"
    spool = {"configuration": path, "model": model, "pipe": tmp_path / "pipe"}[target]
    if target == "pipe":
        os.mkfifo(spool)
    config = {
        "cameras": [{"name": "a", "source": str(CLIP)}],
        "model": {"path": str(model)},
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "spool_file": str(spool)},
    }
    path.write_text(yaml.safe_dump(config))
    before = {p: p.read_bytes() for p in (path, model)}
    line = one_line_exit_2(run_daemon(path, timeout=30))
    assert f"mqtt.spool_file {spool}: " in line and "give a file of its own" in line, line
    assert {p: p.read_bytes() for p in (path, model)} == before


def test_events_that_standard_output_refuses_are_counted_and_the_daemon_stops_cleanly(tmp_path):
    """`edge run > events.jsonl` on a full disk: each event failed with a traceback, counted
    nowhere, and the stop ended in another (exit 1, no "stopped" line)."""
    path = tmp_path / "edge.yaml"
    port = free_port()
    config = {"cameras": [{"name": "a", "source": str(CLIP), "loop": True}]}
    path.write_text(yaml.safe_dump(config | {"metrics": {"port": port}}))
    with open("/dev/full", "w") as full:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(path)], cwd=ROOT,
            stdout=full, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and scraped(port, "events_dropped_total") < 1:
            time.sleep(0.2)
        assert scraped(port, "events_dropped_total") >= 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0 and "Traceback" not in stderr, stderr
    assert stderr.count("events cannot be written to standard output (No space left") == 1
    assert "stopped: events delivered 0, undelivered 0, dropped" in stderr


def scraped(port: int, name: str) -> float:
    """A metric's value from the daemon's /metrics (0 before it serves)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as got:
            text = got.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if f"_{name} " in line and not line.startswith("#")
    )


@pytest.mark.parametrize("server", ["metrics", "view"])
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path, server):
    """Also the live view's, bound after the metrics: nothing is said before the error."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        path = tmp_path / "edge.yaml"
        config = {"cameras": [{"name": "a", "source": str(CLIP)}], server: {"port": port}}
        if server == "view":
            config |= {"view": {"enabled": True, "port": port}, "metrics": {"port": 0}}
        path.write_text(yaml.safe_dump(config))
        line = one_line_exit_2(run_daemon(path))
    assert f"{server} 127.0.0.1:{port}: cannot serve" in line


@pytest.mark.parametrize(
    "change",
    [
        {"pixel_scale": "1"},
        {"input_height": True},
        {"labels": []},
        {"labels": ["a"] * 7},
        {"input_quant": [1]},
        None,
        {"pixel_scale": float("nan")},
        {"pixel_offset": float("inf")},
        {"pixel_scale": 0},
    ],
    ids=[
        *("string-scale", "bool-size", "no-labels", "same-label", "half-quant", "not-an-object"),
        *("nan-scale", "infinite-offset", "zero-scale"),
    ],
)
def test_model_metadata_of_the_wrong_type_stops_start_up(tmp_path, change):
    model = tmp_path / "model.tflite"
    model.write_bytes((ROOT / "models" / "emotion.tflite").read_bytes())
    meta = json.loads((ROOT / "models" / "emotion.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps([meta] if change is None else meta | change))
    path = tmp_path / "edge.yaml"
    config = {"cameras": [{"name": "a", "source": str(CLIP)}], "model": {"path": str(model)}}
    path.write_text(yaml.safe_dump(config))
    assert "model.json" in one_line_exit_2(run_daemon(path))


def test_a_video_file_without_a_decodable_frame_ends_like_any_file(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(50_000))
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"name": "g", "source": str(garbage)}]}))
    result = run_daemon(path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "the file is not read again" in result.stderr and "every source has ended" in (
        result.stderr
    )


@pytest.mark.parametrize(
    "args", [("run", "--bogus"), (), ("analyze",), ("check-config", "--config")], ids=str
)
def test_a_usage_error_is_one_line_and_exit_2(args):
    result = run_cli("edge", *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "error:" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "rtsp://admin:hunter2@192.0.2.1/x"],
        ["analyze", "rtsp://admin:hunter2@192.0.2.1/x"],
        ["analyze", "--model", "rtsp://admin:hunter2@192.0.2.1/m.tflite", str(CLIP)],
        ["check-config", "--config", "rtsp://admin:hunter2@192.0.2.1/edge.yaml"],
        ["evaluate", "--model", "rtsp://admin:hunter2@192.0.2.1/m.tflite", "--data", str(CLIP)],
    ],
    ids=["run-argument", "analyze-path", "model-path", "config-path", "convert-model-path"],
)
def test_a_camera_url_typed_on_the_command_line_is_refused_without_its_password(args):
    """A user tries the camera's URL where a file goes: the error says so, and the terminal
    (or the shell's log, or a screenshot in a bug report) does not show the password."""
    result = run_cli("convert" if args[0] == "evaluate" else "edge", *args)
    assert result.returncode != 0
    assert "hunter2" not in result.stdout + result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "192.0.2.1" in result.stderr
    if args[0] == "analyze" and args[1] != "--model":
        assert "a stream URL; analyze reads image and video files" in result.stderr


def test_a_yaml_file_that_expands_or_nests_without_end_is_one_line(tmp_path):
    """A few KiB of YAML can be thousands of aliases to one mapping, or nesting deeper than
    Python's stack: one line, exit 2, at once; not a traceback, nor a line of megabytes."""
    path = tmp_path / "edge.yaml"
    unknown = ", ".join(f"k{i}: 1" for i in range(50))
    path.write_text(f"base: &b {{{unknown}}}\ncameras: [" + ", ".join(["*b"] * 2000) + "]\n")
    assert "more than 100 aliases" in one_line_exit_2(run_daemon(path))
    path.write_text("cameras: " + "[" * 3000 + "]" * 3000 + "\n")
    assert "nested too deeply" in one_line_exit_2(run_daemon(path))
    (tmp_path / "ok.yaml").write_text(f"cameras: [{{name: a, source: {CLIP}}}]\n")
    deep = {"EDGE_CAMERAS": "[" * 5000 + "]" * 5000}
    assert "nested too deeply" in one_line_exit_2(run_daemon(tmp_path / "ok.yaml", deep))


def test_many_problems_are_one_readable_line(tmp_path):
    """Aliases within the limit can still repeat a mistake many times: the line lists the
    first problems and counts the rest."""
    path = tmp_path / "edge.yaml"
    unknown = ", ".join(f"k{i}: 1" for i in range(40))
    path.write_text(
        f"c: &c {{name: a, source: {CLIP}, {unknown}}}\ncameras: [" + ", ".join(["*c"] * 50) + "]"
    )
    line = one_line_exit_2(run_daemon(path))
    assert line.count("unknown key") == 20 and "more problems" in line and len(line) < 2000


@pytest.mark.parametrize(
    "args",
    [
        ["edge", "check-config", "--config", ""],
        ["edge", "analyze", ""],
        ["convert", "evaluate", "--model", "", "--data", str(SHARED / "fer2013" / "val")],
    ],
)
def test_an_empty_path_is_named_not_read_as_the_current_folder(args):
    """`--config "$EDGE_CONFIG"` with the variable unset: the error says the path is empty
    (it said '.: is a directory')."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert "an empty path (is a variable unset?)" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_stop_while_starting_as_a_containers_first_process_is_obeyed(tmp_path):
    """In a container the daemon is PID 1, to which the kernel delivers no signal that has no
    handler: a `docker stop` sent while it started was ignored, and Docker killed it 10 s
    later. Run here as PID 1 of a new PID namespace, as Docker runs it."""
    import shutil

    unshare = shutil.which("unshare")  # util-linux, in every Debian
    assert unshare is not None, "unshare (util-linux) is not installed"
    probe = subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:  # not counted as passed: said in pytest's summary
        pytest.skip(f"no PID namespace for this user: {probe.stderr.decode().strip()}")
    path = tmp_path / "edge.yaml"
    camera = {"name": "clip", "source": str(CLIP), "loop": True}
    path.write_text(yaml.safe_dump({"cameras": [camera], "metrics": {"enabled": False}}))
    command = [sys.executable, "-m", "edge", "run", "--config", str(path)]
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child = _child_of(proc.pid)  # the daemon, PID 1 inside
        catching(child, signal.SIGHUP)  # its start-up has begun (SIGTERM's handler is first)
        os.kill(child, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=8)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def _child_of(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} started no child")
