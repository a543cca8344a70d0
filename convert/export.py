"""Export a trained ``.keras`` model to TFLite, with its metadata, and check it before keeping it.

The export proves itself: the TFLite file, run through the daemon's own classifier, and the Keras
model classify the same validation faces; a file that loses more than the allowed accuracy is
refused and never written where the daemon would pick it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from convert import EMOTIONS, FACE_SIZE, ConvertError
from convert.data import Split, load_split
from convert.qat import QatRecipe, QatResult, quantization_aware_int8
from edge.emotions import EmotionClassifier, ModelMetadata

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

CHECK_BATCH = 256
T = TypeVar("T")


@dataclass(frozen=True)
class ExportReport:
    path: Path
    quantize: str
    size_bytes: int
    n: int
    keras_accuracy: float
    tflite_accuracy: float
    agreement: float
    max_drop: float
    passed: bool
    reason: str = ""

    @property
    def drop_points(self) -> float:
        return 100 * (self.keras_accuracy - self.tflite_accuracy)

    def summary(self) -> str:
        verdict = "kept" if self.passed else "REFUSED"
        return (
            f"{self.path} ({self.quantize}, {self.size_bytes / 1e6:.2f} MB): on {self.n} val "
            f"faces Keras {self.keras_accuracy:.4f}, TFLite {self.tflite_accuracy:.4f} "
            f"(drop {self.drop_points:+.2f} points, allowed {self.max_drop}), "
            f"top-1 agreement {self.agreement:.4f}: {verdict}"
        )


def export(
    model_path: Path,
    out: Path,
    quantize: str,
    data: str | None,
    max_drop: float,
    calibration_size: int = 500,
    qat: QatRecipe | None = None,
    test_time_flip: bool = False,
) -> ExportReport:
    """Convert, check against Keras on the val split, and keep the file only if it passes.

    With ``qat``, int8 comes from quantization-aware fine-tuning instead of post-training
    calibration; the check still compares with the float model that was trained.
    ``test_time_flip`` tells the daemon to average each face with its mirror image; the check
    then averages Keras' predictions the same way, so it still measures only the conversion.
    """
    if qat is not None and quantize != "int8":
        raise ConvertError(f"--qat-epochs fine-tunes for int8; it does not apply to {quantize}")
    model = load_keras_model(model_path)
    history = training_record(model_path)
    data = data or history.get("data", {}).get("path")
    if not data:
        raise ConvertError(f"{model_path}: no training record names its data; pass --data")
    val = load_split(history.get("data", {}).get("val_path") or data, "PublicTest")
    train = load_split(data, "Training")
    if qat is None:
        content = to_tflite(model, quantize, calibration_faces(train, calibration_size))
        metadata = describe(content, quantize, model_path, history)
    else:
        template = describe(b"", quantize, model_path, history)
        result = quantization_aware_int8(
            model, history.get("recipe", {}), train, val, qat, int8_scorer(template, val)
        )
        content = result.content
        metadata = _with_qat(describe(content, quantize, model_path, history), qat, result)
    metadata = replace(metadata, test_time_flip=test_time_flip)
    return check_and_keep(model, content, metadata, out, val, max_drop)


def load_keras_model(path: Path) -> keras.Model:
    import keras

    if not path.is_file():
        raise ConvertError(f"{path}: model file not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors...
        raise ConvertError(f"{path}: cannot load as a Keras model: {error}") from None


def training_record(model_path: Path) -> dict:
    """The run log ``convert train`` wrote next to the model, or ``{}`` for foreign models."""
    path = model_path.with_suffix(".history.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def calibration_faces(split: Split, size: int) -> np.ndarray:
    """A class-stratified random sample: int8 ranges must cover every expression, not just happy."""
    rng = np.random.default_rng(0)
    per_class = max(1, size // len(EMOTIONS))
    picks = [
        rng.permutation(np.flatnonzero(split.labels == label))[:per_class]
        for label in range(len(EMOTIONS))
    ]
    return split.images[np.concatenate(picks)]


def to_tflite(model: keras.Model, quantize: str, calibration: np.ndarray | None) -> bytes:
    """Convert with the TFLite converter; int8 keeps uint8 input so raw pixels go straight in.

    ``from_keras_model`` matched Keras to ~3e-6 here, while ``model.export(tf_saved_model)`` +
    ``from_saved_model`` gave a model differing by up to 0.64 in probability (val accuracy 26%
    instead of 58%) for a fine-tuned MobileNetV2: whichever path is used, the check below decides.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return _convert(converter, quantize, calibration)


