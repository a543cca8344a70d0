"""Camera configuration: where frames come from and how often they are analysed."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # safe as one MQTT topic level and as a metric label
# Not rtmp: FFmpeg's "timeout" option (set for every stream, see edge.video) makes RTMP listen.
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp")


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


def mask_url(url: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://***:***@host/x``: credentials never reach logs."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***:***@{host}"))
