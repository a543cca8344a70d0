"""Several cameras at once: RTSP in, MQTT out, measured from outside the daemon.

    python bench/pipeline.py [--cameras 4] [--fps 10] [--seconds 60]

Starts mosquitto and one GStreamer RTSP server on loopback, then the daemon with N cameras on it.
The server shares the daemon's 2 cores, so it serves H.264 without re-encoding: the clip
``../shared/media/asl-again.mkv`` is first encoded once (GStreamer x264) into a 640x480 MP4 at
the camera rate, long enough for the run, and each session streams that file as it is.
Every analysed frame with a face yields an event (heartbeat 0.1 s), and a subscriber measures
frame-to-MQTT latency (receipt time minus the event's ``frame_time``; ``end`` events are left out,
their ``frame_time`` is when the face was last seen, ``lost_after_s`` earlier). Reports per-camera
analysis rate and its spread, dropped frames, latency percentiles, the time from start to the
first event, the daemon's resident memory and its own CPU time per analysed frame (decoding
included: it runs in the daemon's process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from services import Broker, RtspServer, Subscriber, free_port, spawn_daemon  # noqa: E402
from services import scrape as metrics  # noqa: E402

CLIP = ROOT.parent / "shared" / "media" / "asl-again.mkv"
TICKS = os.sysconf("SC_CLK_TCK")


def pre_encode(clip: Path, out: Path, fps: int, seconds: int) -> Path:
    """The clip, looped to ``seconds``, resampled to ``fps``, 640x480, as H.264 in MP4."""
    capture = cv2.VideoCapture(str(clip))
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 30
    frames = []
    ok, frame = capture.read()
    while ok:
        frame = cv2.resize(frame, (640, 480))
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
        ok, frame = capture.read()
    encoder = subprocess.Popen(
        [
            "gst-launch-1.0",
            "-q",
            "-e",
            "fdsrc",
            "fd=0",
            f"blocksize={len(frames[0])}",
            "!",
            "rawvideoparse",
            "width=640",
            "height=480",
            "format=i420",
            f"framerate={fps}/1",
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=veryfast",
            f"key-int-max={fps}",
            "!",
            "h264parse",
            "!",
            "mp4mux",
            "!",
            "filesink",
            f"location={out}",
        ],
        stdin=subprocess.PIPE,
    )
    for i in range(fps * seconds):
        encoder.stdin.write(frames[int(i * source_fps / fps) % len(frames)])
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise RuntimeError("gst-launch-1.0 could not encode the benchmark stream")
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch(port: int, cameras: int, stop: threading.Event) -> None:
    """What the live view's page asks for while open: the list and every snapshot, each second."""
    base = f"http://127.0.0.1:{port}"
    while not stop.wait(1.0):
        for path in ["/api/cameras"] + [f"/snapshot/cam{i}.jpg" for i in range(cameras)]:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + path, timeout=5).read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument(
        "--view",
        action="store_true",
        help="enable the live view and watch it as the page does (each camera's snapshot and "
        "the camera list once a second)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    stream = pre_encode(
        CLIP, work / "stream.mp4", int(args.fps), int(args.warmup + args.seconds) + 30
    )
    broker = Broker(work).start()
    rtsp = RtspServer(stream, pre_encoded=True).start()
    metrics_port = free_port()
    config = {
        "device_id": "bench",
        "cameras": [
            {"name": f"cam{i}", "source": rtsp.url(), "fps": args.fps} for i in range(args.cameras)
        ],
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "metrics": {"port": metrics_port},
        "tracking": {"heartbeat_s": 0.1},
    }
    view_port = free_port()
    if args.view:
        config["view"] = {"enabled": True, "port": view_port}
    sub = Subscriber(broker.port, "edge-emotion/bench/+/event", client_id="bench-sub")
    sub.wait_subscribed()
    spawned = time.time()
    daemon = spawn_daemon(config, work)
    try:
        time.sleep(args.warmup)  # a benchmark, not a test: let streams open and settle
        stop_watching = threading.Event()
        if args.view:
            threading.Thread(
                target=watch, args=(view_port, args.cameras, stop_watching), daemon=True
            ).start()
        before, cpu0, t0 = metrics(metrics_port), cpu_seconds(daemon.pid), time.monotonic()
        seen = len(sub.messages)
        rss = []
        while time.monotonic() - t0 < args.seconds:
            rss.append(rss_mb(daemon.pid))
            time.sleep(1)
        after, cpu1, elapsed = metrics(metrics_port), cpu_seconds(daemon.pid), time.monotonic() - t0
        stop_watching.set()
        received = list(zip(sub.messages[seen:], sub.received_at[seen:], strict=False))
        first_event = sub.received_at[0] - spawned if sub.received_at else float("nan")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        sub.close()
        rtsp.stop()
        broker.stop()
    report(args, before, after, elapsed, cpu1 - cpu0, rss, received, first_event)


def report(args, before, after, elapsed, cpu, rss, received, first_event) -> None:  # noqa: ANN001
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    print(
        f"{args.cameras} cameras x {args.fps:g} fps requested, {elapsed:.0f} s measured, "
        f"{os.cpu_count()} CPUs"
    )
    processed_total, rates = 0.0, []
    for i in range(args.cameras):
        label = f'{{camera="cam{i}"}}'
        processed = delta(f"edge_emotion_frames_processed_total{label}")
        processed_total += processed
        rates.append(processed / elapsed)
        print(
            f"  cam{i}: read {delta(f'edge_emotion_frames_read_total{label}') / elapsed:5.1f} "
            f"fps, analysed {processed / elapsed:5.1f} fps, "
            f"dropped {delta(f'edge_emotion_frames_dropped_total{label}') / elapsed:5.1f} fps, "
            f"faces {delta(f'edge_emotion_faces_detected_total{label}') / max(processed, 1):.2f}"
            " per frame"
        )
    latencies = []
    for message, received_at in received:
        event = json.loads(message.payload)
        if event["event"] == "end":
            continue
        frame = datetime.fromisoformat(event["frame_time"].replace("Z", "+00:00")).timestamp()
        latencies.append(1000 * (received_at - frame))
    lat = np.array(latencies) if latencies else np.zeros(1)
    print(
        f"  analysed total {processed_total / elapsed:.1f} fps; per camera "
        f"{min(rates):.1f}-{max(rates):.1f} fps (spread {max(rates) - min(rates):.1f})"
    )
    print(f"  first event {first_event:.2f} s after the daemon was started")
    print(
        f"  frame-to-MQTT latency over {len(latencies)} events: median {np.median(lat):.0f} ms, "
        f"p95 {np.percentile(lat, 95):.0f} ms, max {lat.max():.0f} ms"
    )
    print(
        f"  daemon CPU {cpu / elapsed * 100:.0f}% of one core, "
        f"{1000 * cpu / max(processed_total, 1):.1f} ms CPU per analysed frame"
    )
    print(f"  daemon resident memory: max {max(rss):.0f} MB, last {rss[-1]:.0f} MB")


if __name__ == "__main__":
    main()
