"""Quantization-aware fine-tuning: let the trained network adapt to int8 before it is converted.

Why: post-training int8 of a FER network loses more than the half point allowed (the card's
"int8" section): the rounding noise of every activation adds up over 17 blocks and flips
FER2013's many near-ties. Training with the rounding simulated in the forward pass lets the
weights and the activation ranges adapt to it.

How: TensorFlow Model Optimization (tfmot) does the simulation, but it wraps Keras 2 (tf_keras)
models only, while the toolchain trains with Keras 3. So the network is rebuilt by the same
``build_model`` in tf_keras, given the trained weights, its BatchNorms folded into the
convolutions (as TFLite will fold them) and checked to predict what the Keras 3 model predicts,
before anything else happens. Then: annotate every layer, learn the activation ranges on a few
batches, and fine-tune a few epochs at a low rate on the training run's own targets and
augmentation. If the model's class prior was moved after training (``convert adjust``), the
fine-tune's loss carries the same logit shift, so learning the targets again does not undo it.
The candidates (the ranges alone, each epoch, the mean
of the epochs' weights) are yielded to the caller, which converts each and keeps the file that
scores best on val: tfmot's simulation and the converted file do not agree exactly, so the
file is what counts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from convert import ConvertError
from convert.data import Split
from convert.recipe import QatRecipe, Recipe

if TYPE_CHECKING:
    import keras


def quantization_aware_candidates(
    model: keras.Model,
    recipe: Recipe,
    train: Split,
    qat: QatRecipe,
    logit_shift: np.ndarray | None = None,
) -> Iterator[tuple[str, keras.Model]]:
    """Fine-tune a quantization-aware twin of ``model``; yield ``(name, model)`` candidates.

    Candidates: the learned ranges alone, each epoch, and the mean of the epochs' weights (a
    low-rate trajectory's average is a flatter, steadier point than any single epoch). Each
    yielded model is the live twin: convert it before asking for the next.

    ``logit_shift``: what ``convert adjust`` added to the model's logits. The loss subtracts it
    before comparing with the targets (a logit-adjusted loss), so the weights keep the shift:
    fine-tuning on the plain targets pulled an adjusted model back to the targets' prior
    within one epoch, and fine-tuning toward the float model's own predictions instead lost
    2-4 points (the card's "int8").
    """
    from convert.dataset import targets_for, training_batches

    tfmot, tf_keras = _toolkit()
    tf_keras.utils.set_random_seed(recipe.seed)
    twin = fold_batch_norms(legacy_twin(model, recipe, tf_keras, train.images[:64]), tf_keras)
    same_predictions(model, twin, train.images[:64], "the model with BatchNorm folded")
    train_ds = training_batches(
        targets_for(train, recipe), recipe.batch_size, recipe.seed, recipe.augment
    )
    with _range_tracking(tfmot) as decay:
        decay.value = qat.calibration_decay
        quantized = _quantize(twin, tfmot, tf_keras)
        _calibrate_ranges(quantized, train_ds, qat.calibration_batches, tf_keras)
        yield "ranges only", quantized
        decay.value = qat.decay
        _compile_for_fine_tuning(quantized, qat.learning_rate, recipe, tf_keras, logit_shift)
        trajectory = []
        for epoch in range(1, qat.epochs + 1):
            quantized.fit(train_ds, epochs=1, verbose=2)
            trajectory.append(quantized.get_weights())
            yield f"epoch {epoch}/{qat.epochs}", quantized
        if len(trajectory) > 1:
            quantized.set_weights([np.mean(ws, axis=0) for ws in zip(*trajectory, strict=True)])
            yield f"mean of epochs 1-{qat.epochs}", quantized


@contextlib.contextmanager
def shifted_logits(quantized: keras.Model, shift: np.ndarray) -> Iterator[None]:
    """Add ``shift`` to the bias of the final ``emotion`` layer of a quantization-aware model
    while converting it, and put the bias back afterwards (the model may go on training)."""
    layer = next(
        (
            getattr(w, "layer", w)
            for w in quantized.layers
            if getattr(w, "layer", w).name == "emotion"
        ),
        None,
    )
    if layer is None:
        raise ConvertError("the quantization-aware model has no final dense layer named 'emotion'")
    bias = layer.bias.numpy()
    layer.bias.assign(bias + shift.astype(bias.dtype))
    try:
        yield
    finally:
        layer.bias.assign(bias)


def _toolkit() -> tuple[ModuleType, ModuleType]:
    """tfmot and tf_keras; tfmot sets TF_USE_LEGACY_KERAS on import, which is undone here so
    the rest of the process keeps Keras 3 behind ``tf.keras``."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as error:
        raise ConvertError(
            f"quantization-aware fine-tuning needs tf-keras and tensorflow-model-optimization "
            f"({error}): pip install 'edge-emotion[convert]'"
        ) from None
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot, tf_keras


def legacy_twin(
    model: keras.Model, recipe: Recipe, tf_keras: ModuleType, probe: np.ndarray
) -> keras.Model:
    """The trained network rebuilt in tf_keras with its weights, refused unless it agrees."""
    from convert.model import build_model

    dropout = next((layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"), 0.3)
    try:
        twin, _ = build_model(
            recipe.backbone,
            "none",
            recipe.image_size,
            recipe.alpha,
            head_units=model.get_layer("head_dense").units,
            dropout=dropout,
            api=tf_keras,
        )
        twin.set_weights(model.get_weights())
    except (ValueError, KeyError) as error:
        raise ConvertError(
            f"cannot rebuild the model for quantization-aware fine-tuning (a model not made by "
            f"`convert train`?): {error}"
        ) from None
    same_predictions(model, twin, probe, "the rebuilt model")
    return twin


def same_predictions(
    reference: keras.Model, candidate: keras.Model, probe: np.ndarray, what: str
) -> None:
    """Refuse to go on from a network that is not the trained one."""
    faces = probe[..., np.newaxis].astype(np.float32)
    gap = np.abs(reference.predict(faces, verbose=0) - candidate.predict(faces, verbose=0)).max()
    if gap > 1e-3:
        raise ConvertError(
            f"{what} differs from the trained one by {gap:.4f} in probability; "
            "quantization-aware fine-tuning would start from a different network"
        )


def fold_batch_norms(model: keras.Model, tf_keras: ModuleType) -> keras.Model:
    """The same function with every BatchNormalization folded into the convolution before it.

    TFLite folds them at conversion; tfmot's simulation does not (it quantizes the unfolded
    kernel, and in training BatchNorm uses batch statistics), so with BatchNorm in place the
    fine-tune optimised a network other than the one converted and made the file worse (the
    card's "int8" section). Folded first, what is simulated is what will run.
    """
    layers = tf_keras.layers
    inputs = tf_keras.Input(model.input_shape[1:], name=model.layers[0].name)
    outputs: dict[str, object] = {model.layers[0].name: inputs}
    folded: set[str] = set()
    for layer in model.layers[1:]:
        sources = [outputs[name] for name in _inbound(layer)]
        if isinstance(layer, layers.BatchNormalization) and _inbound(layer)[0] in folded:
            outputs[layer.name] = sources[0]  # already inside the convolution
            continue
        config, weights = layer.get_config(), layer.get_weights()
        bn = _single_batch_norm_after(layer, model, layers)
        if bn is not None:
            config["use_bias"], weights = True, _folded(layer, bn, layers)
            folded.add(layer.name)
        clone = type(layer).from_config(config)
        outputs[layer.name] = clone(sources if len(sources) > 1 else sources[0])
        clone.set_weights(weights)
    return tf_keras.Model(inputs, outputs[model.layers[-1].name], name=f"{model.name}_folded")


def _inbound(layer: object) -> list[str]:
    inbound = layer._inbound_nodes[0].inbound_layers
    return [source.name for source in (inbound if isinstance(inbound, list) else [inbound])]


def _single_batch_norm_after(layer: object, model: keras.Model, layers: ModuleType) -> object:
    """The BatchNormalization that is a convolution's only consumer, if any."""
    if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
        return None
    consumers = [other for other in model.layers if layer.name in _inbound(other)]
    if len(consumers) == 1 and isinstance(consumers[0], layers.BatchNormalization):
        return consumers[0]
    return None


def _folded(conv: object, bn: object, layers: ModuleType) -> list[np.ndarray]:
    """Kernel and bias of ``bn(conv(x))`` in inference mode, per output channel."""
    kernel, *bias = conv.get_weights()
    gamma, beta, mean, variance = bn.get_weights()
    scale = gamma / np.sqrt(variance + bn.epsilon)
    if isinstance(conv, layers.DepthwiseConv2D):  # (h, w, in, multiplier), channel = in*mult
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:  # (h, w, in, out)
        kernel = kernel * scale
    bias = bias[0] if bias else np.zeros_like(mean)
    return [kernel, beta + (bias - mean) * scale]


class _Decay:
    value: float = 0.999


@contextlib.contextmanager
def _range_tracking(tfmot: ModuleType) -> Iterator[_Decay]:
    """Let the range moving average's decay be set (tfmot hard-codes 0.999; see QatRecipe).

    The decay is read when a training step is traced, i.e. at the first ``fit`` after each
    ``compile``.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original, decay = quant_ops.MovingAvgQuantize, _Decay()

    def moving_average_quantize(*args: object, **kwargs: object) -> object:
        kwargs["ema_decay"] = decay.value
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = moving_average_quantize
    try:
        yield decay
    finally:
        quant_ops.MovingAvgQuantize = original


def _quantize(twin: keras.Model, tfmot: ModuleType, tf_keras: ModuleType) -> keras.Model:
    """Annotate every layer: those tfmot knows get its int8 scheme, the preprocessing ones
    (resize, gray to RGB, normalisation) an output range only, so no tensor lacks a range and
    the converter needs no calibration data that would override the learned ones."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    quantization = tfmot.quantization.keras
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    class OutputRange(quantization.QuantizeConfig):
        def get_weights_and_quantizers(self, layer: object) -> list:
            return []

        def get_activations_and_quantizers(self, layer: object) -> list:
            return []

        def set_quantize_weights(self, layer: object, quantize_weights: list) -> None:
            pass

        def set_quantize_activations(self, layer: object, quantize_activations: list) -> None:
            pass

        def get_output_quantizers(self, layer: object) -> list:
            return [
                quantization.quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False
                )
            ]

        def get_config(self) -> dict:
            return {}

    def annotate(layer: object) -> object:
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        config = None if registry.supports(layer) else OutputRange()
        return quantization.quantize_annotate_layer(layer, quantize_config=config)

    annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
    annotated.set_weights(twin.get_weights())  # clone_model initialises afresh
    with quantization.quantize_scope({"OutputRange": OutputRange}):
        return quantization.quantize_apply(annotated)


def _compile_for_fine_tuning(
    quantized: keras.Model,
    learning_rate: float,
    recipe: Recipe,
    tf_keras: ModuleType,
    logit_shift: np.ndarray | None,
) -> None:
    """The training run's loss (label smoothing included) at the fine-tune's low rate, on the
    logits without ``logit_shift`` (Menon et al.'s logit-adjusted loss)."""
    import tensorflow as tf

    smoothing = recipe.label_smoothing
    shift = tf.constant(np.zeros(7) if logit_shift is None else logit_shift, tf.float32)

    def loss(targets: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
        logits = tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)) - shift
        return tf_keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=smoothing
        )

    quantized.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"]
    )


def _calibrate_ranges(
    quantized: keras.Model, train_ds: object, batches: int, tf_keras: ModuleType
) -> None:
    """Training-mode passes with a zero rate: only the range averages (and BatchNorm's running
    statistics, on the same augmented data they were learnt from) move."""
    quantized.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    quantized.fit(train_ds.repeat().take(batches), epochs=1, verbose=0)
