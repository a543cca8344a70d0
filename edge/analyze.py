"""``python -m edge analyze``: the daemon's detector and classifier over image and video files.

For offline use and for checking a model on one's own footage: one line per face, nothing
tracked or smoothed, so every frame's raw result is visible.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge import DEFAULT_MODEL, MAX_IMAGE_PIXELS
from edge.cli import one_line, say_error
from edge.config.camera import URL_AS_PATH
from edge.emotions import EmotionClassifier, native_stderr_silenced
from edge.faces import FaceDetector, crop, to_gray

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm"}
# Reads that fail in a row before a video counts as ended: a damaged stretch of a file fails a
# few frames, and the frames after it are read (it stopped at the first, with exit code 0).
MAX_UNREADABLE_FRAMES = 25
ANIMATION_CHUNK = 16  # frames of an animated WebP/PNG decoded at a time (not all at once)


def is_image(path: Path, name: str) -> bool:
    """By name, else by content: a photo saved as ``.jfif`` or without an extension is a photo
    (and gets the image path's pixel limit and EXIF rotation), not a one-frame video. ``name``
    is the one OpenCV can open (``opencv_name``)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    # A GIF by its content, not its name: a PNG of 16000x16000 named .gif went to FFmpeg,
    # past the image path's pixel limit (2 GB of memory for a 249 KB file).
    return _gif_header(path) is None and cv2.haveImageReader(name)


@contextlib.contextmanager
def opencv_name(path: Path) -> Iterator[str]:
    """A name of ``path`` that OpenCV can take. Its Python binding crashed the process
    (SIGSEGV) on a file name that is not UTF-8, which Linux allows (a camera's SD card, a
    Latin-1 archive); such a file is opened here and given to it as /proc/self/fd/N."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Absolute: FFmpeg reads a relative name with a colon (``pipe:0``, ``file:x.mkv``) as one
    # of its protocols, and a file so named was never opened (stdin was read instead).
    yield os.path.abspath(path)


def shown(path: Path) -> str:
    """``path`` for output: undecodable bytes of its name as ``\\udcff`` escapes, so the
    line is printed (stdout is strict UTF-8) and still names the file."""
    return str(path).encode("utf-8", "backslashreplace").decode()


class ResultsNotWritten(Exception):
    """Standard output refuses the results (a full disk, closed): every later one would be
    lost too, so the run ends, and no input file is blamed for it."""


def _result(text: str) -> None:
    try:
        print(text, flush=True)  # a full disk is found here, not in a silent last flush
    except BrokenPipeError:
        raise  # the reader of our output went away: stop (edge.__main__ ends quietly)
    except OSError as error:
        raise ResultsNotWritten(
            f"the results cannot be written to standard output ({error.strerror or error})"
        ) from None


def analyze(paths: list[Path], model: Path | None, as_json: bool) -> int:
    """Print every face of every frame; a file that cannot be read is reported, the rest go on."""
    if sys.stdout is None:  # started with it closed (`>&-`)
        raise ResultsNotWritten("standard output is closed: nowhere to write the results")
    classifier = EmotionClassifier(model or DEFAULT_MODEL)
    detector = FaceDetector()  # every frame fully scanned: offline results are exhaustive
    failures = 0
    for path in paths:
        try:
            found = 0
            for index, frame in frames(path):
                gray = to_gray(frame)
                boxes = detector.detect(gray)
                probs = classifier.predict([crop(gray, box) for box in boxes])
                for box, p in zip(boxes, probs, strict=True):
                    _result(line(path, index, box.as_list(), classifier.labels, p, as_json))
                found += len(boxes)
            if not found:  # said, so an empty output is not mistaken for a failure or a hang
                name = one_line(shown(path))
                print(
                    f"edge analyze: {name}: no face found (frontal faces of 40 px or more)",
                    file=sys.stderr,
                )
        except BrokenPipeError:
            raise  # the reader of our output went away: stop (edge.__main__ ends quietly)
        except (OSError, cv2.error) as error:
            say_error("edge analyze", str(error))
            failures += 1
    return 1 if failures else 0


def frames(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    if path.is_dir():
        raise OSError(f"{path}: a directory, not an image or video")
    if not path.exists():
        if URL_AS_PATH.match(str(path)):
            raise OSError(
                f"{path}: a stream URL; analyze reads image and video files (a camera goes in "
                "the configuration of `edge run`)"
            )
        if path.is_symlink():
            raise OSError(f"{path}: a symbolic link to nothing (broken, or a loop)")
        raise OSError(f"{path}: no such file")
    if not path.is_file():
        raise OSError(f"{path}: not a regular file (a device or a pipe), not an image or video")
    with opencv_name(path) as name:
        yield from _decoded(path, name)


def _decoded(path: Path, name: str) -> Iterator[tuple[int, np.ndarray]]:
    if is_image(path, name):
        try:
            image = cv2.imread(name, cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV refuses sizes over the limit before decoding
            raise OSError(
                f"{path}: larger than {MAX_IMAGE_PIXELS // 10**6} megapixels, skipped"
            ) from None
        if image is None:
            raise OSError(f"{path}: not a readable image, skipped")
        yield 0, image
        yield from enumerate(_later_frames(path, name), start=1)
        return
    if _pixels_claimed(path) > MAX_IMAGE_PIXELS:
        raise OSError(f"{path}: larger than {MAX_IMAGE_PIXELS // 10**6} megapixels, skipped")
    # FFmpeg and OpenCV print their own complaints ("moov atom not found") to fd 2 when a file
    # is not a video; the line below says it once, in our words.
    with native_stderr_silenced():
        capture = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
    try:
        with native_stderr_silenced():
            ok, image = capture.read()
        if not ok:
            raise OSError(f"{path}: not a readable image or video")
        index, lost, failing = 0, 0, 0
        while failing < MAX_UNREADABLE_FRAMES:
            if ok:
                lost, failing = lost + failing, 0  # failures followed by a frame: damage
                yield index, image
                index += 1
            else:
                failing += 1  # damage, or the end of the file: told apart by what follows
            with native_stderr_silenced():  # FFmpeg's "error while decoding MB ..." lines
                ok, image = capture.read()
        if lost:
            raise OSError(f"{path}: {lost} damaged frames could not be decoded and were skipped")
    finally:
        capture.release()


def _later_frames(path: Path, name: str) -> Iterator[np.ndarray]:
    """The frames after the first of an animated WebP or PNG, or the pages of a TIFF:
    ``imread`` gives the first only, and a clip shared as an animated WebP was one frame."""
    try:
        count = cv2.imcount(name)
    except cv2.error:
        return
    for start in range(1, count, ANIMATION_CHUNK):
        try:
            ok, animation = cv2.imreadanimation(name, start=start, count=ANIMATION_CHUNK)
        except cv2.error:
            ok = False
        if not ok:
            raise OSError(f"{path}: frames {start} to {count - 1} could not be read, skipped")
        for frame in animation.frames:
            yield (
                cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
                if frame.ndim == 3 and frame.shape[2] == 4
                else frame
            )


def _gif_header(path: Path) -> bytes | None:
    with path.open("rb") as file:
        header = file.read(10)
    return header if header[:6] in (b"GIF87a", b"GIF89a") else None


def _pixels_claimed(path: Path) -> int:
    """A GIF's canvas from its header (``GIF89a``, width, height, little-endian): FFmpeg
    would allocate it for every frame, and OpenCV's pixel limit does not reach FFmpeg."""
    if (header := _gif_header(path)) is None:
        return 0
    return int.from_bytes(header[6:8], "little") * int.from_bytes(header[8:10], "little")


def line(
    path: Path,
    index: int,
    box: list[int],
    labels: tuple[str, ...],
    probs: np.ndarray,
    as_json: bool,
) -> str:
    best = int(probs.argmax())
    if not as_json:
        return f"{one_line(shown(path))}\tframe {index}\t{box}\t{labels[best]}\t{probs[best]:.2f}"
    return json.dumps(
        {
            "source": shown(path),
            "frame": index,
            "box": box,
            "emotion": labels[best],
            "confidence": round(float(probs[best]), 4),
            "scores": {label: round(float(p), 4) for label, p in zip(labels, probs, strict=True)},
        }
    )
