"""Model options in the metadata that the daemon honours, on the shipped model."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
from conftest import FER

from convert.data import load_split
from edge import DEFAULT_MODEL
from edge.emotions import EmotionClassifier, ModelMetadata


def test_test_time_flip_averages_each_face_with_its_mirror_image(tmp_path):
    models = {}
    for flip in (False, True):
        models[flip] = tmp_path / f"flip-{flip}.tflite"
        shutil.copyfile(DEFAULT_MODEL, models[flip])
        replace(ModelMetadata.read(DEFAULT_MODEL), test_time_flip=flip).write(models[flip])
    faces = load_split(str(FER / "fer2013-sample.csv"), "PublicTest").images[:8]

    plain = EmotionClassifier(models[False])
    both = EmotionClassifier(models[True]).predict(list(faces))
    expected = (plain.predict(list(faces)) + plain.predict(list(faces[:, :, ::-1]))) / 2
    np.testing.assert_allclose(both, expected, atol=1e-6)
    assert not np.allclose(both, plain.predict(list(faces)), atol=1e-3)  # it changed something
