"""Build the classifier: 48x48 gray face in, 7 probabilities out, an ImageNet backbone inside.

Resizing, gray-to-RGB and the backbone's own normalisation live inside the model, so the exported
TFLite file takes raw 48x48 uint8 pixels and the daemon never re-implements preprocessing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType

import keras
from keras import layers

from convert import EMOTIONS, FACE_SIZE, ConvertError
from edge.cli import not_a_file

BACKBONES = ("mobilenetv2", "resnet50")
# Keras' BatchNorm momentum 0.999 (MobileNetV2) keeps ImageNet statistics for thousands of steps:
# after a short fine-tune the model in inference mode sat at chance while the training loss fell.
# 0.9 lets the running statistics follow the gray, upscaled faces within an epoch.
BN_MOMENTUM = 0.9


def build_model(
    backbone: str,
    weights: str,
    image_size: int,
    alpha: float = 0.35,
    head_units: int = 256,
    dropout: float = 0.3,
    api: ModuleType = keras,
) -> tuple[keras.Model, keras.Model]:
    """Return ``(classifier, backbone)``; the backbone is returned so training can freeze it.

    ``api`` is Keras 3 for training; quantization-aware fine-tuning builds the same network, with
    the same weight order, in tf_keras (``convert/qat.py``). There the backbone's layers are
    built inline, not as a nested model, which the quantization toolkit cannot wrap.
    """
    inputs = api.Input((FACE_SIZE, FACE_SIZE, 1), name="face")
    x = api.layers.Resizing(image_size, image_size, interpolation="bilinear", name="upscale")(
        inputs
    )
    x = api.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = _normalization(backbone, api.layers)(x)
    if api is keras:
        base = _backbone(backbone, weights, image_size, alpha)
        x = base(x)
    else:
        base = _backbone(backbone, weights, image_size, alpha, api, input_tensor=x)
        x = base.output
    x = api.layers.Dropout(dropout)(x)
    x = api.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = api.layers.Dropout(dropout)(x)
    outputs = api.layers.Dense(len(EMOTIONS), activation="softmax", name="emotion")(x)
    return api.Model(inputs, outputs, name=f"emotion_{backbone}"), base


def _normalization(backbone: str, api_layers: ModuleType = layers) -> layers.Layer:
    """Each backbone's ImageNet input convention, applied to 0..255 pixels inside the model."""
    if backbone == "mobilenetv2":
        return api_layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")
    # ResNet50 ("caffe" mode): BGR with ImageNet means subtracted; gray makes BGR == RGB.
    return api_layers.Normalization(
        mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="imagenet_mean"
    )


def _backbone(
    name: str,
    weights: str,
    image_size: int,
    alpha: float,
    api: ModuleType = keras,
    input_tensor: object = None,
) -> keras.Model:
    if name not in BACKBONES:
        raise ConvertError(f"unknown backbone {name!r}: expected one of {', '.join(BACKBONES)}")
    if image_size < 32:
        raise ConvertError(f"--image-size {image_size} is too small: the backbones need >= 32")
    source = weights_source(weights)
    shape = (image_size, image_size, 3)
    try:
        with warnings.catch_warnings():
            # A Keras 3 .weights.h5 warns once per nested block although every tensor loads.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            if name == "mobilenetv2":
                base = api.applications.MobileNetV2(
                    input_shape=shape,
                    input_tensor=input_tensor,
                    alpha=alpha,
                    include_top=False,
                    weights=source,
                    pooling="avg",
                )
            else:
                base = api.applications.ResNet50(
                    input_shape=shape,
                    input_tensor=input_tensor,
                    include_top=False,
                    weights=source,
                    pooling="avg",
                )
    except Exception as error:  # Keras raises bare Exception/ValueError for fetch and file errors
        raise ConvertError(_weights_problem(name, weights, error)) from None
    for layer in base.layers:
        if isinstance(layer, api.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return base


def weights_source(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if why := not_a_file(path, "weights file"):
        raise ConvertError(f"--weights {weights}: {why} (use imagenet, none or a file)")
    return os.fspath(path)


def _weights_problem(backbone: str, weights: str, error: Exception) -> str:
    if weights == "imagenet":
        return (
            f"could not download the ImageNet weights for {backbone} ({error}); "
            "this machine may be offline: pass --weights FILE with local weights, or --weights none"
        )
    return f"--weights {weights}: cannot load into {backbone}: {error}"
