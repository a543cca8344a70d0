"""``python -m edge demo``: the daemon on a sample clip, for a machine with no camera and no broker.

The clip is built on first run from the public-domain NASA portrait of astronaut Eileen Collins
that scikit-image ships (``skimage.data.astronaut``), slowly panned and zoomed like a camera
view, so nothing non-free is committed or downloaded. Events go to stdout, metrics to :9108.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

CLIP_SIZE = (640, 480)
CLIP_FPS = 10
CLIP_SECONDS = 8


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-emotion"


def sample_clip(path: Path | None = None) -> Path:
    """The demo clip, built once (MJPEG in AVI: OpenCV writes it without FFmpeg encoders); a
    cached clip that does not play (an interrupted first run) is built again, and a cache this
    user cannot write is replaced by the temporary folder."""
    temporary = Path(tempfile.gettempdir()) / f"edge-emotion-demo-{os.getuid()}.avi"
    candidates = [path] if path else [cache_dir() / "astronaut-demo.avi", temporary]
    for clip in candidates:
        if _plays(clip):
            return clip
        try:
            return _build(clip)
        except OSError:
            continue
    raise SystemExit(
        f"edge demo: error: cannot write the demo clip in {', '.join(map(str, candidates))}"
    )


def _plays(clip: Path) -> bool:
    if not clip.is_file():
        return False
    capture = cv2.VideoCapture(str(clip))
    try:
        return capture.read()[0]
    finally:
        capture.release()


def _build(path: Path) -> Path:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(
            "the demo builds its clip from scikit-image's sample photo: "
            "pip install 'edge-emotion[demo]' (or pip install scikit-image)"
        ) from None
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, CLIP_SIZE)
    for i in range(CLIP_FPS * CLIP_SECONDS):
        writer.write(_view(photo, i / (CLIP_FPS * CLIP_SECONDS)))
    writer.release()
    if not _plays(tmp):  # OpenCV writes nothing, without an error, where it cannot write
        raise OSError(f"{tmp}: not written")
    tmp.replace(path)
    return path


def _view(photo: np.ndarray, t: float) -> np.ndarray:
    """A 4:3 window over the photo that zooms in and out once and drifts sideways."""
    h, w = photo.shape[:2]
    zoom = 1.0 + 0.25 * np.sin(np.pi * t)
    win_w, win_h = int(w / zoom), int(w / zoom * 3 / 4)
    x = int((w - win_w) * (0.5 + 0.4 * np.sin(2 * np.pi * t)))
    y = max(0, min(h - win_h, int(0.05 * h)))
    return cv2.resize(photo[y : y + win_h, x : x + win_w], CLIP_SIZE, interpolation=cv2.INTER_AREA)


def demo_config(clip: Path) -> dict:
    return {
        "device_id": "demo",
        "cameras": [{"name": "astronaut", "source": str(clip), "fps": 5, "loop": True}],
        "tracking": {"heartbeat_s": 5},
        # The default 5 neighbours let a ghost face beside the astronaut through (a "sad" track
        # on every loop); at 8 and 10 it still appeared in 2 and 1 of the clip's 80 frames;
        # 12 leaves exactly the astronaut's face, found in every frame.
        "detector": {"min_neighbors": 12},
    }
