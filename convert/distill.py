"""Teachers for distillation: a larger or ensembled model's predictions as training targets.

A teacher's probabilities carry what one label cannot: which emotions a face is *close* to, and
how sure a better model is. The student (the small edge network) learns a mix of them and the
labels (``Recipe.teacher_weight``). The predictions are made once, on the un-augmented training
faces, each averaged with its mirror image; several teachers are averaged (an ensemble).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert import EMOTIONS, ConvertError
from convert.data import Split
from convert.litert import in_litert_process, predict_tflite

SUFFIXES = (".keras", ".tflite")


def teacher_predictions(paths: list[Path], split: Split) -> np.ndarray:
    """(N, 7) mean probabilities of the teachers for ``split``'s faces, mirror-averaged."""
    for path in paths:
        if path.suffix not in SUFFIXES or not path.is_file():
            raise ConvertError(f"--teacher {path}: expected an existing .keras or .tflite model")
    probs = [_predict(path, split.images) for path in paths]
    return np.mean(probs, axis=0).astype(np.float32)


def _predict(path: Path, images: np.ndarray) -> np.ndarray:
    mirrored = images[:, :, ::-1]
    if path.suffix == ".tflite":
        _check_tflite_labels(path)
        probs = (
            in_litert_process(predict_tflite, path, images)
            + in_litert_process(predict_tflite, path, mirrored)
        ) / 2
    else:
        from convert.export import keras_predict, load_keras_model

        model = load_keras_model(path, "--teacher")
        probs = keras_predict(model, images, flip=True)
    if not np.isfinite(probs).all():
        raise ConvertError(f"--teacher {path}: predicts NaN or infinite values")
    return probs


def _check_tflite_labels(path: Path) -> None:
    from edge.emotions import ModelError, ModelMetadata

    try:
        labels = ModelMetadata.read(path).labels
    except ModelError as error:
        raise ConvertError(f"--teacher {error}") from None
    if labels != EMOTIONS:
        raise ConvertError(f"--teacher {path}: labels {labels} are not FER2013's {EMOTIONS}")