def _convert(
    converter: tf.lite.TFLiteConverter, quantize: str, calibration: np.ndarray | None
) -> bytes:
    """``calibration=None`` with int8: a quantization-aware model, whose graph carries the ranges
    it learned; calibration data would silently add post-training calibration on top of them."""
    import tensorflow as tf

    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.inference_input_type = tf.uint8
    if quantize == "int8" and calibration is not None:
        converter.representative_dataset = lambda: (
            [face[np.newaxis, ..., np.newaxis].astype(np.float32)] for face in calibration
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        # The converter prints every captured variable of the traced model to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as error:  # the converter raises ConverterError, ValueError...
        raise ConvertError(f"TFLite conversion ({quantize}) failed: {error}") from None


def describe(content: bytes, quantize: str, model_path: Path, history: dict) -> ModelMetadata:
    """Metadata for the daemon; the input tensor's dtype and quantization are filled in later,
    from the file itself, by ``probe_tflite``."""
    recipe = history.get("recipe", {})
    return ModelMetadata(
        labels=EMOTIONS,
        input_height=FACE_SIZE,
        input_width=FACE_SIZE,
        input_channels=1,
        color="gray",
        quantization=quantize,
        sha256=hashlib.sha256(content).hexdigest(),
        provenance={
            "source_model": model_path.name,
            "source_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "backbone": recipe.get("backbone"),
            "alpha": recipe.get("alpha"),
            "image_size": recipe.get("image_size"),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def check_and_keep(
    model: keras.Model,
    content: bytes,
    metadata: ModelMetadata,
    out: Path,
    val: Split,
    max_drop: float,
) -> ExportReport:
    """Write to a temporary name, compare with Keras, then move into place or delete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.staging.tflite")
    try:
        metadata, tflite_probs = run_tflite(content, metadata, staging, val.images)
        keras_probs = keras_predict(model, val.images, metadata.test_time_flip)
        report = compare(
            out,
            metadata.quantization,
            len(content),
            val.labels,
            keras_probs,
            tflite_probs,
            max_drop,
        )
        # A refused file is kept, with its metadata, under a name the daemon never loads by
        # default: `edge analyze --model X.rejected.tflite` shows what went wrong.
        final = out if report.passed else out.with_suffix(".rejected.tflite")
        if report.passed:
            metadata = _with_check(metadata, report)
        metadata.write(final)
        staging.replace(final)
        return report
    finally:
        staging.unlink(missing_ok=True)
        ModelMetadata.path_for(staging).unlink(missing_ok=True)


def run_tflite(
    content: bytes, metadata: ModelMetadata, path: Path, images: np.ndarray
) -> tuple[ModelMetadata, np.ndarray]:
    """Write the file and its metadata (input tensor filled in) and run it as the daemon does."""
    path.write_bytes(content)
    metadata = replace(metadata, **input_tensor(content))
    metadata.write(path)
    return metadata, in_litert_process(predict_tflite, path, images)


def int8_scorer(
    template: ModelMetadata, val: Split
) -> Callable[[keras.Model], tuple[bytes, float]]:
    """Convert a quantization-aware model with its learned ranges; score the file on val as the
    export check measures it."""

    def convert_and_score(model: keras.Model) -> tuple[bytes, float]:
        content = to_tflite(model, "int8", None)
        metadata = replace(template, sha256=hashlib.sha256(content).hexdigest())
        with tempfile.TemporaryDirectory() as folder:
            _, probs = run_tflite(content, metadata, Path(folder) / "candidate.tflite", val.images)
        return content, float((probs.argmax(1) == val.labels).mean())

    return convert_and_score


def keras_predict(model: keras.Model, images: np.ndarray, flip: bool) -> np.ndarray:
    """Keras' probabilities, averaged with the mirrored faces' as the daemon does when asked."""
    x = images[..., np.newaxis].astype(np.float32)
    probs = model.predict(x, batch_size=CHECK_BATCH, verbose=0)
    if flip:
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=CHECK_BATCH, verbose=0)) / 2
    return probs


def in_litert_process(function: Callable[..., T], *args: object) -> T:
    """Run ``function`` in a fresh process without TensorFlow.

    LiteRT and TensorFlow each bundle their own TFLite runtime; with both loaded in one process
    the interpreter aborted (SIGABRT) now and then. The daemon never loads TensorFlow, so the
    check runs the model the way the daemon will.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool:
            raise ConvertError("the LiteRT interpreter crashed while running the model") from None


def input_tensor(content: bytes) -> dict:
    from edge.emotions import input_tensor_details

    dtype, quant = in_litert_process(input_tensor_details, content)
    return {"input_dtype": dtype, "input_quant": quant}


def predict_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    classifier = EmotionClassifier(path, num_threads=2)
    chunks = [
        classifier.predict_prepared(images[i : i + CHECK_BATCH])
        for i in range(0, len(images), CHECK_BATCH)
    ]
    return np.concatenate(chunks)


def compare(
    out: Path,
    quantize: str,
    size: int,
    labels: np.ndarray,
    keras_probs: np.ndarray,
    tflite_probs: np.ndarray,
    max_drop: float,
) -> ExportReport:
    keras_top, tflite_top = keras_probs.argmax(1), tflite_probs.argmax(1)
    keras_acc = float((keras_top == labels).mean())
    tflite_acc = float((tflite_top == labels).mean())
    reason = ""
    if not np.isfinite(tflite_probs).all():
        reason = "the TFLite model outputs NaN or infinite values"
    elif 100 * (keras_acc - tflite_acc) > max_drop:
        reason = (
            f"TFLite accuracy {tflite_acc:.4f} is {100 * (keras_acc - tflite_acc):.2f} "
            f"points below Keras {keras_acc:.4f} (allowed: {max_drop})"
        )
    return ExportReport(
        path=out,
        quantize=quantize,
        size_bytes=size,
        n=len(labels),
        keras_accuracy=keras_acc,
        tflite_accuracy=tflite_acc,
        agreement=float((keras_top == tflite_top).mean()),
        max_drop=max_drop,
        passed=not reason,
        reason=reason,
    )


def _with_qat(metadata: ModelMetadata, qat: QatRecipe, result: QatResult) -> ModelMetadata:
    provenance = dict(metadata.provenance)
    provenance["quantization_aware"] = {
        "epochs": qat.epochs,
        "learning_rate": qat.learning_rate,
        "kept": result.kept,
        "int8_val_accuracy": {name: round(a, 4) for name, a in result.val_accuracy.items()},
    }
    return replace(metadata, provenance=provenance)


def _with_check(metadata: ModelMetadata, report: ExportReport) -> ModelMetadata:
    provenance = dict(metadata.provenance)
    provenance["export_check"] = {
        "val_faces": report.n,
        "keras_accuracy": round(report.keras_accuracy, 4),
        "tflite_accuracy": round(report.tflite_accuracy, 4),
        "top1_agreement": round(report.agreement, 4),
    }
    return replace(metadata, provenance=provenance)
