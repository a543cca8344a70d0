"""Shared fixtures: the read-only data beside the checkout, and the CLI as users run it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FER = SHARED / "fer2013"
SAMPLE_CSV = FER / "fer2013-sample.csv"
MNV2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"


def missing_prerequisites() -> list[str]:
    """Everything the tests need that this machine lacks, each with what provides it."""
    missing = []
    if not SAMPLE_CSV.is_file():
        missing.append(f"test data {SAMPLE_CSV} (../shared beside the checkout)")
    for tool, package in (
        ("mosquitto", "mosquitto"),
        ("mosquitto_passwd", "mosquitto"),
        ("openssl", "openssl"),
        ("systemd-analyze", "systemd"),
        ("gst-launch-1.0", "gstreamer1.0-tools"),
        ("chromium", "chromium"),
    ):
        if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"):
            missing.append(f"{tool} (Debian package {package})")
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst"
    system_python = Path("/usr/bin/python3")
    if (
        not system_python.is_file()
        or subprocess.run([system_python, "-c", probe], capture_output=True).returncode
    ):
        missing.append(
            "GStreamer's RTSP server for /usr/bin/python3 (python3-gi, "
            "gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-*)"
        )
    for module, extra in (("keras", "convert"), ("tf_keras", "convert"), ("skimage", "test")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"Python module {module} (pip install -e '.[{extra}]')")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check every prerequisite once and name all that are missing, instead of a traceback per
    test; ``scripts/test`` installs them all."""
    missing = missing_prerequisites()
    if missing:
        pytest.exit(
            "missing for the tests (scripts/test installs them all):\n  " + "\n  ".join(missing),
            returncode=3,
        )
    # Debian installs mosquitto in /usr/sbin, not on a normal user's PATH.
    os.environ["PATH"] = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(
    module: str, *args: str | os.PathLike, timeout: float = 600, python_flags: tuple = ()
) -> Result:
    """Run ``python -m MODULE ARGS`` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *python_flags, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def default_ctrl_c() -> None:
    """In a command's process, Ctrl-C as a terminal's foreground job gets it: a runner may
    start the tests with SIGINT ignored (a shell's background job, `cmd &` in a script), which
    children inherit (and which a command should respect)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupted_after(seconds: float, module: str, *args: str | os.PathLike) -> Result:
    """``python -m MODULE ARGS`` sent Ctrl-C (SIGINT) ``seconds`` after it starts. The moment
    is the point (an import, a model load, the work), so this waits by the clock."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=default_ctrl_c,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return Result(proc.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def convert_cli():
    return lambda *args, **kw: run_cli("convert", *args, **kw)


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    """Each test's daemons keep undelivered events (mqtt.spool) in the test's own folder: a
    spool left by one test must not be delivered in another."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def huge_png(path, width: int, height: int) -> None:
    """A valid gray PNG of a few hundred KB that decodes to width x height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = zlib.compress(b"".join(b"\x00" * (width + 1) for _ in range(height)), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def huge_gif(path, width: int, height: int) -> None:
    """A GIF of a few bytes whose canvas is width x height pixels (one 1x1 image on it)."""
    import struct

    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(b"GIF89a" + screen + image + b";")
