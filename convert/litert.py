"""Running a TFLite file the way the daemon does, from a process that has TensorFlow loaded.

LiteRT and TensorFlow each bundle their own TFLite runtime; with both loaded in one process the
interpreter aborted (SIGABRT) now and then. The daemon never loads TensorFlow, so the toolchain
runs every TFLite file in a fresh process without it, through the daemon's own classifier.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from convert import FACE_SIZE, ConvertError
from edge.emotions import ModelError

if TYPE_CHECKING:
    from edge.emotions import EmotionClassifier

BATCH = 256
T = TypeVar("T")


def in_litert_process(function: Callable[..., T], *args: object) -> T:
    """Run ``function(*args)`` in a fresh process without TensorFlow."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_dies_quietly_on_interrupt
    ) as pool:
        # The worker starts (at submit) with Ctrl-C blocked, as the signal mask is inherited,
        # so none lands while it imports. Here another thread takes it meanwhile, and Python
        # raises it in the main thread as always.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            future = pool.submit(function, *args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            return future.result()
        except BrokenProcessPool:
            raise ConvertError("the LiteRT interpreter crashed while running the model") from None
        except ModelError as error:  # the worker's, re-raised here: the user's file, said so
            raise ConvertError(str(error)) from None


def _dies_quietly_on_interrupt() -> None:
    """Ctrl-C reaches the worker too (one process group): it ends without a traceback of its
    own, and the toolchain says "interrupted" once. Blocked until here: one sent while the
    worker imported (this module, numpy) printed the import's traceback."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # as the toolchain's, inherited
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def predict_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities for (N, 48, 48) uint8 faces, as the daemon computes them (its metadata's
    test-time flip included)."""
    from edge.emotions import EmotionClassifier

    predict = face_predictor(EmotionClassifier(path, num_threads=2))
    return np.concatenate([predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])


def face_predictor(classifier: EmotionClassifier) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities for (N, 48, 48) uint8 gray faces from a classifier of any input layout
    the daemon supports: a model that takes other sizes or colour (its metadata says so) gets
    each face resized and converted by the daemon's own preparation, as in the field."""
    meta = classifier.metadata
    if (meta.input_height, meta.input_width, meta.input_channels) == (FACE_SIZE, FACE_SIZE, 1):
        return classifier.predict_prepared
    return lambda faces: classifier.predict(list(faces))
