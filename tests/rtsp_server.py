"""A real RTSP server on loopback for the tests: GStreamer's RTSP server serving a looping clip.

Runs under Debian's /usr/bin/python3 (the GObject bindings are not in the virtual environment):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --clip CLIP [--path /cam] [--fps 15]

Prints ``READY`` once listening. The clip is decoded and re-encoded (x264, zero latency) so it
loops with continuous timestamps and every client gets key frames from the start.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--path", action="append", default=None, help="mount point(s)")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--pre-encoded",
        action="store_true",
        help="the clip is already H.264 in MP4 at the wanted size and rate: no decode/encode",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="one encoder for all clients (late joiners may see broken frames until a key frame)",
    )
    parser.add_argument(
        "--udp-only",
        action="store_true",
        help="refuse interleaved TCP (461 Unsupported transport), as some cameras do",
    )
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    launch = (
        f"( multifilesrc location={args.clip} loop=true ! decodebin ! videoconvert ! videoscale "
        f"! videorate ! video/x-raw,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
        "key-int-max=15 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    if args.pre_encoded:  # plays once; costs the server almost no CPU
        launch = (
            f"( filesrc location={args.clip} ! qtdemux ! h264parse "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    for path in args.path or ["/cam"]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(args.shared)
        if args.udp_only:
            factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
