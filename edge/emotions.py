"""Emotions stage: face crops in, per-label probabilities out, on the LiteRT interpreter.

How to feed a model (labels, input size, colour, pixel scaling, quantization) is read from the
JSON metadata that ``python -m convert export`` writes next to each ``.tflite`` file, so this
module never hard-codes a second copy of the training preprocessing. No TensorFlow import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.cli import not_a_file

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

METADATA_SCHEMA = "edge-emotion-model/1"


class ModelError(Exception):
    """The model or its metadata cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelMetadata:
    """The sidecar ``<model>.json``: everything the runtime needs to feed and read the model.

    The network sees ``pixel * pixel_scale + pixel_offset`` (then the input tensor's own
    quantization): our exported models take raw 0..255 pixels (scale 1, offset 0) and normalise
    inside; other models, such as fer's (gray 64x64 in [-1, 1]), are described the same way.
    """

    labels: tuple[str, ...]
    input_height: int
    input_width: int
    input_channels: int
    color: str = "gray"  # gray | rgb | bgr
    pixel_scale: float = 1.0
    pixel_offset: float = 0.0
    output: str = "probabilities"  # probabilities | logits
    # Average each face with its mirror image (one invocation of twice the batch): faces are
    # near-symmetric, so this is cheap test-time augmentation. On for the shipped model: +0.9
    # FER2013 and +1.3 FER+ points on val (models/MODEL_CARD.md); on int8 files averaging two
    # passes also averages out rounding noise (+1.3 points for 1.9x the time, `bench/model.py
    # --flip`).
    test_time_flip: bool = False
    quantization: str = "none"
    input_dtype: str = "float32"
    input_quant: tuple[float, int] = (0.0, 0)  # (scale, zero_point) of the input tensor
    sha256: str = ""  # of the .tflite file this metadata belongs to ("" = not checked)
    provenance: dict = field(default_factory=dict)
    schema: str = METADATA_SCHEMA

    @staticmethod
    def path_for(model_path: Path) -> Path:
        return model_path.with_suffix(".json")

    def write(self, model_path: Path) -> Path:
        """Atomically: a reader sees the old metadata or the new one, never half of it."""
        path = self.path_for(model_path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, model_path: Path) -> ModelMetadata:
        path = cls.path_for(model_path)
        if not path.is_file():
            raise ModelError(
                f"{path}: model metadata not found; every .tflite needs the JSON that "
                "`python -m convert export` writes next to it"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ModelError(f"{path}: model metadata must be a JSON object")
            _check_types(path, raw)
            if raw.get("schema") != METADATA_SCHEMA:
                raise ModelError(
                    f"{path}: schema {raw.get('schema')!r}, expected {METADATA_SCHEMA}"
                )
            raw["labels"] = tuple(raw["labels"])
            raw["input_quant"] = tuple(raw["input_quant"])
            meta = cls(**raw)
        except ModelError:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise ModelError(f"{path}: invalid model metadata: {error}") from None
        except RecursionError:
            raise ModelError(f"{path}: invalid model metadata: nested too deeply") from None
        except OSError as error:
            raise ModelError(f"{path}: cannot read the model metadata: {error.strerror}") from None
        if not isinstance(meta.test_time_flip, bool):
            raise ModelError(f"{path}: test_time_flip must be true or false")
        if meta.color not in {"gray", "rgb", "bgr"} or meta.output not in {
            "probabilities",
            "logits",
        }:
            raise ModelError(f"{path}: invalid color {meta.color!r} or output {meta.output!r}")
        return meta


# The JSON type each metadata field must have: a wrong one ("pixel_scale": "1") would load and
# then fail on every frame, so it is refused at start-up.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "labels": (list,),
    "input_height": (int,),
    "input_width": (int,),
    "input_channels": (int,),
    "color": (str,),
    "pixel_scale": (int, float),
    "pixel_offset": (int, float),
    "output": (str,),
    "test_time_flip": (bool,),
    "quantization": (str,),
    "input_dtype": (str,),
    "input_quant": (list,),
    "sha256": (str,),
    "provenance": (dict,),
    "schema": (str,),
}


def _check_types(path: Path, raw: dict) -> None:
    for name, value in raw.items():
        wanted = FIELD_TYPES.get(name)
        if wanted is None:
            continue
        if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
            kinds = " or ".join(t.__name__ for t in wanted)
            raise ModelError(f"{path}: {name} must be {kinds}, not {value!r}")
    labels = raw.get("labels", [])
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise ModelError(f"{path}: labels must be a non-empty list of names")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{path}: labels must be distinct names, not {labels}")
    quant = raw.get("input_quant", [1.0, 0])
    if len(quant) != 2 or not all(
        isinstance(q, int | float) and not isinstance(q, bool) for q in quant
    ):
        raise ModelError(f"{path}: input_quant must be [scale, zero_point], not {quant}")
    for name in ("input_height", "input_width", "input_channels"):
        if name in raw and raw[name] <= 0:
            raise ModelError(f"{path}: {name} must be positive, not {raw[name]}")
    # JSON readers accept NaN and Infinity; either would make every score NaN, and every event
    # invalid JSON for its consumers.
    numbers = {
        "pixel_scale": raw.get("pixel_scale", 1.0),
        "pixel_offset": raw.get("pixel_offset", 0.0),
    }
    numbers |= {"input_quant scale": quant[0], "input_quant zero_point": quant[1]}
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise ModelError(f"{path}: {name} must be a finite number, not {value}")
    if numbers["pixel_scale"] == 0 or quant[0] < 0:  # scale 0: a float input, not quantized
        raise ModelError(f"{path}: pixel_scale must not be 0, nor the input_quant scale negative")


