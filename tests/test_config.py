"""Configuration: one typed tree from YAML + EDGE_ variables; typos stop start-up with the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, SHARED, run_cli

CLIP = SHARED / "media" / "asl-again.mkv"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path, monkeypatch):
    config = write(
        tmp_path,
        """
device_id: porch-pi
cameras:
  - name: door
    source: rtsp://user:s3cret@192.0.2.10:554/stream1
mqtt: {host: localhost, username: edge, password: hunter2}
""",
    )
    monkeypatch.setenv("EDGE_MQTT__PORT", "8883")
    monkeypatch.setenv("EDGE_DETECTOR__MIN_SIZE", "60")
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["mqtt"]["port"] == 8883  # environment overrides the file
    assert effective["detector"]["min_size"] == 60
    assert effective["cameras"][0]["source"] == "rtsp://***:***@192.0.2.10:554/stream1"
    assert effective["cameras"][0]["fps"] == 10
    assert "s3cret" not in result.stdout and "hunter2" not in result.stdout
    assert effective["metrics"] == {"enabled": True, "host": "127.0.0.1", "port": 9108}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"cameras: [{{name: a, source: {CLIP}, fsp: 3}}]", "cameras.0.fsp: unknown key"),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, qos: 3}}",
            "mqtt.qos: expected 0 (at most once) or 1 (at least once) (got 3)",
        ),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, qos: 2}}",
            "mqtt.qos: 2 is not supported (after a broker restart",
        ),
        (f"cameras: [{{name: a, source: {CLIP}, fps: -1}}]", "cameras.0.fps: Input should be"),
        (f"cameras: [{{name: a/b, source: {CLIP}}}]", "cameras.0.name: String should match"),
        ("cameras: [{name: a, source: /no/such.mp4}]", "no such video file (nor a stream URL"),
        ("cameras: [{name: a, source: 'ftp://x/y'}]", "unsupported stream scheme 'ftp'"),
        ("cameras: []", "cameras: List should have at least 1 item"),
        (f"cameras: [{{name: a, source: {CLIP}}}, {{name: a, source: 0}}]", "unique"),
        (
            "cameras: [{name: Door-1, source: 0}, {name: door_1, source: 1}]",
            "'Door-1' and 'door_1'",
        ),
        ("cameras: [{name: a, source: true}]", "cameras.0.source: expected"),
        ("cameras: [{name: a, source: 4294967296}]", "index must be 0 to 999"),
        (f"cameras: [{{name: a, source: {CLIP}}}]\nmodel: {{path: /no/m.tflite}}", "model.path"),
        (f"cameras: [{{name: a, source: {CLIP}}}]\nmodel: {{path: {CLIP}}}", "not a TFLite model"),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nview: {{enabled: true, port: 9108}}",
            "metrics.port and view.port are both 9108",
        ),
        ("cameras: [oops", "not valid YAML"),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nmetrics: {{host: nosuch.invalid}}",
            "metrics nosuch.invalid:9108: cannot serve",
        ),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, qos: off}}",
            "mqtt.qos: takes a number (YAML reads yes, no, on and off as booleans) (got False)",
        ),
        (f"cameras: [{{name: a, source: {CLIP}, fps: yes}}]", "cameras.0.fps: takes a number"),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nworkers: on",
            "configuration: workers: takes a number",
        ),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\ndetector: {{min_size: 99999999999}}",
            "detector.min_size",
        ),
        ("cameras: [{name: a, source: 'rtsp://'}]", "a rtsp URL needs a host"),
        ("cameras: [{name: a, source: ' rtsp://h/x'}]", "starts or ends with white space"),
        (
            "cameras: [{name: a, source: 'rtsp://u:s3:cret@cam:99999/live'}]",
            "cameras.0.source: the port of a rtsp URL must be 1 to 65535",
        ),
        (
            'cameras: [{name: a, source: "rtsp://cam/x\\nINFO forged"}]',
            "cameras.0.source: holds a control character",
        ),
        ('cameras: [{name: a, source: "\u0663"}]', "cameras.0.source: no such video file"),
        (f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: a..b}}", "mqtt.host: not a valid"),
        (f"cameras: [{{name: a, source: {CLIP}}}]\nmetrics: {{host: a..b}}", "metrics.host"),
        (f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: '[::1'}}", "mqtt.host: expected"),
        (
            f'cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, topic_prefix: "e\\0x"}}',
            "mqtt.topic_prefix: String should match",
        ),
        (
            f"MQTT: {{host: h, password: s3cret}}\ncameras: [{{name: a, source: {CLIP}}}]\n"
            "mqtt: {host: h}",
            "MQTT and mqtt are the same section",
        ),
        (
            f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, spool_file: {CLIP}}}",
            f"mqtt.spool_file {CLIP}: holds something else than undelivered events",
        ),
    ],
    ids=[
        "typo",
        "qos",
        "qos-2",
        "fps",
        "name",
        "file",
        "scheme",
        "empty",
        "duplicate",
        "same-entity-id",
        "boolean-source",
        "huge-index",
        "model",
        "model-not-tflite",
        "same-port",
        "yaml",
        "metrics-host-unresolvable",
        "qos-off",
        "fps-yes",
        "workers-on",
        "huge-min-size",
        "url-without-host",
        "source-with-space",
        "port-out-of-range",
        "line-break-in-source",
        "arabic-indic-digit",
        "empty-host-label",
        "empty-metrics-host-label",
        "unbalanced-bracket",
        "nul-in-topic",
        "section-twice-in-other-case",
        "spool-file-not-a-spool",  # start-up refuses it: check-config too
    ],
)
def test_bad_configuration_exits_2_naming_the_key(tmp_path, text, expected):
    result = run_cli("edge", "check-config", "--config", write(tmp_path, text))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "cret" not in result.stderr


def test_missing_config_file_is_named(tmp_path):
    result = run_cli("edge", "run", "--config", tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml: configuration file not found" in result.stderr


def test_an_endless_or_huge_file_given_as_configuration_is_refused_at_once():
    """``--config /dev/zero`` read until the memory was full; a video named by mistake too."""
    result = run_cli("edge", "run", "--config", "/dev/zero", timeout=60)
    assert result.returncode == 2
    expected = "edge run: error: /dev/zero: larger than 1 MiB, not a configuration file\n"
    assert result.stderr == expected


def test_a_configuration_from_a_pipe_is_read():
    """``--config <(render-config)``: a pipe, not a file, read to its end."""
    import subprocess
    import sys

    example = (ROOT / "systemd" / "edge.example.yaml").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", "--config", "/dev/stdin"],
        input=example, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [c["name"] for c in json.loads(result.stdout)["cameras"]] == ["door", "hall"]


def test_the_shipped_example_configuration_is_valid():
    result = run_cli("edge", "check-config", "--config", ROOT / "systemd" / "edge.example.yaml")
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert [c["name"] for c in effective["cameras"]] == ["door", "hall"]
    assert effective["cameras"][0]["source"].startswith("rtsp://***:***@")


def test_an_error_names_the_environment_when_the_value_came_from_it(tmp_path, monkeypatch):
    """A systemd unit's Environment= line, not the YAML file, is where the operator must look."""
    config = write(tmp_path, f"cameras: [{{name: a, source: {CLIP}}}]\n")
    monkeypatch.setenv("EDGE_DETECTOR__MIN_SIZE", "tiny")
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 2
    assert result.stderr.startswith("edge check-config: error: environment: invalid configuration")
    assert (
        "detector.min_size" in result.stderr and "(from EDGE_DETECTOR__MIN_SIZE)" in result.stderr
    )

    write(tmp_path, f"cameras: [{{name: a, source: {CLIP}, fps: -1}}]\n")
    result = run_cli("edge", "check-config", "--config", config)
    assert f"{config} and environment: invalid configuration" in result.stderr


