"""Video as it comes from the field: damaged files, phone videos, hostile headers, size changes."""

from __future__ import annotations

import http.server
import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import yaml
from conftest import ROOT, SHARED, huge_gif
from test_daemon import daemons  # noqa: F401 (fixture)

from edge.config import CameraConfig
from edge.faces import FaceDetector
from edge.video import FFmpegSource

CLIP = SHARED / "media" / "asl-again.mkv"


def clip_frames() -> list[np.ndarray]:
    with av.open(str(CLIP)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def write_mp4(path: Path, images: list[np.ndarray]) -> Path:
    """H.264 with a keyframe every 10 frames, the index first (as phones and cameras write)."""
    height, width = images[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=30, options={"g": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    source = FFmpegSource(CameraConfig(name="clip", source=str(path)))
    try:
        return list(source.frames())
    finally:
        source.close()


def daemon_until_sources_end(tmp_path: Path, camera: dict) -> subprocess.CompletedProcess:
    """The daemon on one file camera (not looped), events to stdout, until the file ends."""
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"cameras": [camera], "metrics": {"enabled": False}}))
    return subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def damaged_clip(tmp_path: Path) -> Path:
    """The clip with three 2 KB stretches overwritten (a bad sector, a copy cut and patched)."""
    damaged = tmp_path / "damaged.mp4"
    content = bytearray(write_mp4(damaged, clip_frames()).read_bytes())
    rng = np.random.default_rng(0)
    for at in (0.3, 0.5, 0.7):
        start = int(len(content) * at)
        content[start : start + 2000] = rng.integers(0, 256, 2000, np.uint8).tobytes()
    damaged.write_bytes(content)
    return damaged


def test_a_file_damaged_in_places_is_read_past_the_damage_and_ends(tmp_path):
    """Three 2 KB stretches overwritten (a bad sector, a copy cut short and patched): the
    frames after each are read, and the camera ends as a file does. It stopped at the first
    damaged frame and was reopened from the start, forever, each pass a new track."""
    damaged = damaged_clip(tmp_path)
    assert len(frames_of(damaged)) >= 70  # of 77

    run = daemon_until_sources_end(tmp_path, {"name": "clip", "source": str(damaged)})
    assert run.returncode == 0, run.stderr[-2000:]  # every source ended
    assert "camera clip: end of file" in run.stderr, run.stderr[-2000:]
    starts = [line for line in run.stdout.splitlines() if '"event":"start"' in line]
    assert len(starts) == 1, run.stdout  # one face, one pass


def test_a_phone_video_stored_sideways_is_analysed_upright(tmp_path):
    """Phones store portrait video sideways with a rotation in the file's header; players,
    OpenCV and `edge analyze` turn it. The daemon gave Haar the sideways frames: no face."""
    sideways = [np.ascontiguousarray(np.rot90(f)) for f in clip_frames()[:10]]
    video = write_mp4(tmp_path / "portrait.mp4", sideways)
    content = bytearray(video.read_bytes())
    tkhd = content.find(b"tkhd")  # version 0: the matrix follows 76 bytes of fields
    matrix = [0, 0x10000, 0, -0x10000 & 0xFFFFFFFF, 0, 0, 0, 0, 0x40000000]
    content[tkhd + 44 : tkhd + 80] = struct.pack(">9I", *matrix)
    video.write_bytes(content)
    with av.open(str(video)) as container:
        assert next(container.decode(video=0)).rotation in (90, -90)
    first = frames_of(video)[0]
    assert first.shape == (480, 640)  # as the camera saw it
    assert FaceDetector().detect(first)


def test_a_tiny_file_that_declares_a_huge_picture_is_refused_unread(tmp_path):
    """A GIF of a few hundred bytes can declare a 16000 x 16000 canvas: decoding it cost the
    daemon 3 GB and seconds per frame, every camera with it."""
    gif = tmp_path / "huge.gif"
    huge_gif(gif, 16000, 16000)
    try:
        FFmpegSource(CameraConfig(name="gif", source=str(gif)))
    except OSError as error:
        assert "16000x16000 is larger than 50 megapixels" in str(error)
    else:
        raise AssertionError("a 256-megapixel GIF was opened")


