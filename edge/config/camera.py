"""Camera configuration: where frames come from and how often they are analysed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edge.config.section import Section

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # safe as one MQTT topic level and as a metric label
# Not rtmp: FFmpeg's "timeout" option (set for every stream, see edge.video) makes RTMP listen.
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp")
# OpenCV takes an index as a C int and V4L2 numbers devices from 0; no machine has 1000 cameras.
MAX_USB_INDEX = 999
# A URL's scheme, read without a URL parser: ``urlsplit`` reads ``[...]`` after the ``@`` of
# credentials as an IPv6 host and its error quotes what is inside (the password).
SCHEME_NAME = r"[A-Za-z][A-Za-z0-9+.-]*"
SCHEME = re.compile(rf"({SCHEME_NAME}):")
# A newline in a source would forge lines in the log and in the live view's camera list.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CameraConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    # rtsp://… (or another FFmpeg URL), a USB camera index (0), /dev/videoN, or a video file.
    source: int | str
    fps: float = Field(10.0, gt=0, le=60, description="analysis rate cap")
    loop: bool = Field(False, description="restart a video file at its end (demos)")
    open_timeout_s: float = Field(5.0, gt=0, le=60)
    # Longer than the camera's longest gap between frames: a silence this long is an outage
    # (camera_up 0), and the frame after it, FFmpeg's leftover from before, is not analysed.
    read_timeout_s: float = Field(5.0, gt=0, le=60)
    # RTSP only. TCP by default: no UDP packet loss smearing frames, and it crosses NAT and
    # firewalls; some cameras (and multicast setups) serve UDP only.
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    @field_validator("source", mode="before")
    @classmethod
    def _known_source(cls, value: object) -> object:
        # Messages never quote the source: a mistyped URL may still carry a password.
        if isinstance(value, bool):
            raise ValueError(
                "expected a stream URL, a USB camera index or a video file, not a boolean"
            )
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)  # not "٣": Python's int() reads other scripts' digits too
        if isinstance(value, int):
            if not 0 <= value <= MAX_USB_INDEX:
                raise ValueError(f"a USB camera index must be 0 to {MAX_USB_INDEX}")
            return value
        if not isinstance(value, str):
            return value  # pydantic names the wrong type
        if value != value.strip():
            raise ValueError("starts or ends with white space (quote the value without it)")
        if CONTROL.search(value):
            raise ValueError("holds a control character (a line break?)")
        scheme = match.group(1).lower() if (match := SCHEME.match(value)) else ""
        if value.startswith("/dev/"):
            return value
        if scheme in STREAM_SCHEMES:
            if "://" not in value:
                raise ValueError(
                    f"a {scheme} URL needs '://' after the scheme ({scheme}://host/path)"
                )
            # As mask_url: all before the last '@' is credentials, which may hold '/'.
            address = value.split("://", 1)[1].rpartition("@")[2].split("/", 1)[0]
            if not address:
                raise ValueError(f"a {scheme} URL needs a host ({scheme}://host/path)")
            _check_port(scheme, address)
            # FFmpeg knows its protocols by their lower-case names only.
            return scheme + value[len(scheme) :]
        if "://" in value:
            raise ValueError(
                f"unsupported stream scheme {scheme!r} (use {', '.join(STREAM_SCHEMES)})"
            )
        if "@" in value:
            raise ValueError(
                "looks like a stream URL without its scheme: put rtsp:// (or another) first"
            )
        if not Path(value).is_file():
            raise ValueError("no such video file (nor a stream URL or USB camera index)")
        # Absolute: FFmpeg reads a relative name with a colon (``pipe:0``, ``file:x.mkv``) as
        # one of its protocols, so a file so named was never opened (stdin was read instead).
        return os.path.abspath(value)

    @property
    def kind(self) -> str:
        """usb | stream | file: decides how the reader opens and reconnects."""
        if isinstance(self.source, int) or str(self.source).startswith("/dev/"):
            return "usb"
        return "stream" if "://" in str(self.source) else "file"

    def masked_source(self) -> str:
        return mask_url(str(self.source))


# key=value pairs that carry credentials in a URL's path or query (many cameras take
# ``/user=admin&password=...``, ``?usr=admin&pwd=...`` or ``?loginuse=...&loginpas=...``): any
# key that contains one of these words, whatever is around it (``user_password``).
CREDENTIAL_PAIR = re.compile(
    r"(?i)([A-Za-z0-9_.-]*(?:user|usr|login|pass|pwd|pw|token|auth|secret|key|sig|cred)"
    r"[A-Za-z0-9_.-]*)=[^&;/?#\s]*"
)
# Inside a URL every key=value is masked except these: what a camera's URL names that is not a
# secret. Vendors spell credentials every way (``?u=admin&p=...``, ``;credentials=...``), and
# hiding a harmless value costs less than showing a password.
ANY_PAIR = re.compile(r"([A-Za-z0-9_.-]+)=([^&;/?#\s]*)")
SHOWN_KEYS = frozenset(
    [
        *("channel", "ch", "chn", "subtype", "stream", "streamtype", "profile", "resolution"),
        *("res", "codec", "videocodec", "fps", "transport", "rtsp_transport", "unicast"),
        *("proto", "mode", "type", "camera", "cam", "id", "quality", "width", "height"),
        *("media", "audio"),
    ]
)
URL = re.compile(rf"{SCHEME_NAME}://\S+")


def _check_port(scheme: str, address: str) -> None:
    """``host:99999`` would pass as a source and fail at every reconnect, for months: said at
    start-up instead. ``address`` is what follows the credentials (``host``, ``host:port``,
    ``[v6]:port``), so a password with ``:`` or ``#`` in it is never taken for a port."""
    address = re.split(r"[?#]", address, maxsplit=1)[0]  # rtsp://h:554?channel=1
    host, colon, port = address.rpartition(":") if not address.endswith("]") else ("", "", "")
    if not colon or (host.count(":") and not host.endswith("]")):  # none, or bare IPv6
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port of a {scheme} URL must be 1 to 65535")


def mask_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://***:***@host/x``: credentials never reach logs.

    By structure, not by parsing: everything before the last ``@`` after the scheme is
    credentials (a password may hold ``/``, ``#`` or ``?``, which a URL parser takes for the
    end of the host), and credential-like ``key=value`` pairs anywhere are masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return CREDENTIAL_PAIR.sub(lambda m: f"{m.group(1)}=***", url)
    at = rest.rfind("@")
    if at != -1:
        rest = "***:***@" + rest[at + 1 :]
    return f"{scheme}://" + ANY_PAIR.sub(_mask_pair, rest)


def _mask_pair(match: re.Match) -> str:
    key = match.group(1)
    return match.group(0) if key.lower() in SHOWN_KEYS else f"{key}=***"


# A URL given where a path goes (``edge analyze rtsp://user:pass@cam/x``) comes back from
# ``pathlib`` with one slash: ``rtsp:/user:pass@cam/x``.
COLLAPSED_URL = re.compile(rf"({SCHEME_NAME}:/)[^/\s]\S*@")
# Such a path, with or without credentials (``match`` it against ``str(path)``).
URL_AS_PATH = re.compile(rf"{SCHEME_NAME}:/")


def mask_urls(text: str) -> str:
    """Every URL inside ``text`` masked (error messages may quote a source)."""
    text = URL.sub(lambda m: mask_url(m.group(0)), text)
    return COLLAPSED_URL.sub(lambda m: f"{m.group(1)}***:***@", text)
