"""Shared fixtures: the read-only data beside the checkout, and the CLI as users run it."""

from __future__ import annotations

import json
import os
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


def pytest_sessionstart(session: pytest.Session) -> None:
    if not SAMPLE_CSV.is_file():
        pytest.exit(
            f"test data missing: {SAMPLE_CSV} (../shared beside the checkout)", returncode=3
        )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(module: str, *args: str | os.PathLike, timeout: float = 600) -> Result:
    """Run ``python -m MODULE ARGS`` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
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
