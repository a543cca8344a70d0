"""Several cameras at once: RTSP in, MQTT out, measured from outside the daemon.

    python bench/pipeline.py [--cameras 4] [--fps 10] [--seconds 60]

Starts mosquitto and one GStreamer RTSP server on loopback (the clip ``../shared/media/
asl-again.mkv`` encoded once, 640x480, and shared by every session so the server costs one
encoder whatever the number of cameras), then the daemon with N cameras on that stream. Every
analysed frame with a face yields an event (heartbeat 0.1 s), and a subscriber measures
frame-to-MQTT latency (receipt time minus the event's ``frame_time``). Reports per-camera
analysis rate, dropped frames, latency percentiles, the daemon's resident memory and its own CPU
time per analysed frame.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from services import Broker, RtspServer, Subscriber, free_port  # noqa: E402

CLIP = ROOT.parent / "shared" / "media" / "asl-again.mkv"
TICKS = os.sysconf("SC_CLK_TCK")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    broker = Broker(work).start()
    rtsp = RtspServer(CLIP, fps=int(args.fps)).start()
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
    (work / "edge.yaml").write_text(yaml.safe_dump(config))
    sub = Subscriber(broker.port, "edge-emotion/bench/+/event", client_id="bench-sub")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(work / "edge.yaml")],
        cwd=ROOT,
        stderr=(work / "daemon.log").open("w"),
    )
    try:
        time.sleep(args.warmup)  # a benchmark, not a test: let streams open and settle
        before, cpu0, t0 = metrics(metrics_port), cpu_seconds(daemon.pid), time.monotonic()
        seen = len(sub.messages)
        rss = []
        while time.monotonic() - t0 < args.seconds:
            rss.append(rss_mb(daemon.pid))
            time.sleep(1)
        after, cpu1, elapsed = metrics(metrics_port), cpu_seconds(daemon.pid), time.monotonic() - t0
        received = list(zip(sub.messages[seen:], sub.received_at[seen:], strict=False))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        sub.close()
        rtsp.stop()
        broker.stop()
    report(args, before, after, elapsed, cpu1 - cpu0, rss, received)


def report(args, before, after, elapsed, cpu, rss, received) -> None:  # noqa: ANN001
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    print(
        f"{args.cameras} cameras x {args.fps:g} fps requested, {elapsed:.0f} s measured, "
        f"{os.cpu_count()} CPUs"
    )
    processed_total = 0.0
    for i in range(args.cameras):
        label = f'{{camera="cam{i}"}}'
        processed = delta(f"edge_emotion_frames_processed_total{label}")
        processed_total += processed
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
        frame = datetime.fromisoformat(event["frame_time"].replace("Z", "+00:00")).timestamp()
        latencies.append(1000 * (received_at - frame))
    lat = np.array(latencies) if latencies else np.zeros(1)
    print(f"  analysed total {processed_total / elapsed:.1f} fps")
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
