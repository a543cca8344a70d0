"""Live view: what each camera sees, on a local page (off by default).

For setting a camera up: is it aimed right, are faces big enough for ``detector.min_size``, does
the label match the face? ``GET /`` is a page with one tile per camera, ``GET /api/cameras`` the
same as JSON without images, ``GET /snapshot/<camera>.jpg`` the latest analysed frame with each
face's box, track id, emotion and confidence drawn on it.

Privacy: frames are JPEG-encoded in memory only when a client asks for a snapshot (the page asks
once a second while it is open), never written to disk, never published on MQTT. Anyone who can
reach the port sees the cameras: it listens on loopback unless configured otherwise. On loopback
it answers only requests addressed to a loopback name (``Host: localhost:…``, ``127.0.0.1``,
``[::1]``): a web page the operator visits could otherwise point its own host name at 127.0.0.1
(DNS rebinding) and read the snapshots.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Sequence
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import cv2
import numpy as np

from edge.pipeline import CameraAnalysis, Shown
from edge.serving import bound, request_path

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
BOX_COLOUR = (0, 200, 0)  # BGR


def draw(shown: Shown, faces: list[dict]) -> np.ndarray:
    """The analysed frame with the faces' boxes and labels, as a colour image."""
    gray = shown.gray
    image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if gray.ndim == 2 else gray.copy()
    for face in faces:
        x, y, w, h = face["box"]
        cv2.rectangle(image, (x, y), (x + w, y + h), BOX_COLOUR, 2)
        label = f"#{face['track_id']} {face['emotion']} {face['confidence']:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
        top = max(th + 8, y)  # a black strip above the box, the label on it
        cv2.rectangle(image, (x, top - th - 8), (x + tw + 6, top), (0, 0, 0), cv2.FILLED)
        cv2.putText(image, label, (x + 3, top - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.6, BOX_COLOUR, 2)
    return image


def seen(camera: CameraAnalysis) -> list[dict]:
    """The faces the camera sees now: none while it is down (its last frame's tracks have
    ended, and the page and the snapshot must not show them as present)."""
    shown = camera.shown
    return shown.faces if shown and camera.reader.stats.up else []


def describe(camera: CameraAnalysis) -> dict:
    """What the page shows of a camera, without the image."""
    stats, shown = camera.reader.stats, camera.shown
    return {
        "name": camera.name,
        "up": stats.up,
        "analysed_fps": round(camera.analysed_fps(), 2),
        "frames_dropped": stats.frames_dropped,
        "last_error": stats.last_error,
        "faces": seen(camera),
        "frame_age_s": round(shown.age(), 2) if shown else None,
    }


class ViewServer:
    def __init__(self, host: str, port: int, cameras: Sequence[CameraAnalysis]) -> None:
        self.cameras = {camera.name: camera for camera in cameras}
        handler = type("Handler", (_Handler,), {"view": self})
        self._server = _Server((host, port), handler)  # raises OSError (port used)
        bound(self._server, "view")
        self.loopback_only = _is_loopback(host)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="view", daemon=True)

    def start(self) -> ViewServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self, name: str) -> bytes | None:
        camera = self.cameras.get(name)
        if camera is None or camera.shown is None:
            return None
        quality = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ok, jpeg = cv2.imencode(".jpg", draw(camera.shown, seen(camera)), quality)
        return jpeg.tobytes() if ok else None


def _malformed_host(headers: Message) -> bool:
    """Two Host headers, or a header line the parser could not read (``Host : evil.example``,
    a blank before the colon), which RFC 9112 (3.2, 5.1) says to answer 400: the parser took
    that line and all after it for the body, so the request had no Host to check against a
    DNS-rebinding page's."""
    return len(headers.get_all("Host") or []) > 1 or bool(headers.defects)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``localhost:9109`` -> ``localhost``; ``[::1]:9109`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class _Server(ThreadingHTTPServer):
    """IPv4 or IPv6, as the host says (the standard one is IPv4 only: ``::1`` failed)."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        self.address_family = family
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    view: ViewServer
    server_version = "edge-emotion-view"
    sys_version = ""  # no Python version in the Server header
    _head = False  # the request is a HEAD: headers as for GET, no body

    def do_HEAD(self) -> None:
        self._head = True
        self.do_GET()

    def do_GET(self) -> None:
        target = request_path(self.path)
        if target is None:
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", b"not a request target\n")
            return
        path = unquote(target)
        if _malformed_host(self.headers):
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", b"malformed or repeated Host header\n")
            return
        host = self.headers.get("Host")
        if self.view.loopback_only and host is not None and not _is_loopback(_host_name(host)):
            body = b"forbidden: open the view as http://localhost:<port>/ or http://127.0.0.1:<port>/\n"
            self._send(HTTPStatus.FORBIDDEN, "text/plain", body)
            return
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
        elif path == "/api/cameras":
            body = json.dumps([describe(c) for c in self.view.cameras.values()]).encode()
            self._send(HTTPStatus.OK, "application/json", body)
        elif path.startswith("/snapshot/") and path.endswith(".jpg"):
            name = path[len("/snapshot/") : -len(".jpg")]
            if name not in self.view.cameras:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no such camera\n")
                return
            jpeg = self.view.snapshot(name)
            if jpeg is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
            else:
                self._send(HTTPStatus.OK, "image/jpeg", jpeg)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("view: " + format, *args)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-emotion: live view</title>
<style>
body { font-family: sans-serif; background: #111; color: #eee; margin: 1em; }
#tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1em; }
.tile { background: #222; padding: .5em; border-radius: 6px; }
.tile img { width: 100%; background: #000; min-height: 120px; }
.down { color: #f66; } .up { color: #6f6; }
</style></head>
<body><h1>edge-emotion: live view</h1><div id="tiles"></div>
<script>
const tiles = document.getElementById("tiles");
function tile(name) {
  let t = document.querySelector(`.tile[data-camera="${CSS.escape(name)}"]`);
  if (!t) {
    t = document.createElement("div");
    t.className = "tile"; t.dataset.camera = name;
    t.innerHTML = '<h2></h2><img alt=""><p class="status"></p><ul class="faces"></ul>';
    t.querySelector("h2").textContent = name;
    t.querySelector("img").alt = "camera " + name;
    tiles.appendChild(t);
  }
  return t;
}
async function refresh() {
  try {
    const cameras = await (await fetch("/api/cameras", {cache: "no-store"})).json();
    for (const c of cameras) {
      const t = tile(c.name);
      const status = t.querySelector(".status");
      status.className = "status " + (c.up ? "up" : "down");
      status.textContent = (c.up ? "up" : "down") + ", " + c.analysed_fps + " fps analysed, "
        + c.frames_dropped + " dropped" + (c.last_error ? ", last error: " + c.last_error : "")
        + (!c.up && c.frame_age_s !== null
           ? ", last frame " + Math.round(c.frame_age_s) + " s ago" : "");
      const faces = t.querySelector(".faces");
      faces.replaceChildren(...c.faces.map(f => {
        const li = document.createElement("li");
        li.className = "face";
        li.textContent = "#" + f.track_id + " " + f.emotion + " " + f.confidence.toFixed(2);
        return li;
      }));
      if (c.frame_age_s !== null) {
        const src = "/snapshot/" + encodeURIComponent(c.name) + ".jpg?t=" + Date.now();
        t.querySelector("img").src = src;
      }
    }
  } catch (e) { /* the daemon restarting: try again */ }
  setTimeout(refresh, 1000);
}
refresh();
</script></body></html>
"""
