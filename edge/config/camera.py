"""Camera configuration: where frames come from and how often they are analysed."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # safe as one MQTT topic level and as a metric label
# Not rtmp: FFmpeg's "timeout" option (set for every stream, see edge.video) makes RTMP listen.
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp")


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    # rtsp://… (or another FFmpeg URL), a USB camera index (0), /dev/videoN, or a video file.
    source: int | str
    fps: float = Field(10.0, gt=0, le=60, description="analysis rate cap")
    loop: bool = Field(False, description="restart a video file at its end (demos)")
    open_timeout_s: float = Field(5.0, gt=0, le=60)
    read_timeout_s: float = Field(5.0, gt=0, le=60)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a USB camera index must be 0 or more")
            return value
        if value.isdigit():
            return int(value)
        scheme = urlsplit(value).scheme.lower()
        if scheme in STREAM_SCHEMES or value.startswith("/dev/"):
            return value
        if "://" in value:
            raise ValueError(
                f"unsupported stream scheme {scheme!r} (use {', '.join(STREAM_SCHEMES)})"
            )
        if not Path(value).is_file():
            raise ValueError(f"video file {value!r} does not exist")
        return value

    @property
    def kind(self) -> str:
        """usb | stream | file: decides how the reader opens and reconnects."""
        if isinstance(self.source, int) or str(self.source).startswith("/dev/"):
            return "usb"
        return "stream" if "://" in str(self.source) else "file"

    def masked_source(self) -> str:
        return mask_url(str(self.source))


# key=value pairs that carry credentials in a URL's path or query (many cameras take
# ``/user=admin&password=...`` or ``?user=...&password=...``).
CREDENTIAL_PAIR = re.compile(
    r"(?i)\b(user(?:name)?|login|pass(?:word|wd)?|pwd|token|auth|secret|(?:api_?)?key)=[^&;/?#\s]*"
)
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


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
    return f"{scheme}://" + CREDENTIAL_PAIR.sub(lambda m: f"{m.group(1)}=***", rest)


def mask_urls(text: str) -> str:
    """Every URL inside ``text`` masked (error messages may quote a source)."""
    return URL.sub(lambda m: mask_url(m.group(0)), text)
