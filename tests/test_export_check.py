"""The export's self-check, on the shipped model: a broken int8 file is refused, a good one kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FER, ROOT

from convert.data import Split, load_split
from convert.export import (
    calibration_faces,
    check_and_keep,
    describe,
    keras_predict,
    load_keras_model,
    to_tflite,
)

SHIPPED = ROOT / "models" / "emotion.keras"


@pytest.fixture(scope="module")
def model():
    return load_keras_model(SHIPPED)


@pytest.fixture(scope="module")
def val() -> Split:
    """100 val faces per class (all 56 for disgust): enough to see a real accuracy drop."""
    split = load_split(FER, "PublicTest")
    picks = np.concatenate([np.flatnonzero(split.labels == k)[:100] for k in range(7)])
    return Split(split.images[picks], split.labels[picks], "val subset")


def export(model, calibration: np.ndarray, out: Path, val: Split, max_drop: float):
    content = to_tflite(model, "int8", calibration)
    metadata = describe(content, "int8", SHIPPED, {})
    keras_probs = keras_predict(model, val.images, metadata.test_time_flip)
    return check_and_keep(keras_probs, content, metadata, out, val, max_drop)


def test_int8_calibrated_on_black_frames_is_refused_and_never_installed(model, val, tmp_path):
    out = tmp_path / "broken.tflite"
    report = export(model, np.zeros((64, 48, 48), np.uint8), out, val, max_drop=1.0)
    assert not report.passed
    assert "points below Keras" in report.reason
    assert report.drop_points > 10
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert out.with_suffix(".rejected.tflite").is_file()
    assert out.with_suffix(".rejected.json").is_file()


def test_int8_calibrated_on_training_faces_is_kept_with_its_check(model, val, tmp_path):
    calibration = calibration_faces(load_split(FER, "Training"), 500)
    out = tmp_path / "good.tflite"
    report = export(model, calibration, out, val, max_drop=3.0)
    assert report.passed, report.summary()
    assert report.agreement > 0.8
    assert out.is_file() and out.with_suffix(".json").is_file()
