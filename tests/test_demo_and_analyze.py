"""The quick start (no camera, no broker) and offline analysis of a user's own footage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SHARED, interrupted_after, run_cli
from services import free_port

CLIP = SHARED / "media" / "asl-again.mkv"


def test_demo_runs_without_camera_or_broker_and_prints_events(tmp_path):
    """Also after a first run interrupted while it built its clip (an empty file in the cache)."""
    (tmp_path / "edge-emotion").mkdir()
    (tmp_path / "edge-emotion" / "astronaut-demo.avi").write_bytes(b"")
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path),
        "EDGE_METRICS__PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "start" and first["camera"] == "astronaut"
        assert first["device_id"] == "demo"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    events = [first] + [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "end"
    # The astronaut smiles throughout: her track is reported happy.
    assert any(e["emotion"] == "happy" for e in events if e["box"][2] < 160)
    assert (tmp_path / "edge-emotion" / "astronaut-demo.avi").stat().st_size > 100_000


def test_the_demo_restarts_on_sighup(tmp_path):
    """A reload of the demo (no configuration file: nothing to re-read) restarts it, as it
    does the daemon; it ended the demo instead."""
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path),
        "EDGE_METRICS__PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=log.open("w"), text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["event"] == "start"
        proc.send_signal(signal.SIGHUP)
        for line in proc.stdout:  # the first run's ends, then the restarted demo's start
            if json.loads(line)["event"] == "start":
                break
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert "SIGHUP: restarting" in log.read_text()


def test_analyze_prints_one_json_line_per_face(tmp_path):
    result = run_cli("edge", "analyze", CLIP, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    frames = {row["frame"] for row in rows}
    assert len(frames) >= 70  # a face in 75 of the clip's 77 frames (shared/media/README.md)
    row = rows[0]
    assert set(row) == {"source", "frame", "box", "emotion", "confidence", "scores"}
    assert row["source"] == str(CLIP) and len(row["scores"]) == 7


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_analyze_reads_every_frame_of_an_animated_image(tmp_path, suffix):
    """A clip shared as an animated WebP or PNG (with transparency): every frame is analysed,
    not the first alone."""
    import av
    import cv2

    with av.open(str(CLIP)) as container:
        clip = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)][::5]
    animation = cv2.Animation()
    animation.frames = [cv2.cvtColor(image, cv2.COLOR_BGR2BGRA) for image in clip]
    animation.durations = [166] * len(clip)
    path = tmp_path / f"clip{suffix}"
    assert cv2.imwriteanimation(str(path), animation)
    result = run_cli("edge", "analyze", path, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    frames = {json.loads(line)["frame"] for line in result.stdout.splitlines()}
    assert len(clip) == 16 and len(frames) >= 14, frames  # a face in 75 of the 77 frames


def test_files_whose_names_are_not_utf_8_are_analyzed_not_a_crash(tmp_path):
    """Linux file names are bytes (a Latin-1 archive, a camera's SD card): OpenCV's binding
    crashed the process (SIGSEGV) on such a name. Output names them with escapes."""
    import cv2
    from skimage import data

    photo = tmp_path / os.fsdecode(b"astronaut-\xe9t\xe9.png")  # Latin-1 "ete" accented
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    (tmp_path / "a.png").rename(photo)
    video = tmp_path / os.fsdecode(b"clip-\xff.mkv")
    video.symlink_to(CLIP)
    result = run_cli("edge", "analyze", photo, video, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    sources = [json.loads(line)["source"] for line in result.stdout.splitlines()]
    assert sources[0] == f"{tmp_path}/astronaut-\\udce9t\\udce9.png" and len(sources) > 70
    assert set(sources[1:]) == {f"{tmp_path}/clip-\\udcff.mkv"}


def test_a_name_with_a_line_break_or_tab_keeps_each_result_on_its_line(tmp_path):
    """The table is one line per face, tab-separated: a file name's own line break made two
    lines of one result (the second named no file), and its tab a column too many."""
    import cv2
    import numpy as np
    from skimage import data

    photo, wall = tmp_path / "crew\nphoto\t1.png", tmp_path / "blank\nwall.png"
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    (tmp_path / "a.png").rename(photo)
    cv2.imwrite(str(tmp_path / "w.png"), np.full((240, 320), 128, np.uint8))
    (tmp_path / "w.png").rename(wall)
    result = run_cli("edge", "analyze", photo, wall)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows and all(len(row) == 5 for row in rows), result.stdout
    assert {row[0] for row in rows} == {f"{tmp_path}/crew\\nphoto\\t1.png"}
    assert result.stderr == (
        f"edge analyze: {tmp_path}/blank\\nwall.png: "
        "no face found (frontal faces of 40 px or more)\n"
    )


def test_a_file_named_like_an_ffmpeg_protocol_is_read_as_the_file(tmp_path):
    """FFmpeg reads a relative name with a colon as a protocol: `pipe:0` read stdin (a
    terminal, or here nothing) instead of the file, and `file:x.mkv` failed."""
    for name in ("pipe:0", "file:x.mkv"):
        (tmp_path / name).symlink_to(CLIP)
    result = subprocess.run(
        [sys.executable, "-m", "edge", "analyze", "pipe:0", "file:x.mkv", "--json"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    sources = [json.loads(line)["source"] for line in result.stdout.splitlines()]
    assert sources.count("pipe:0") > 70 and sources.count("file:x.mkv") == sources.count("pipe:0")


def test_results_standard_output_refuses_end_analyze_in_one_line(tmp_path):
    """A full disk behind `> faces.jsonl` was reported once per input file as that file's
    error; with stdout closed the results went nowhere and the exit code was 0."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "edge", "analyze", str(CLIP), str(CLIP)], cwd=ROOT,
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        1,
        "edge analyze: error: the results cannot be written to standard output "
        "(No space left on device)\n",
    )
    closed = subprocess.run(
        [sys.executable, "-m", "edge", "analyze", str(CLIP)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert (closed.returncode, closed.stderr) == (
        1, "edge analyze: error: standard output is closed: nowhere to write the results\n"
    )  # fmt: skip


def test_analyze_says_when_a_file_has_no_face(tmp_path):
    """An empty output alone cannot be told from a failure (or a rotated photo's miss)."""
    import cv2
    import numpy as np

    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((240, 320), 128, np.uint8))
    result = run_cli("edge", "analyze", wall, "--json")
    assert result.returncode == 0 and result.stdout == ""
    assert (
        result.stderr == f"edge analyze: {wall}: no face found (frontal faces of 40 px or more)\n"
    )


def test_analyze_reports_unreadable_files_and_goes_on(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    not_video = tmp_path / "not-video.mp4"
    not_video.write_bytes(bytes(range(256)) * 16)
    folder = tmp_path / "folder"
    folder.mkdir()
    files = (broken, tmp_path / "missing.mp4", not_video, folder, "/dev/null", CLIP)
    result = run_cli("edge", "analyze", *files, "--json")
    assert result.returncode == 1
    # One line per unreadable file, in our words (not FFmpeg's or OpenCV's), then the next file.
    assert result.stderr.splitlines() == [
        f"edge analyze: error: {broken}: not a readable image, skipped",
        f"edge analyze: error: {tmp_path / 'missing.mp4'}: no such file",
        f"edge analyze: error: {not_video}: not a readable image or video",
        f"edge analyze: error: {folder}: a directory, not an image or video",
        "edge analyze: error: /dev/null: not a regular file (a device or a pipe), "
        "not an image or video",
    ]
    assert len(result.stdout.splitlines()) >= 70


def test_the_demo_shows_one_face_and_no_ghost(tmp_path):
    """The sample clip has one face; the demo's detector settings let no second one through
    over a whole loop of the clip (16 s at its own rate)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "EDGE_METRICS__ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo"],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    tracks, started = set(), time.monotonic()
    try:
        for line in proc.stdout:  # heartbeats every 5 s keep lines coming
            tracks.add(json.loads(line)["track_id"])
            if time.monotonic() - started > 20:
                break
    finally:
        proc.kill()
        proc.wait()
    assert tracks == {1}


@pytest.mark.parametrize("after", [0.1, 0.25, 0.4, 0.6, 1.0, 2.0])
def test_ctrl_c_at_any_moment_of_analyze_ends_it_in_one_line(after):
    """While it imports, loads the model, opens the video (when fd 2 is silenced) or works:
    never a traceback, never silence, always exit code 130."""
    result = interrupted_after(after, "edge", "analyze", CLIP)
    assert (result.returncode, result.stderr) == (130, "edge analyze: interrupted\n")
