"""The systemd unit stays valid and hardened.

`systemd-analyze verify` must have nothing to say about it, and `systemd-analyze security
--offline=yes` must rate its exposure at most 2.5 ("OK"). Both run on the unit file itself, without
a running systemd. systemd-analyze comes with Debian's `systemd` package; when it is missing the
tests fail (they do not skip), so a CI machine without it cannot pass silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-emotion.service"
EXEC = "/opt/edge-emotion/.venv/bin/edge-emotion"
MAX_EXPOSURE = 2.5
OVERALL = re.compile(r"Overall exposure level for edge-emotion\.service: (\d+(?:\.\d+)?)")


def systemd_analyze(*args: str | Path) -> tuple[int, str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze not found: install the Debian package `systemd` "
            "(apt-get install systemd) to check systemd/edge-emotion.service",
            pytrace=False,
        )
    proc = subprocess.run(
        [exe, "--no-pager", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def service_settings() -> dict[str, list[str]]:
    """The [Service] section as key -> values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_verifies_cleanly(tmp_path):
    # verify insists that ExecStart's program exists and is executable, and the daemon is not
    # installed at /opt/edge-emotion here: check an otherwise identical copy whose ExecStart
    # points at a stub. verify exits 0 even on unknown keys or unparsable values (it only
    # warns, and systemd would ignore the line), so any output at all is a failure.
    text = UNIT.read_text()
    assert text.count(EXEC) == 1, f"ExecStart no longer runs {EXEC}: update this test"
    stub = tmp_path / EXEC.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(EXEC, str(stub)))

    code, output = systemd_analyze("verify", copy)

    assert code == 0 and output == "", f"systemd-analyze verify {UNIT.name}:\n{output}"


def test_unit_exposure_is_ok():
    code, output = systemd_analyze(
        "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", UNIT
    )

    match = OVERALL.search(output)
    assert match, f"no overall exposure in systemd-analyze security output:\n{output}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE and code == 0, (
        f"exposure {exposure} > {MAX_EXPOSURE} (exit {code}):\n{output}"
    )


def test_unit_keeps_what_the_daemon_needs():
    """Settings the security score does not see, each of which breaks the daemon if lost."""
    s = service_settings()
    assert s.get("Type") == ["notify"] and s.get("NotifyAccess") == ["main"]
    assert s.get("WatchdogSec"), "the daemon pings the watchdog; without it a stall is not seen"
    assert "2" in " ".join(s.get("RestartPreventExitStatus", [])).split(), (
        "exit 2 (configuration error) must not be restarted in a loop"
    )
    # NumPy's OpenBLAS calls mbind() (@resources) on import: with the default action the
    # filter kills the daemon with SIGSYS; EPERM is ignored by OpenBLAS.
    assert s.get("SystemCallErrorNumber") == ["EPERM"]
    # LiteRT's XNNPACK needs /proc/cpuinfo: without it inference falls back to slow kernels.
    assert "pid" not in s.get("ProcSubset", [])
    # USB cameras: group video and the V4L2 device class, no private /dev.
    assert "video" in " ".join(s.get("SupplementaryGroups", [])).split()
    assert any(v.startswith("char-video4linux") for v in s.get("DeviceAllow", []))
    assert s.get("PrivateDevices", ["no"])[-1] in ("no", "false", "0", "off")
    # Events undelivered at a stop wait there for the next start (ProtectSystem=strict).
    assert s.get("StateDirectory") == ["edge-emotion"]
    families = " ".join(s.get("RestrictAddressFamilies", [])).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families), "sd_notify, cameras, MQTT"
