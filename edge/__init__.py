"""Edge emotion daemon: camera frames -> faces -> emotions -> tracks -> events on MQTT/metrics.

The runtime never imports TensorFlow: the model runs on the LiteRT interpreter.
"""

import os
import site
import sys
import sysconfig
from pathlib import Path

# Images larger than this are refused from their header, before decoding: a PNG of a few
# hundred KB can claim 20000x20000 pixels (2.4 GB decoded). OpenCV reads the limit once, when
# it loads, so it is set here, before any module of the package imports cv2.
MAX_IMAGE_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
# FFmpeg inside OpenCV prints each damaged macroblock ("[h264 @ 0x...] error while decoding MB")
# from its decoding threads, unnamed and unasked, around our one line that names the file.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

MODEL_FILE = "emotion.tflite"


def _default_model() -> Path:
    """A checkout's ``models/`` (development, editable installs) comes first; a wheel installs
    its copy under ``<prefix>/share/edge-emotion/models/`` (pyproject's data-files), where the
    prefix is the environment's, or the user base for ``pip install --user``."""
    checkout = Path(__file__).resolve().parent.parent / "models" / MODEL_FILE
    # Debian's system pip installs under /usr/local while sys.prefix is /usr: sysconfig knows.
    for prefix in (sys.prefix, sysconfig.get_path("data"), site.getuserbase()):
        installed = Path(prefix) / "share" / "edge-emotion" / "models" / MODEL_FILE
        try:
            if installed.is_file() and not checkout.is_file():
                return installed
        except OSError:  # a home directory this user may not enter (HOME=/root under sudo -u)
            continue
    return checkout


DEFAULT_MODEL = _default_model()
"""The model shipped with the project, used when the configuration names none."""