def test_a_file_error_is_not_blamed_on_a_variable_that_sets_other_keys(tmp_path, monkeypatch):
    """``EDGE_MQTT`` (JSON) holding the credentials is merged into the file's ``mqtt``: a bad
    port from the file is the file's, and a bad port from the variable the variable's."""
    config = write(
        tmp_path, f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: h, port: abc}}\n"
    )
    monkeypatch.setenv("EDGE_MQTT", '{"username": "edge"}')
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 2
    assert result.stderr.startswith(f"edge check-config: error: {config}: invalid configuration")
    assert "(got 'abc')" in result.stderr and "EDGE_MQTT" not in result.stderr

    monkeypatch.setenv("EDGE_MQTT", '{"Port": "x"}')
    result = run_cli("edge", "check-config", "--config", config)
    assert "mqtt.port" in result.stderr and "(got 'x') (from EDGE_MQTT)" in result.stderr


def test_a_bracketed_ipv6_broker_address_is_used_as_an_address(tmp_path):
    """``[::1]`` is how URLs write it; a socket given the brackets never connects."""
    config = write(tmp_path, f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {{host: '[::1]'}}\n")
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mqtt"]["host"] == "::1"


def test_an_upper_case_stream_scheme_is_what_ffmpeg_can_open(tmp_path):
    """FFmpeg answered ``RTSP://`` with "Protocol not found", at every retry, forever."""
    config = write(tmp_path, "cameras: [{name: a, source: 'RTSP://192.0.2.1/live'}]\n")
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cameras"][0]["source"] == "rtsp://192.0.2.1/live"


def test_one_camera_setting_comes_from_the_environment_by_index(tmp_path, monkeypatch):
    """A camera password kept out of the file (the unit's EnvironmentFile, a container's
    environment): EDGE_CAMERAS__0__SOURCE sets camera 0's source and keeps its other keys; the
    next index adds a camera."""
    config = write(tmp_path, "cameras: [{name: door, source: 'rtsp://192.0.2.10/live', fps: 3}]\n")
    monkeypatch.setenv("EDGE_CAMERAS__0__SOURCE", "rtsp://admin:s3cret@192.0.2.10/live")
    monkeypatch.setenv("EDGE_CAMERAS__1__NAME", "hall")
    monkeypatch.setenv("EDGE_CAMERAS__1__SOURCE", str(CLIP))
    monkeypatch.setenv("EDGE_CAMERAS__1__FPS", "2")
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 0, result.stderr
    door, hall = json.loads(result.stdout)["cameras"]
    assert door["source"] == "rtsp://***:***@192.0.2.10/live" and door["fps"] == 3
    assert (hall["name"], hall["source"], hall["fps"]) == ("hall", str(CLIP), 2)
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"EDGE_CAMERAS__2__SOURCE": "rtsp://u:s3cret@h/x"},
            "environment: EDGE_CAMERAS__2__SOURCE: there is no camera 2 to set "
            "(camera 0 exists; a new one takes the next index, 1)",
        ),
        (
            {"EDGE_CAMERAS__1__SOURCE": "rtsp://u:s3cret@h/x"},
            "environment: invalid configuration: cameras.1.name: Field required "
            "(from EDGE_CAMERAS__1__SOURCE)",
        ),
        (
            {"EDGE_CAMERAS__0__PASWORD": "s3cret"},
            "environment: invalid configuration: cameras.0.pasword: unknown key "
            "(from EDGE_CAMERAS__0__PASWORD)",
        ),
        (
            {"EDGE_CAMERAS__0__FPS": "5", "EDGE_CAMERAS": '[{"name": "a", "source": "0"}]'},
            "environment: EDGE_CAMERAS__0__FPS and EDGE_CAMERAS both set the cameras: "
            "use one or the other",
        ),
        *(
            (
                {name: "rtsp://u:s3cret@h/x"},
                f"environment: {name} is not a camera setting (EDGE_CAMERAS__<index>__<key>, "
                "the index from 0: EDGE_CAMERAS__0__SOURCE)",
            )
            for name in ("EDGE_CAMERAS__O__SOURCE", "EDGE_CAMERAS__SOURCE", "EDGE_CAMERAS__0")
        ),
        (
            {"EDGE_WORKERS__X": "1"},
            "environment: EDGE_WORKERS__X is not a setting: workers is a value, not a section "
            "(EDGE_WORKERS=…)",
        ),
    ],
)
def test_a_wrong_camera_variable_is_named(tmp_path, monkeypatch, variables, expected):
    config = write(tmp_path, f"cameras: [{{name: door, source: {CLIP}}}]\n")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = run_cli("edge", "check-config", "--config", config)
    assert result.returncode == 2
    assert result.stderr == f"edge check-config: error: {expected}\n"


