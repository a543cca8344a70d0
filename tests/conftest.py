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


@pytest.fixture(scope="session")
def convert_cli():
    return lambda *args, **kw: run_cli("convert", *args, **kw)


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    """Each test's daemons keep undelivered events (mqtt.spool) in the test's own folder: a
    spool left by one test must not be delivered in another."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
