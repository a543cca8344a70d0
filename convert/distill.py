"""Teachers for distillation: a larger or ensembled model's predictions as training targets.

A teacher's probabilities carry what one label cannot: which emotions a face is *close* to, and
how sure a better model is. The student (the small edge network) learns a mix of them and the
labels (``Recipe.teacher_weight``). The predictions are made once, on the un-augmented training
faces, each averaged with its mirror image; several teachers are averaged (an ensemble).

A teacher is a model (``.keras``, ``.tflite``), or a file of predictions made elsewhere
(``.npz`` from ``scripts/teacher.py``, a network trained where a GPU is): per training face,
matched by its key (path in the dataset), the probabilities of one head per labelling, mixed
as the student's own targets mix the labellings (``--labels``, ``--ferplus-weight``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert import EMOTIONS, ConvertError
from convert.data import Split
from convert.litert import in_litert_process, predict_tflite

SUFFIXES = (".keras", ".tflite", ".npz")
HEADS = ("fer2013", "ferplus")


def check_teachers(paths: list[Path]) -> None:
    """Each teacher readable and usable, said before minutes of loading data, not after."""
    from convert.export import load_keras_model

    for path in paths:
        if path.suffix not in SUFFIXES or not path.is_file():
            raise ConvertError(
                f"--teacher {path}: expected an existing .keras or .tflite model, or an .npz "
                "of predictions (scripts/teacher.py)"
            )
        if path.suffix == ".npz":
            _read_predictions(path)
        elif path.suffix == ".keras":
            load_keras_model(path, "--teacher")
        else:
            _check_tflite_labels(path)
            try:
                in_litert_process(_load_tflite, path)
            except ConvertError as error:
                raise ConvertError(f"--teacher {error}") from None


def _load_tflite(path: Path) -> None:
    from edge.emotions import EmotionClassifier

    EmotionClassifier(path)


def teacher_predictions(paths: list[Path], split: Split, ferplus_weight: float) -> np.ndarray:
    """(N, 7) mean probabilities of the teachers (``check_teachers``) for ``split``'s faces,
    mirror-averaged; ``ferplus_weight``: the FER+ head's share for a teacher with one head
    per labelling."""
    probs = [
        _recorded(path, split, ferplus_weight)
        if path.suffix == ".npz"
        else _predict(path, split.images)
        for path in paths
    ]
    return np.mean(probs, axis=0).astype(np.float32)


def _read_predictions(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The training faces' keys and each head's probabilities, from scripts/teacher.py."""
    from convert.export import check_probabilities

    try:
        with np.load(path) as found:
            keys = [str(k) for k in found["train_keys"]]
            heads = {head: found[f"train_{head}"].astype(np.float32) for head in HEADS}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ConvertError(
            f"--teacher {path}: not a predictions file of scripts/teacher.py ({error})"
        ) from None
    if any(len(probs) != len(keys) for probs in heads.values()):
        raise ConvertError(f"--teacher {path}: fewer predictions than faces; damaged?")
    for head, probs in heads.items():
        check_probabilities(f"--teacher {path} ({head} head)", probs)
    return keys, heads


def _recorded(path: Path, split: Split, ferplus_weight: float) -> np.ndarray:
    """Predictions made elsewhere, matched to the split's faces by key."""
    keys, heads = _read_predictions(path)
    row = {key: i for i, key in enumerate(keys)}
    missing = [key for key in split.keys if key not in row]
    if missing:
        raise ConvertError(
            f"--teacher {path}: no prediction for {len(missing)} of the {len(split)} training "
            f"faces (e.g. {missing[0]}): made for other data?"
        )
    rows = np.array([row[key] for key in split.keys])
    probs = (1 - ferplus_weight) * heads["fer2013"][rows] + ferplus_weight * heads["ferplus"][rows]
    if probs.shape[1:] != (len(EMOTIONS),) or not np.isfinite(probs).all():
        raise ConvertError(f"--teacher {path}: predictions are not 7 finite probabilities")
    return probs


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
    # An int8 teacher's rows miss a sum of 1 by up to half a step per class (~0.014).
    return probs / probs.sum(axis=1, keepdims=True)


def _check_tflite_labels(path: Path) -> None:
    from edge.emotions import ModelError, ModelMetadata

    try:
        labels = ModelMetadata.read(path).labels
    except ModelError as error:
        raise ConvertError(f"--teacher {error}") from None
    if labels != EMOTIONS:
        raise ConvertError(f"--teacher {path}: labels {labels} are not FER2013's {EMOTIONS}")
