"""Soak: the daemon for a long time against looping RTSP cameras, with the broker and one camera
restarted at intervals.

    python bench/soak.py [--minutes 30] [--cameras 2] [--fps 5] [--broker-every 300]
                         [--camera-every 420] [--warmup 300]

Starts mosquitto (with persistence, like a real broker) and one GStreamer RTSP server per camera
on loopback, then the daemon. The servers stream, without re-encoding, the clip
``../shared/media/asl-again.mkv`` encoded once into an H.264 file as long as the soak (live
re-encoding cost ~45% of a core per camera here, which the benchmark must not take from the
daemon); a restarted camera starts that file again. Every ``--broker-every`` seconds the broker
is stopped for ``--outage`` seconds and started again; every ``--camera-every`` seconds the last
camera's server is killed and restarted on the same port. A subscriber with a persistent session
counts what arrives. At the end the daemon gets SIGTERM and its shutdown summary (events the
broker acknowledged) is compared with what the subscriber received. Resident memory is sampled
every 10 s; growth is measured from the end of the warm-up (caches, allocator arenas and
histograms fill during it).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from pipeline import CLIP, pre_encode, rss_mb  # noqa: E402
from services import (  # noqa: E402
    Broker,
    RtspServer,
    Subscriber,
    free_port,
    shutdown_summary,
)
from services import scrape as metrics  # noqa: E402

SAMPLE_S = 10


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.broker = Broker(work).start()
        seconds = int(args.minutes * 60) + 120
        stream = pre_encode(CLIP, work / "stream.mp4", int(args.fps), seconds)
        self.cameras = [
            RtspServer(stream, fps=int(args.fps), pre_encoded=True).start()
            for _ in range(args.cameras)
        ]
        self.metrics_port = free_port()
        config = {
            "device_id": "soak",
            "cameras": [
                {"name": f"cam{i}", "source": server.url(), "fps": args.fps}
                for i, server in enumerate(self.cameras)
            ],
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "reconnect_max_s": 5},
            "metrics": {"port": self.metrics_port},
            "tracking": {"heartbeat_s": args.heartbeat},
        }
        (work / "edge.yaml").write_text(yaml.safe_dump(config))
        self.subscriber = Subscriber(self.broker.port, "edge-emotion/soak/+/event", "soak-sub")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(work / "edge.yaml")],
            cwd=ROOT,
            stderr=(work / "daemon.log").open("w"),
        )
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.broker_restarts = self.camera_restarts = 0

    def run(self) -> None:
        args, start = self.args, time.monotonic()
        next_broker, next_camera = args.broker_every, args.camera_every
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.daemon.returncode}); see {self.work}")
            self.rss.append((elapsed, rss_mb(self.daemon.pid)))
            if elapsed >= next_broker:
                self.restart_broker()
                next_broker += args.broker_every
            if elapsed >= next_camera:
                self.restart_camera()
                next_camera += args.camera_every
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - start - elapsed)))

    def restart_broker(self) -> None:
        self.broker.stop()
        time.sleep(self.args.outage)
        self.broker.start()
        self.broker_restarts += 1
        print(f"  {time.strftime('%H:%M:%S')} broker restarted", flush=True)

    def restart_camera(self) -> None:
        server = self.cameras[-1]
        server.stop()
        time.sleep(self.args.outage)
        server.start()
        self.camera_restarts += 1
        name = f"cam{len(self.cameras) - 1}"
        print(f"  {time.strftime('%H:%M:%S')} camera {name} restarted", flush=True)

    def finish(self) -> dict:
        final = metrics(self.metrics_port)
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(15)
        log = (self.work / "daemon.log").read_text()
        delivered, undelivered, dropped = shutdown_summary(log)
        deadline = time.monotonic() + 30
        while len({m.payload for m in self.subscriber.messages}) < delivered:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)  # a report, not a test: give the broker time to hand everything over
        received = len({m.payload for m in self.subscriber.messages})
        self.subscriber.close()
        for server in self.cameras:
            server.stop()
        self.broker.stop()
        return {
            "minutes": self.args.minutes,
            "cameras": self.args.cameras,
            "fps": self.args.fps,
            "exit_code": code,
            "events_delivered": delivered,
            "events_received": received,
            "events_undelivered": undelivered,
            "events_dropped": dropped,
            "broker_restarts": self.broker_restarts,
            "camera_restarts": self.camera_restarts,
            "camera_reconnects": {
                f"cam{i}": final.get(f'edge_emotion_camera_reconnects_total{{camera="cam{i}"}}')
                for i in range(self.args.cameras)
            },
            "frames_processed": sum(
                final.get(f'edge_emotion_frames_processed_total{{camera="cam{i}"}}', 0)
                for i in range(self.args.cameras)
            ),
            "rss_mb": self.rss,
        }


def report(result: dict, warmup: float) -> None:
    rss = result["rss_mb"]
    after = [mb for t, mb in rss if t >= warmup]
    base = after[0] if after else rss[-1][1]
    growth = 100 * (max(after or [base]) - base) / base
    print(
        f"soak: {result['minutes']:g} min, {result['cameras']} cameras x {result['fps']:g} fps, "
        f"{result['frames_processed']:.0f} frames analysed"
    )
    print(
        f"  restarts survived: broker {result['broker_restarts']}, "
        f"camera {result['camera_restarts']} (reconnects {result['camera_reconnects']}); "
        f"daemon exit code {result['exit_code']}"
    )
    lost = result["events_delivered"] - result["events_received"]
    print(
        f"  events: delivered (broker ack) {result['events_delivered']}, received by the "
        f"subscriber {result['events_received']}, lost {lost}, "
        f"undelivered at exit {result['events_undelivered']}, dropped {result['events_dropped']}"
    )
    print(
        f"  resident memory: {rss[0][1]:.0f} MB at start, {base:.0f} MB after {warmup:.0f} s "
        f"warm-up, max {max(after or [base]):.0f} MB after it, last {rss[-1][1]:.0f} MB; "
        f"growth after warm-up {growth:+.1f}%"
    )
    every = max(1, len(rss) // 12)
    samples = ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in rss[::every])
    print(f"  memory over time (s: MB): {samples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="tracking.heartbeat_s")
    parser.add_argument("--broker-every", type=float, default=300)
    parser.add_argument("--camera-every", type=float, default=420)
    parser.add_argument("--outage", type=float, default=5, help="seconds each restart is down")
    parser.add_argument("--warmup", type=float, default=300)
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    print(f"soak in {work}: daemon log {work / 'daemon.log'}", flush=True)
    soak = Soak(args, work)
    try:
        soak.run()
    finally:
        result = soak.finish()
    report(result, args.warmup)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