class EmotionClassifier:
    """One LiteRT interpreter; classifies all faces of a frame in a single invocation."""

    def __init__(self, model_path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(model_path)
        if why := not_a_file(self.path, "model file"):
            raise ModelError(f"{self.path}: {why}")
        try:
            content = self.path.read_bytes()
        except OSError as error:
            raise ModelError(f"{self.path}: cannot read the model: {error.strerror}") from None
        if content[4:8] != b"TFL3":
            raise ModelError(f"{self.path}: not a TFLite model (no TFL3 flatbuffer identifier)")
        self.metadata = ModelMetadata.read(self.path)
        if self.metadata.sha256 and hashlib.sha256(content).hexdigest() != self.metadata.sha256:
            raise ModelError(
                f"{self.path}: file does not match its metadata {ModelMetadata.path_for(self.path)}"
                " (sha256 differs): re-export the model"
            )
        self._interpreter = _load_interpreter(self.path, content, num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._check_input_matches_metadata()
        self._batch = int(self._input["shape"][0])
        self._check_outputs()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    def predict(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``(len(faces), len(labels))`` for gray or BGR crops of any size."""
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        batch = np.stack([self._prepare(face) for face in faces])
        return self.predict_prepared(batch)

    def predict_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for crops already at the model's size, ``(N, H, W[, C])`` uint8."""
        meta = self.metadata
        if batch.ndim == 3:
            batch = batch[..., np.newaxis]
        x = batch.astype(np.float32) * meta.pixel_scale + meta.pixel_offset
        dtype = np.dtype(self._input["dtype"])
        if dtype in (np.uint8, np.int8):
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        x = x.astype(dtype)
        if meta.test_time_flip:
            x = np.concatenate([x, x[:, :, ::-1]])
        if len(x) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = len(x)
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"]).astype(np.float32)
        scale, zero_point = self._output["quantization"]
        if scale:
            y = (y - zero_point) * scale
        if meta.output == "logits":
            y = np.exp(y - y.max(axis=1, keepdims=True))
            y /= y.sum(axis=1, keepdims=True)
        if meta.test_time_flip:
            y = (y[: len(y) // 2] + y[len(y) // 2 :]) / 2
        return y

    def _prepare(self, face: np.ndarray) -> np.ndarray:
        meta = self.metadata
        if meta.input_channels == 1 and face.ndim == 3:
            face = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        elif meta.input_channels == 3 and face.ndim == 2:
            face = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
        if meta.input_channels == 3 and meta.color == "rgb":
            face = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
        size = (meta.input_width, meta.input_height)
        if face.shape[1::-1] != size:
            shrinking = face.shape[1] > meta.input_width
            face = cv2.resize(
                face, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            )
        return face

    def _check_outputs(self) -> None:
        """One probe at load: a model whose metadata says "probabilities" but that has no
        softmax (or NaN weights) would publish negative, NaN or unbounded scores in every
        event; refused at start-up instead, like any other unusable model."""
        meta = self.metadata
        rng = np.random.default_rng(0)
        shape = (meta.input_height, meta.input_width, meta.input_channels)
        probe = np.stack([np.zeros(shape, np.uint8), rng.integers(0, 256, shape, np.uint8)])
        try:
            scores = self.predict_prepared(probe)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"{self.path}: the interpreter cannot run it: {error}") from None
        if not np.isfinite(scores).all():
            raise ModelError(f"{self.path}: predicts NaN or infinite scores")
        # A quantized output is off by up to half its step per score.
        slack = 0.01 + len(meta.labels) * float(self._output["quantization"][0]) / 2
        sums = scores.sum(axis=1)
        if scores.min() < -slack or scores.max() > 1 + slack or np.abs(sums - 1).max() > slack:
            raise ModelError(
                f"{self.path}: its outputs are not probabilities (values {scores.min():.3g}.."
                f"{scores.max():.3g}, summing to {sums.min():.3g}..{sums.max():.3g}): a model "
                'without a final softmax needs "output": "logits" in its metadata'
            )

    def _check_input_matches_metadata(self) -> None:
        meta = self.metadata
        shape = tuple(int(d) for d in self._input["shape"][1:])
        expected = (meta.input_height, meta.input_width, meta.input_channels)
        outputs = int(self._output["shape"][-1])
        if shape != expected or outputs != len(meta.labels):
            raise ModelError(
                f"{self.path}: model takes {shape} and gives {outputs} scores, but its metadata "
                f"says {expected} and {len(meta.labels)} labels: re-export the model"
            )


def input_tensor_details(content: bytes) -> tuple[str, tuple[float, int]]:
    """(dtype name, (scale, zero_point)) of a TFLite model's input tensor."""
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_silenced():
        tensor = Interpreter(model_content=content).get_input_details()[0]
    scale, zero_point = tensor["quantization"]
    return np.dtype(tensor["dtype"]).name, (float(scale), int(zero_point))


def _load_interpreter(path: Path, content: bytes, num_threads: int) -> Interpreter:
    from ai_edge_litert.interpreter import Interpreter

    try:
        with native_stderr_silenced():
            interpreter = Interpreter(model_content=content, num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{path}: cannot load the TFLite model: {error}") from None
    return interpreter


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """LiteRT's C++ runtime prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``
    straight to file descriptor 2 when an interpreter is built; stderr is the daemon's log, so
    that line is kept out of it. Errors still reach the user as the exception's message.

    Only while this is the process's one thread: fd 2 is process-wide, and a running daemon's
    camera threads would lose their log lines meanwhile (a SIGHUP reload checks the model
    while they run); there the INFO line is the lesser harm."""
    if threading.active_count() > 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
