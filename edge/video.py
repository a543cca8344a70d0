"""Camera stage: one reader thread per camera, keeping only the freshest frame.

A live stream must be drained as fast as it arrives or its frames go stale, so each reader runs
on its own thread and overwrites a single slot; the analysis side takes the newest frame when it
is ready, and every frame overwritten unseen is counted as dropped. A reader that cannot open or
read its source releases it and reopens with capped exponential backoff, so a camera that comes
back is picked up again without restarting the daemon, and one that is down blocks nobody.

Streams and files are demuxed and decoded by FFmpeg through PyAV, not OpenCV: OpenCV's FFmpeg
backend serialises every open behind one process-wide lock, so a camera that accepts a
connection and never answers held every other camera's open (and reconnect) for its whole
timeout. PyAV releases the GIL in open, read and decode and times each out with its own
interrupt callback, so cameras are independent. Decoding is single-threaded per camera (the
cores are shared by all cameras and the analysis), and the frame handed on is the luma plane:
the gray image the detector needs, without a colour conversion. USB cameras stay on OpenCV's
V4L2 backend, which takes no such lock.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import av
import cv2
import numpy as np

from edge import MAX_IMAGE_PIXELS
from edge.config import CameraConfig
from edge.config.camera import mask_urls

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
# Capped low enough that a stream which returns is read again within 10 s (open takes ~2 s).
BACKOFF_MAX_S = 5.0
# A stream counts as back only after delivering this long: one that closes after a frame or
# two (an HTTP snapshot URL, a server that drops every session) is reopened with the backoff
# of a failed open, not at once, and warned about once, not at every cycle.
STABLE_S = 10.0
# A refusal by the server (wrong password, wrong path) needs the operator: it is retried at
# most once a minute. A login refused is retried a minute later from the first: many cameras
# lock an account after three to five failed logins, which the doubling from 0.5 s took 4 s to
# reach. A wrong path (404) doubles up to the minute: an NVR may serve a path only once booted.
REFUSED_BACKOFF_MAX_S = 60.0
REFUSALS = ("Server returned 401", "Server returned 403", "Server returned 404")
LOGIN_REFUSALS = ("Server returned 401", "Server returned 403")
FULL_RANGE = 2  # AVCOL_RANGE_JPEG
LIMITED_TO_FULL = np.clip((np.arange(256) - 16) * 255 / 219 + 0.5, 0, 255).astype(np.uint8)
# FFmpeg probes a stream for 5 s (analyzeduration) before handing over its first frame; half a
# second is several frames of any camera and the SDP names the codec, so an RTSP open took 0.4 s
# instead of 2 s here. The RTSP transport is the camera's setting (CameraConfig.rtsp_transport).
STREAM_OPTIONS = {"analyzeduration": "500000", "probesize": "100000"}
# A damaged packet (a bit error, a lost UDP packet, a file cut or overwritten in places) fails to
# decode, and the next keyframe decodes again: the session goes on, and ends only after this many
# failures in a row (a stream that is no longer video at all).
MAX_BAD_PACKETS = 25
# How far past its own timeouts (open_timeout_s, twice read_timeout_s: FFmpeg fails only at
# its second timeout, see _read_until_failure) or its backoff a reader may be before it counts
# as stuck in native code, for the watchdog. FFmpeg resolves host names without a timeout
# (getaddrinfo: up to 30 s with DNS servers that do not answer): not a hang.
STUCK_AFTER_S = 60.0
# The character devices of Video4Linux (/dev/video*, also /dev/v4l/by-id/* links to them);
# others (/dev/null, a serial port) are not cameras.
V4L2_MAJOR = 81
# A title in Latin-1 (a camera's SDP session name, a file's tag) is not ours to read: with the
# strict default of PyAV before 19 it made the camera impossible to open. PyAV 19 (Python 3.12+)
# decodes such titles with escapes itself and no longer takes the keyword.
METADATA_ERRORS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}
# Pixel formats whose first plane is the 8-bit luma, i.e. the gray frame, as it is.
LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}


@dataclass(frozen=True)
class Frame:
    camera: str
    image: np.ndarray  # BGR, as decoded
    captured: float  # Unix time when the reader got it (reported in events)
    monotonic: float  # the same instant on the monotonic clock (durations; immune to NTP steps)
    index: int  # per-camera sequence number


@dataclass
class ReaderStats:
    """Counters the metrics stage reads; written by the reader thread only."""

    frames_read: int = 0
    frames_dropped: int = 0  # replaced unanalysed while analysis was due: the CPU is behind
    frames_skipped: int = 0  # replaced unanalysed by design: the camera's fps cap
    reconnects: int = 0
    up: bool = False
    last_error: str = ""  # the latest reason it went down (sources masked), for the live view


class Source(Protocol):
    """An opened camera: its frames until the source ends (returns) or fails (raises OSError)."""

    pace: float  # seconds per frame to play a file at its own rate; 0 for live sources
    finite: bool  # a file or a recording: its end is the end, not an outage to reconnect after

    def frames(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


Opener = Callable[[CameraConfig], Source]


class FrameTooLarge(OSError):
    """A frame over MAX_IMAGE_PIXELS: the session ends, as for any read failure."""


class FFmpegSource:
    """A network stream or a video file, demuxed and decoded by FFmpeg (PyAV)."""

    def __init__(self, camera: CameraConfig) -> None:
        self.camera = camera
        options = {}
        if camera.kind == "stream":
            options = {**STREAM_OPTIONS, "rtsp_transport": camera.rtsp_transport}
        timeout = (camera.open_timeout_s, camera.read_timeout_s)
        started = time.monotonic()
        try:
            self._container = av.open(
                str(camera.source), options=options, timeout=timeout, **METADATA_ERRORS
            )
        except (av.FFmpegError, OSError, ValueError) as error:
            # The open timeout ends the open with whatever FFmpeg was reading ("Invalid data
            # found when processing input" for a camera that never answered): said as it is.
            timed_out = time.monotonic() - started >= camera.open_timeout_s
            reason = (
                f"no answer within open_timeout_s ({camera.open_timeout_s:g} s)"
                if timed_out
                else _reason(error) + _transport_hint(camera, error)
            )
            raise OSError(f"cannot open {camera.masked_source()}: {reason}") from None
        if not self._container.streams.video:
            self.close()
            raise OSError(f"cannot open {camera.masked_source()}: it has no video stream")
        try:
            self._stream = self._container.streams.video[0]
            codec = self._stream.codec_context
            if codec is None:  # FFmpeg has no decoder for it (a vendor's own codec id)
                self.close()
                raise OSError(
                    f"cannot open {camera.masked_source()}: no decoder for its video "
                    f"(codec {_codec_name(self._stream)!r})"
                )
            codec.thread_count, codec.thread_type = 1, "NONE"
            # The decoder refuses to allocate a picture over the limit: a stream that grows
            # past it mid-session (a new SPS, a JPEG declaring 65000x30000) is cut before its
            # gigabytes are allocated and decoded, not after.
            codec.options = {"max_pixels": str(MAX_IMAGE_PIXELS)}
        except (av.FFmpegError, RuntimeError) as error:
            self.close()
            raise OSError(f"cannot open {camera.masked_source()}: no video ({error})") from None
        if _too_large(codec.width, codec.height):
            # A 500-byte GIF can declare a 16000x16000 canvas: 3 GB per frame for the whole
            # daemon, every camera with it. edge analyze refuses such files too.
            self.close()
            raise OSError(
                f"cannot open {camera.masked_source()}: {_too_large(codec.width, codec.height)}"
            )
        self.finite = camera.kind == "file" or _recording(camera, self._container)
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.pace = 0.0 if not self.finite else (1 / fps if 1 <= fps <= 240 else 1 / 25)

    def frames(self) -> Iterator[np.ndarray]:
        bad = 0
        try:
            for packet in self._container.demux(self._stream):
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    bad += 1
                    if bad >= MAX_BAD_PACKETS:
                        raise
                    continue
                except av.ArgumentError:  # what max_pixels answers (EINVAL), size not told
                    raise FrameTooLarge(
                        f"{self.camera.masked_source()}: a frame the decoder refused (over "
                        f"the {MAX_IMAGE_PIXELS // 10**6}-megapixel limit, or invalid)"
                    ) from None
                bad = 0
                for frame in decoded:
                    # Checked per frame too: a stream may start small and grow (a new SPS),
                    # and one that opened before its size was known declared 0x0.
                    too_large = _too_large(frame.width, frame.height)
                    if too_large:
                        raise FrameTooLarge(
                            f"{self.camera.masked_source()}: a frame of {too_large}"
                        )
                    yield upright(frame, luma(frame))
        except FrameTooLarge:
            raise
        except (av.FFmpegError, OSError, ValueError) as error:
            raise OSError(f"{self.camera.masked_source()}: {_reason(error)}") from None

    def close(self) -> None:
        self._container.close()


def _too_large(width: int, height: int) -> str:
    """Why an image of this size is refused, or "" when it is not."""
    if width * height <= MAX_IMAGE_PIXELS:
        return ""
    return f"{width}x{height} is larger than {MAX_IMAGE_PIXELS // 10**6} megapixels"


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    """The stream's codec as the container names it (no decoder means no codec context)."""
    try:
        return stream.codec.name
    except Exception:  # only a name for the message
        return "unknown"


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The frame as full-range 8-bit gray, from the luma plane where there is one.

    Video luma is usually "limited range" (16..235); the gray that OpenCV makes from the
    decoded colour frame, and the JPEG faces the model learnt from, span 0..255, so limited
    luma is stretched by a lookup table (what a colour conversion would do, at a fraction of
    its cost). Full-range (JPEG) luma is used as it is.
    """
    name = frame.format.name
    if name not in LUMA_FIRST:
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    if name.startswith("yuvj") or frame.color_range == FULL_RANGE:
        return rows[:, : plane.width].copy()
    return cv2.LUT(rows[:, : plane.width], LIMITED_TO_FULL)


def upright(frame: av.VideoFrame, gray: np.ndarray) -> np.ndarray:
    """The image as players show it: a phone's portrait video is stored sideways with a
    rotation in its metadata, and a sideways face is no face to Haar."""
    turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(gray, turns)) if turns else gray


def _recording(camera: CameraConfig, container: av.container.InputContainer) -> bool:
    """An HTTP(S) URL with a duration is a recording (an MP4 on a web server, an HLS playlist
    that ends), not a camera: played at its own rate and once, like a file, instead of being
    downloaded as fast as it comes and replayed as a camera that "returned" after each end.
    Live HTTP streams (MJPEG, live HLS) have no duration; RTSP is always taken as a camera.
    Nor is a snapshot URL (one still image per request, which FFmpeg may give the duration of
    one frame) a recording: it is a camera, read again and again."""
    web = str(camera.source).startswith(("http://", "https://"))  # scheme lowercased by config
    name = container.format.name
    still = name == "image2" or name.endswith("_pipe")  # jpeg_pipe, png_pipe, ...
    return web and not still and (container.duration or 0) > 0


def _refused(error: str) -> bool:
    """The server answered and said no (HTTP-style status in FFmpeg's message)."""
    return any(word in error for word in REFUSALS)


def _reason(error: Exception) -> str:
    """FFmpeg's words without the URL (which may carry credentials) that PyAV appends."""
    if isinstance(error, av.ExitError):  # our timeout's interrupt, in FFmpeg's words
        return "no answer within the timeout (open_timeout_s, read_timeout_s)"
    return getattr(error, "strerror", None) or type(error).__name__


def _transport_hint(camera: CameraConfig, error: Exception) -> str:
    """An RTSP server that refuses the transport answers 461, which FFmpeg reports as
    "Protocol not supported": name the setting that fixes it."""
    if getattr(error, "errno", None) != errno.EPROTONOSUPPORT:
        return ""
    if not str(camera.source).startswith(("rtsp://", "rtsps://")):
        return ""
    other = "udp" if camera.rtsp_transport == "tcp" else "tcp"
    return f" (the camera refuses RTSP over {camera.rtsp_transport}: try rtsp_transport: {other})"


def _device_problem(source: int | str) -> str:
    """Why a V4L2 device would not open, where the file system can tell: OpenCV cannot."""
    path = f"/dev/video{source}" if isinstance(source, int) else str(source)
    try:
        mode = os.stat(path)
        if not stat.S_ISCHR(mode.st_mode) or os.major(mode.st_rdev) != V4L2_MAJOR:
            return f" ({path} is not a video device)"
    except FileNotFoundError:
        return f" ({path} does not exist: unplugged, or another index?)"
    except OSError as error:
        return f" ({path}: {error.strerror})"
    if not os.access(path, os.R_OK | os.W_OK):
        return f" (permission denied on {path}: is the daemon's user in group video?)"
    return ""


class V4l2Source:
    """A USB camera through OpenCV's V4L2 backend."""

    pace = 0.0
    finite = False

    def __init__(self, camera: CameraConfig) -> None:
        self.camera = camera
        self._capture = cv2.VideoCapture(camera.source, cv2.CAP_V4L2)
        if not self._capture.isOpened():
            self._capture.release()
            raise OSError(f"cannot open {camera.masked_source()}{_device_problem(camera.source)}")

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            try:
                ok, image = self._capture.read()
            except cv2.error as error:
                raise OSError(f"{self.camera.masked_source()}: {error}") from None
            if not ok or image is None:
                raise OSError(f"{self.camera.masked_source()}: read failed")
            yield image

    def close(self) -> None:
        self._capture.release()


def open_source(camera: CameraConfig) -> Source:
    """Open a camera with the backend and timeouts it needs; raises OSError if it won't open."""
    return V4l2Source(camera) if camera.kind == "usb" else FFmpegSource(camera)


class CameraReader:
    """Reads one camera on a daemon thread; ``latest()`` hands out the newest unseen frame."""

    def __init__(
        self,
        camera: CameraConfig,
        opener: Opener = open_source,
        on_frame: Callable[[], None] = lambda: None,
    ) -> None:
        self.camera = camera
        self.stats = ReaderStats()
        self._opener, self._on_frame = opener, on_frame
        # Whether the analysis wants a frame now (its rate cap allows one); wired by the daemon.
        # A frame replaced unanalysed then was dropped (behind), else skipped (the cap).
        self.due: Callable[[], bool] = lambda: True
        self._slot: Frame | None = None
        self._fresh = threading.Condition()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self.crashed = False  # stopped by an error of ours, not by its source: see _run
        self._warned = False
        self._flapping = False  # the last session ended within STABLE_S of its first frame
        # Monotonic time by which the thread must have come back from what it is doing (an
        # open, a read, a backoff): later, it is stuck (``stuck_for``).
        self._due_back = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)

    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._fresh:
            self._fresh.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """True once a non-looping video file has been read to its end (or the reader stopped)."""
        return self._finished.is_set()

    def latest(self, timeout: float = 0.0) -> Frame | None:
        """The newest frame not handed out before, waiting up to ``timeout`` seconds for one."""
        with self._fresh:
            if self._slot is None and timeout > 0:
                self._fresh.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    @property
    def has_frame(self) -> bool:
        return self._slot is not None

    def stuck_for(self, now: float) -> float:
        """Seconds the reader thread is overdue from an open, a read or a backoff: a thread
        stuck inside FFmpeg or OpenCV, which only a restart frees. 0 while it keeps its
        timeouts (a camera that is down is retried, and is not stuck)."""
        if not self.alive or self._finished.is_set():
            return 0.0
        return max(0.0, now - self._due_back)

    def _back_within(self, seconds: float) -> None:
        self._due_back = time.monotonic() + seconds + STUCK_AFTER_S

    def _run(self) -> None:
        backoff, index = BACKOFF_START_S, 0
        try:
            while not self._stop.is_set():
                self._back_within(self.camera.open_timeout_s)
                try:
                    source = self._opener(self.camera)
                except OSError as error:
                    if self._stop.is_set():
                        return  # an open cut short by the stop (or a reload): not an outage
                    if self._unreadable_file(str(error)):
                        return
                    if any(word in str(error) for word in LOGIN_REFUSALS):
                        # Its own wait: the backoff of the failures after it stays theirs.
                        self._down(f"{error}; retrying in {REFUSED_BACKOFF_MAX_S:.0f} s")
                        self._pause(REFUSED_BACKOFF_MAX_S)
                        continue
                    self._down(f"{error}; retrying in {backoff:.1f} s")
                    backoff = self._pause(backoff, refused=_refused(str(error)))
                    continue
                first, opened = index, time.monotonic()
                try:
                    index, ended, why = self._read_until_failure(source, index, opened)
                finally:
                    source.close()
                if self._stop.is_set():
                    return
                if index == first:  # opened, but not one frame: back off like a failed open
                    problem = f"{self.camera.masked_source()} opened but gave no frame ({why})"
                    if self._unreadable_file(problem):
                        return
                    self._down(problem)
                    backoff = self._pause(backoff)
                    continue
                self._flapping = time.monotonic() - opened < STABLE_S
                if not self._flapping:
                    backoff = BACKOFF_START_S
                    if self.stats.up:  # a new outage, unless a silence already said it
                        self._warned = False
                if ended and not self.camera.loop:
                    what = "file" if self.camera.kind == "file" else "the recording"
                    log.info("camera %s: end of %s", self.camera.name, what)
                    return
                if not ended:
                    self.stats.reconnects += 1
                    if self._flapping:
                        # Still up: its frames come, a backoff apart (a snapshot URL gives one
                        # per session); down if the reopen fails or gives no frame.
                        self._down(
                            f"stream stopped delivering frames ({why}) within {STABLE_S:.0f} s "
                            f"of opening; reopening in {backoff:.1f} s",
                            still_up=True,
                        )
                        backoff = self._pause(backoff)
                    else:
                        self._down(f"stream stopped delivering frames ({why}); reopening")
        except Exception as error:  # a bug, or a library failing in a way not foreseen
            # Not "the source ended": the daemon exits 1 so that systemd restarts it.
            self.crashed = True
            log.error(
                "camera %s: reader stopped by %s: %s",
                self.camera.name,
                type(error).__name__,
                mask_urls(str(error)),
            )
        finally:
            self.stats.up = False
            self._finished.set()
            with self._fresh:
                self._fresh.notify_all()
            self._on_frame()

    def _unreadable_file(self, problem: str) -> bool:
        """A video file (not looped) that cannot be read has ended, like one read to its end:
        retrying it forever would only fill the log."""
        if self.camera.kind != "file" or self.camera.loop:
            return False
        log.error("camera %s: %s; the file is not read again", self.camera.name, problem)
        return True

    def _pause(self, backoff: float, refused: bool = False) -> float:
        """Wait ``backoff`` seconds (or until stopped); returns the next, doubled, capped wait."""
        self._back_within(backoff)
        self._stop.wait(backoff)
        return min(backoff * 2, REFUSED_BACKOFF_MAX_S if refused else BACKOFF_MAX_S)

    def _read_until_failure(
        self, source: Source, index: int, opened: float
    ) -> tuple[int, bool, str]:
        """Read until stopped or the source fails; returns (next index, reached end of file,
        why it stopped)."""
        next_due = last = time.monotonic()
        read_within = 2 * self.camera.read_timeout_s + source.pace
        self._back_within(self.camera.open_timeout_s + read_within)  # the first frame: probed
        try:
            for image in source.frames():
                self._back_within(read_within)
                if self._stop.is_set():
                    return index, False, "stopped"
                now = time.monotonic()
                silent = now - last >= self.camera.read_timeout_s
                if self.stats.up and silent and not source.finite:
                    # FFmpeg's read timed out (its next read starts after this loop hands the
                    # last frame on, so a gap this long is one), and it handed over what it
                    # had, to fail only at the next timeout: a frozen camera was up for twice
                    # the timeout. A slow camera inside the timeout is not down.
                    self._down(f"no frame for {now - last:.1f} s (read_timeout_s)")
                    # That frame is FFmpeg's leftover from before the silence, not the scene
                    # now: analysed as new, its face started a track that was already gone.
                    last = now
                    continue
                elif not self.stats.up:
                    self._up(first_ever=index == 0)
                elif self._flapping and now - opened >= STABLE_S:
                    self._steady()
                last = now
                self._publish(Frame(self.camera.name, image, time.time(), time.monotonic(), index))
                index += 1
                if source.pace:
                    next_due += source.pace
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
        except OSError as error:
            if source.finite and index > 0:
                # Damaged past what can be skipped, or a recording's download cut: the rest
                # cannot be read, and reading it again from the start would repeat the same
                # faces, forever.
                what = "file" if self.camera.kind == "file" else "recording"
                log.warning(
                    "camera %s: %s; the rest of the %s is skipped", self.camera.name, error, what
                )
                return index, True, str(error)
            return index, False, str(error)
        # A live stream that ends was closed by its server: reopen, as after a failure.
        return index, source.finite, "end of stream"

    def _publish(self, frame: Frame) -> None:
        with self._fresh:
            if self._slot is not None:
                if self.due():
                    self.stats.frames_dropped += 1
                else:
                    self.stats.frames_skipped += 1
            self._slot = frame
            self.stats.frames_read += 1
            self._fresh.notify_all()
        self._on_frame()

    def _up(self, first_ever: bool) -> None:
        """Back up: said once, and the next outage warned again. A source that keeps closing
        soon after opening stays one outage (debug lines) until a session lasts STABLE_S."""
        self.stats.up = True
        if self._flapping and not first_ever:
            log.debug("camera %s: reading %s", self.camera.name, self.camera.masked_source())
            return
        if first_ever or self.camera.kind != "file":
            log.info("camera %s: reading %s", self.camera.name, self.camera.masked_source())
        self._warned = False

    def _steady(self) -> None:
        """A flapping source has now delivered for STABLE_S: the outage warned about is over,
        said as it happens (not only at the session's end, which may be weeks away)."""
        self._flapping, self._warned = False, False
        log.info(
            "camera %s: reading %s steadily again", self.camera.name, self.camera.masked_source()
        )

    def _down(self, why: str, still_up: bool = False) -> None:
        """Warn once per outage; repeats while it lasts go to debug, not to the journal.
        ``still_up``: a session that delivered ended early, and ``camera_up`` stays 1 until
        the next one fails (a snapshot URL was "down" all but a moment of each cycle, and its
        Home Assistant sensors unavailable)."""
        self.stats.last_error = why
        if self._warned:
            log.debug("camera %s: %s", self.camera.name, why)
        else:
            log.warning("camera %s: %s", self.camera.name, why)
            self._warned = True
        self.stats.up = still_up