def write_ts(path: Path, images: list[np.ndarray]) -> bytes:
    height, width = images[0].shape[:2]
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30, options={"g": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return path.read_bytes()


def test_a_camera_that_changes_its_resolution_keeps_one_track_per_face(tmp_path):
    """A stream switching profile (640x480, then 1280x960): the same view at twice the size.
    The face keeps its track (its box scaled): ending it made an `end`, a new id and a `start`
    for a face that never left, and an old-size box kept gave two tracks for one face."""
    frames = clip_frames()
    small = write_ts(tmp_path / "a.ts", frames[:40])
    large = write_ts(tmp_path / "b.ts", [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in frames[40:]])
    video = tmp_path / "switch.ts"
    video.write_bytes(small + large)
    run = daemon_until_sources_end(tmp_path, {"name": "clip", "source": str(video), "fps": 30})
    assert run.returncode == 0, run.stderr[-2000:]
    open_tracks, most = set(), 0
    for event in map(json.loads, run.stdout.splitlines()):
        if event["event"] == "start":
            open_tracks.add(event["track_id"])
        elif event["event"] == "end":
            open_tracks.discard(event["track_id"])
        most = max(most, len(open_tracks))
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert most == 1 and [e["event"] for e in events].count("start") == 1, run.stdout
    boxes = [e["box"] for e in events if e["event"] != "start"]
    assert boxes and boxes[-1][2] > 150, boxes  # the last box is in the 1280x960 frame's pixels


def test_analyze_reads_past_damage_and_says_what_it_skipped(tmp_path):
    """It stopped at the first damaged frame, exit code 0, with FFmpeg's own lines on stderr:
    the faces of the rest of the file were missing without a word."""
    damaged = damaged_clip(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "edge", "analyze", str(damaged), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert len({json.loads(line)["frame"] for line in run.stdout.splitlines()}) >= 70
    assert run.stderr.endswith("damaged frames could not be decoded and were skipped\n")
    assert len(run.stderr.splitlines()) == 1, run.stderr


def test_a_recording_on_a_web_server_is_played_once_at_its_own_rate(tmp_path):
    """An MP4/MKV URL (a recording an NVR or a web server hands out) has a duration, a camera
    has none: it is played like a file, at its own rate, and ends. It was downloaded as fast as
    it came (most frames dropped) and reopened as a camera that "came back", every few seconds,
    each pass the same faces again."""
    server, requests = serve(CLIP.parent)
    try:
        url = f"http://127.0.0.1:{server.server_port}/{CLIP.name}"
        started = time.monotonic()
        run = daemon_until_sources_end(tmp_path, {"name": "nvr", "source": url, "fps": 10})
        took = time.monotonic() - started
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-2000:]  # every source ended
    assert "camera nvr: end of the recording" in run.stderr, run.stderr[-2000:]
    assert len(requests) == 1, requests
    with av.open(str(CLIP)) as container:
        duration = container.duration / av.time_base
    assert took >= duration  # played at its own rate, not as fast as it downloads
    starts = [line for line in run.stdout.splitlines() if '"event":"start"' in line]
    assert len(starts) == 1, run.stdout


def test_a_camera_whose_codec_ffmpeg_cannot_decode_is_said_and_the_others_go_on(tmp_path):
    """A vendor's own codec id: FFmpeg demuxes the stream but has no decoder for it. That
    crashed the camera's reader, and the daemon exited 1 to be restarted, every camera with
    it, again and again under systemd."""
    content = CLIP.read_bytes()
    assert content.count(b"V_MPEG4/ISO/AVC") == 1
    odd = tmp_path / "odd.mkv"
    odd.write_bytes(content.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    config = tmp_path / "edge.yaml"
    cameras = [{"name": "odd", "source": str(odd)}, {"name": "clip", "source": str(CLIP)}]
    config.write_text(yaml.safe_dump({"cameras": cameras, "metrics": {"enabled": False}}))
    run = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"camera odd: cannot open {odd}: no decoder for its video" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert {e["camera"] for e in events if e["event"] == "start"} == {"clip"}, run.stdout


def test_a_title_that_is_not_utf_8_does_not_keep_a_video_from_being_read(tmp_path):
    """A Latin-1 title (a camera's RTSP session name, a file's tag) made every open fail
    with a UnicodeDecodeError: the camera was never read."""
    content = CLIP.read_bytes()
    tag = b"ENCODERD\x87\x8dLavf58.20.100"  # the ENCODER tag and its 13-byte value
    assert content.count(tag) == 1
    latin = tmp_path / "latin.mkv"
    latin.write_bytes(content.replace(tag, tag[:-3] + b"\xe9t\xe9"))
    assert len(frames_of(latin)) >= 70  # of 77


READ_GROWING = """
import resource, sys
from edge.config import CameraConfig
from edge.video import FFmpegSource
source = FFmpegSource(CameraConfig(name="grows", source=sys.argv[1]))
before, shapes, error = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, set(), None
try:
    for frame in source.frames():
        shapes.add(frame.shape)
except OSError as failure:
    error = str(failure)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(repr((error, sorted(shapes), grown_mb)))
"""


def test_a_stream_whose_frames_grow_past_the_pixel_limit_is_cut_before_decoding(tmp_path):
    """The size limit was checked at the open only: a stream that starts small and then
    sends 63-megapixel frames had them decoded and scanned for faces, gigabytes per camera.
    Then it was checked after decoding: each such frame was still allocated and decoded (a
    JPEG can declare 65000x30000) before it was refused."""
    import cv2

    small = cv2.imencode(".jpg", np.full((240, 320), 128, np.uint8))[1].tobytes()
    huge = cv2.imencode(".jpg", np.full((7000, 9000), 128, np.uint8))[1].tobytes()
    stream = tmp_path / "grows.mjpeg"
    stream.write_bytes(small * 20 + huge * 3)
    run = subprocess.run(
        [sys.executable, "-c", READ_GROWING, str(stream)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    error, shapes, grown_mb = eval(run.stdout)
    assert error == (
        f"{stream}: a frame the decoder refused (over the 50-megapixel limit, or invalid)"
    )
    assert shapes == [(240, 320)]
    assert grown_mb < 30, grown_mb  # a 9000x7000 gray frame is 63 MB


def serve(folder: Path, cut_at: float | None = None) -> tuple[http.server.HTTPServer, list[str]]:
    """A web server for ``folder``'s files; ``cut_at``: each download drops at that share of
    the file (its full length announced), as a connection that breaks does."""
    requests: list[str] = []

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            if cut_at is None:
                super().do_GET()
                return
            content = (folder / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "video/x-matroska")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content[: int(len(content) * cut_at)])
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


def test_a_snapshot_url_is_a_camera_read_again_and_again(tmp_path, daemons):  # noqa: F811
    """A camera's still-image URL (`/snapshot.jpg`): FFmpeg gives such a JPEG the duration of
    one frame, so it was taken for a recording, read once, and the daemon, its only camera
    ended, exited 0: systemd does not restart that. And it is up while its frames come:
    down between two requests, its Home Assistant sensors were unavailable nearly always."""
    import cv2
    from skimage import data

    cv2.imwrite(str(tmp_path / "snapshot.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    server, requests = serve(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_port}/snapshot.jpg"
        daemon = daemons({"cameras": [{"name": "porch", "source": url}]})
        read = 'edge_emotion_frames_read_total{camera="porch"}'
        up = 'edge_emotion_camera_up{camera="porch"}'
        daemon.wait_metric(read, lambda v: v >= 1, timeout=30)
        seen = []  # camera_up at each scrape over 3 more requests (0.5 + 1 + 2 s apart)
        while (metrics := daemon.metrics())[read] < 4:
            seen.append(metrics[up])
            time.sleep(0.1)
        assert len(seen) > 20 and set(seen) == {1.0}, seen
        assert daemon.stop() == 0, daemon.log()
        assert "end of the recording" not in daemon.log()
        assert len(requests) >= 3
    finally:
        server.shutdown()


def test_a_recording_whose_download_breaks_is_not_replayed_from_the_start(tmp_path):
    """A recording on a web server whose connection drops at 80%: it was reopened from the
    start after each drop, forever, each pass the same faces reported again."""
    server, requests = serve(CLIP.parent, cut_at=0.8)
    try:
        url = f"http://127.0.0.1:{server.server_port}/{CLIP.name}"
        run = daemon_until_sources_end(tmp_path, {"name": "nvr", "source": url, "fps": 10})
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-2000:]  # the source ended
    assert "the rest of the recording is skipped" in run.stderr, run.stderr[-2000:]
    assert len(requests) == 1, requests
    starts = [line for line in run.stdout.splitlines() if '"event":"start"' in line]
    assert len(starts) == 1, run.stdout
