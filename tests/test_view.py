"""The live view as a user opens it: a real RTSP stream and daemon, headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from services import free_port
from test_daemon import CLIP, EMOTIONS, daemons, rtsp  # noqa: F401 (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def green_pixels(image: np.ndarray) -> int:
    """Pixels of the view's box colour: the frames are gray, so only the drawing is green."""
    g, r = image[..., 1].astype(int), image[..., 2].astype(int)
    return int(((g - r > 80) & (g > 150)).sum())


def chromium(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (Debian package chromium; scripts/test installs it)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def viewed(rtsp, daemons):  # noqa: F811
    port = free_port()
    daemon = daemons(
        {
            "cameras": [{"name": "door", "source": rtsp.url(), "fps": 5}],
            "view": {"enabled": True, "port": port},
        }
    )
    daemon.wait_metric('edge_emotion_faces_detected_total{camera="door"}', lambda v: v >= 3, 30)
    return daemon, f"http://127.0.0.1:{port}"


def test_the_api_and_the_snapshot_show_what_the_camera_sees(viewed):
    daemon, base = viewed
    status, kind, body = get(f"{base}/api/cameras")
    assert status == 200 and kind == "application/json"
    (camera,) = json.loads(body)
    assert camera["name"] == "door" and camera["up"] is True and camera["analysed_fps"] > 0
    assert camera["faces"] and all(f["emotion"] in EMOTIONS for f in camera["faces"])
    status, kind, body = get(f"{base}/snapshot/door.jpg")
    assert status == 200 and kind == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3)
    assert green_pixels(image) > 200  # the face box (75-px faces: ~600 px of outline)
    assert get(f"{base}/snapshot/nowhere.jpg")[0] == 404
    assert daemon.stop() == 0


def test_a_camera_down_shows_its_last_frame_without_faces(viewed, rtsp):  # noqa: F811
    """The camera's tracks ended with it: its last frame stays on the page, but no box says
    someone is there now (the API already said no faces; the picture still did)."""
    daemon, base = viewed
    rtsp.stop()
    daemon.wait_metric('edge_emotion_camera_up{camera="door"}', lambda v: v == 0, 20)
    (camera,) = json.loads(get(f"{base}/api/cameras")[2])
    assert camera["up"] is False and camera["faces"] == []
    status, _, body = get(f"{base}/snapshot/door.jpg")
    assert status == 200
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3) and green_pixels(image) == 0
    assert daemon.stop() == 0


def test_snapshots_abandoned_by_the_browser_leave_no_traceback(viewed):
    """The page replaces each snapshot every second: a browser resets requests it no longer
    wants, which is no error of the daemon's (it printed a 20-line traceback for each)."""
    import struct

    daemon, base = viewed
    port = int(base.rsplit(":", 1)[1])
    for _ in range(10):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(b"GET /snapshot/door.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # RST, as an aborted fetch
    assert get(f"{base}/api/cameras")[0] == 200  # still serving
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log(), daemon.log()


def test_a_web_page_cannot_read_the_cameras_through_dns_rebinding(viewed):
    """A page on evil.example that re-points its name to 127.0.0.1 makes the browser send
    `Host: evil.example` to the view: refused. The view's own names are served."""
    daemon, base = viewed
    port = int(base.rsplit(":", 1)[1])
    for host, status in [
        (f"evil.example:{port}", 403),
        ("evil.example", 403),
        (f"localhost:{port}", 200),
        (f"127.0.0.1:{port}", 200),
    ]:
        request = urllib.request.Request(f"{base}/api/cameras", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                got = response.status
        except urllib.error.HTTPError as error:
            got = error.code
        assert got == status, host
    # A header name with a blank before its colon, or two Hosts: a bad request (RFC 9112),
    # not a request without the Host the check reads.
    address = ("127.0.0.1", port)
    for headers in ("Host : evil.example", f"Host: localhost:{port}\r\nHost: evil.example"):
        assert status_of_raw_request(address, "GET /api/cameras HTTP/1.1", headers) == 400
    assert daemon.stop() == 0


def test_the_page_renders_tiles_boxes_and_labels_in_a_real_browser(viewed, tmp_path):
    daemon, base = viewed
    dom = chromium("--dump-dom", f"{base}/").stdout
    assert 'class="tile" data-camera="door"' in dom
    assert 'class="status up"' in dom
    face = re.search(r'class="face">#\d+ (\w+) \d\.\d\d<', dom)
    assert face and face.group(1) in EMOTIONS, dom[-2000:]
    shot = tmp_path / "view.png"
    chromium(f"--screenshot={shot}", "--window-size=1000,700", f"{base}/")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (700, 1000)
    assert green_pixels(image) > 100  # the face box, drawn on the camera's frame in the tile
    assert daemon.stop() == 0


def status_of_raw_request(
    address: tuple[str, int], request_line: str, headers: str = "Host: localhost"
) -> int:
    """The status code of a request sent as typed (HTTP clients refuse to send bad targets)."""
    with socket.create_connection(address, timeout=5) as connection:
        connection.sendall(f"{request_line}\r\n{headers}\r\n\r\n".encode())
        return int(connection.makefile("rb").readline().split()[1])


def test_the_view_serves_on_ipv6_and_answers_head(daemons):  # noqa: F811
    """``view: {host: "::1"}`` stopped start-up ("Address family for hostname not
    supported"), and HEAD (uptime checks) got 501."""
    port = free_port()
    daemon = daemons(
        {
            "cameras": [{"name": "clip", "source": str(CLIP), "loop": True}],
            "view": {"enabled": True, "host": "::1", "port": port},
        }
    )
    log = daemon.wait_log(lambda text: "live view on" in text, timeout=30)
    assert f"live view on http://[::1]:{port}/" in log, log
    request = urllib.request.Request(f"http://[::1]:{port}/api/cameras", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 0
        assert "Python" not in response.headers["Server"]
    # A target that is no URL (an unclosed IPv6 bracket): 400, not a closed connection with a
    # warning in the journal at every request.
    assert status_of_raw_request(("::1", port), f"GET http://[::1:{port}/ HTTP/1.1") == 400
    assert daemon.stop() == 0
    assert "Invalid IPv6" not in daemon.log()


def test_the_view_is_off_by_default_and_nothing_listens(daemons):  # noqa: F811
    daemon = daemons({"cameras": [{"name": "clip", "source": str(CLIP), "loop": True}]})
    daemon.wait_metric('edge_emotion_frames_processed_total{camera="clip"}', lambda v: v >= 3, 30)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 9109), timeout=2).close()
    assert "live view" not in daemon.log()
    assert daemon.stop() == 0
