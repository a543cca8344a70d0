"""Training and conversion toolchain for the edge emotion model.

Steps, each a module: ``data`` (load FER2013 and its FER+ votes), ``labels`` (both labellings,
training targets), ``model`` (build), ``train`` (fit; ``dataset``: augment and batch; ``distill``:
teachers), ``adjust`` (logit adjustment), ``export`` (TFLite + metadata + self-check; ``qat``),
``evaluate`` (honest report).
"""

from collections.abc import Callable
from pathlib import Path

import edge  # noqa: F401  # before any cv2 import: it sets OpenCV's image pixel limit

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Label ids 0..6 in the order of the original ``fer2013.csv``, which is not alphabetical."""

FACE_SIZE = 48
"""FER2013 faces are 48x48 grayscale; every model this toolchain builds takes exactly that."""


class ConvertError(Exception):
    """A problem with the user's input (path, file, option); shown without a traceback."""


def quiet_tensorflow() -> None:
    """TensorFlow and Keras imported once, with fd 2 silenced, before the toolchain's own
    modules import them: their C++ start-up writes to fd 2 before absl's logging is set up,
    whatever TF_CPP_MIN_LOG_LEVEL says (oneDNN notices, "Could not find cuda drivers",
    "failed call to cuInit" from the device probe), and those lines came before every error
    message of ours. A failing import still raises, with its message."""
    from edge.emotions import native_stderr_silenced

    with native_stderr_silenced():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()


def write_aside(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` makes the file under a temporary name beside ``path``, which then replaces
    ``path``: an interrupt or a full disk leaves the file that was there intact (or none), never
    a truncated one. The temporary name keeps the suffix (matplotlib picks the format by it)."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