@pytest.mark.parametrize(
    ("mqtt", "env"),
    [
        ("{host: h, password: s3cret}", {}),
        ("{host: h, username: '', password: s3cret}", {}),
        ("{host: h}", {"EDGE_MQTT__PASSWORD": "s3cret"}),
    ],
    ids=["no-username", "empty-username", "password-from-environment"],
)
def test_a_password_without_a_username_is_refused(tmp_path, monkeypatch, mqtt, env):
    """The client sends credentials only with a user name: a password alone was accepted and
    silently never sent, so the broker's refusal looked like a wrong password."""
    config = write(tmp_path, f"cameras: [{{name: a, source: {CLIP}}}]\nmqtt: {mqtt}\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in ("check-config", "run"):
        result = run_cli("edge", command, "--config", config, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "mqtt.password: given without mqtt.username" in lines[0], lines
        assert "s3cret" not in result.stdout + result.stderr
        if env:
            assert lines[0].endswith("(from EDGE_MQTT__PASSWORD)"), lines


def test_a_spool_file_in_a_folder_the_user_cannot_enter_is_named(tmp_path):
    """check-config ended in a PermissionError traceback (root here: its file-permission
    override is dropped, as for the daemon's own user)."""
    import os
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    config = write(
        tmp_path,
        f"cameras: [{{name: a, source: {CLIP}}}]\n"
        f"mqtt: {{host: h, spool_file: {locked / 'spool.jsonl'}}}\n",
    )
    locked.chmod(0)
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] * (os.geteuid() == 0)
    try:
        result = subprocess.run(
            [*as_user, sys.executable, "-m", "edge", "check-config", "--config", str(config)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"edge check-config: error: mqtt.spool_file {locked / 'spool.jsonl'}: cannot be "
        "reached (Permission denied); give a file of its own that can be written (or set "
        "mqtt.spool: false)\n"
    )
