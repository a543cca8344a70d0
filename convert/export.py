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
import math
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convert import EMOTIONS, FACE_SIZE, ConvertError, quiet_tensorflow
from convert.data import Split, check_separate_splits, load_split
from convert.labels import accuracies, labellings, selection_score
from convert.litert import BATCH, in_litert_process, predict_tflite
from convert.recipe import QatRecipe, Recipe
from edge.cli import not_a_file
from edge.emotions import ModelMetadata

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

# How far from 0..1 and from a sum of 1 a model's outputs may be: float16 rounding is ~0.003,
# logits miss by far more.
PROBABILITY_SLACK = 0.01


@dataclass(frozen=True)
class Inputs:
    """The data an export reads, as the user named it (None: what the training log names)."""

    data: str | None = None
    val_data: str | None = None
    votes: str | None = None

    def resolve(
        self, model_path: Path, history: dict, votes_required: bool = True
    ) -> tuple[Split, Split]:
        """(train, val). An explicit ``--data`` decides both splits, ``--val-data`` the check's;
        otherwise the data, validation data and votes the model was trained with. A model
        trained on votes needs them (``votes_required``: adjust's priors always do; export's
        check does unless the user chose other data with ``--data``)."""
        record = history.get("data", {})
        data = self.data or _recorded(model_path, record, "path", "--data")
        if not data:
            raise ConvertError(f"{model_path}: no training record names its data; pass --data")
        val_data = self.val_data or (
            None if self.data else _recorded(model_path, record, "val_path", "--val-data")
        )
        check_separate_splits(data, val_data, "score the model on the faces it learnt")
        val_data = val_data or data
        votes = self.votes or (
            None if self.data else _recorded(model_path, record, "votes", "--votes")
        )
        train, val = load_split(data, "Training", votes), load_split(val_data, "PublicTest", votes)
        trained_on = history.get("recipe", {}).get("labels", "fer2013")
        if trained_on != "fer2013" and val.votes is None and votes_required:
            # Its check (and adjust's priors) would silently cover FER2013's labels only.
            raise ConvertError(
                f"{model_path}: trained on FER+ votes ({trained_on}), but no votes file was "
                f"found for {val.source}: pass --votes FILE"
            )
        return train, val


def _recorded(model_path: Path, record: dict, key: str, flag: str) -> str | None:
    """A data path from the training log, refused with where it came from when it is not there
    (logs of older versions hold paths relative to wherever training ran)."""
    path = record.get(key)
    if path and not Path(path).exists():
        raise ConvertError(
            f"{path}: data named by the training log {model_path.with_suffix('.history.json')} "
            f"is not found from here ({Path.cwd()}): pass {flag} with its path"
        )
    return path


@dataclass(frozen=True)
class ExportReport:
    """The check: Keras and the TFLite file on the same val faces, under every labelling at
    hand (FER2013's labels, and the FER+ majority where votes are found)."""

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
    ferplus: dict = field(default_factory=dict)  # n, keras_accuracy, tflite_accuracy

    @property
    def drop_points(self) -> float:
        return 100 * (self.keras_accuracy - self.tflite_accuracy)

    def summary(self) -> str:
        verdict = "kept" if self.passed else "REFUSED"
        ferplus = ""
        if self.ferplus:
            f = self.ferplus
            drop = 100 * (f["keras_accuracy"] - f["tflite_accuracy"])
            ferplus = (
                f"; FER+ majority ({f['n']} faces) Keras {f['keras_accuracy']:.4f}, TFLite "
                f"{f['tflite_accuracy']:.4f} (drop {drop:+.2f})"
            )
        return (
            f"{self.path} ({self.quantize}, {self.size_bytes / 1e6:.2f} MB): on {self.n} val "
            f"faces Keras {self.keras_accuracy:.4f}, TFLite {self.tflite_accuracy:.4f} "
            f"(drop {self.drop_points:+.2f} points, allowed {self.max_drop}){ferplus}, "
            f"top-1 agreement {self.agreement:.4f}: {verdict}"
        )


def export(
    model_path: Path,
    out: Path,
    quantize: str,
    inputs: Inputs,
    max_drop: float,
    calibration_size: int = 500,
    qat: QatRecipe | None = None,
    test_time_flip: bool = False,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
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
    recipe = recorded_recipe(model_path, history)
    train, val = inputs.resolve(model_path, history, votes_required=inputs.data is None)
    if recipe.labels != "fer2013" and val.votes is None:
        say(f"no FER+ votes for {val.source}: the check compares FER2013's labels only")
    # The float model's val predictions, as the daemon would average them: what every int8
    # candidate and the final check are compared with.
    keras_probs = keras_predict(model, val.images, test_time_flip)
    check_probabilities(str(model_path), keras_probs)
    if qat is None:
        content = to_tflite(model, quantize, calibration_faces(train, calibration_size))
        metadata = describe(content, quantize, model_path, history)
    else:
        template = replace(
            describe(b"", quantize, model_path, history), test_time_flip=test_time_flip
        )
        shift = logit_shift(history)
        reference = accuracies(labellings(val.labels, val.votes), keras_probs.argmax(1))
        content, trail = quantization_aware_export(
            model, recipe, (train, val), qat, template, Candidates(reference, max_drop), say, shift
        )
        metadata = _with_qat(describe(content, quantize, model_path, history), qat, trail)
    metadata = replace(metadata, test_time_flip=test_time_flip)
    return check_and_keep(keras_probs, content, metadata, out, val, max_drop)


@dataclass
class Candidates:
    """The int8 files of a quantization-aware fine-tune, each scored on val as the check will
    score it. Kept: the best by the recipe's score among those within ``max_drop`` of the float
    model (``reference``) under every labelling, or the best of all if none is (the check then
    refuses it): a file that trades one labelling for the other is not the float model's twin."""

    reference: dict[str, float]
    max_drop: float
    content: bytes = b""
    kept: str = ""
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def within(self, score: dict[str, float]) -> bool:
        return all(100 * (self.reference[k] - score[k]) <= self.max_drop for k in self.reference)

    def offer(self, name: str, content: bytes, score: dict[str, float]) -> None:
        """Keep ``content`` if it beats every earlier candidate (the first one on a tie)."""
        rank = (self.within(score), score["score"])
        if not self.kept or rank > (
            self.within(self.scores[self.kept]),
            self.scores[self.kept]["score"],
        ):
            self.content, self.kept = content, name
        self.scores[name] = score


def quantization_aware_export(
    model: keras.Model,
    recipe: Recipe,
    splits: tuple[Split, Split],
    qat: QatRecipe,
    template: ModelMetadata,
    found: Candidates,
    say: Callable[[str], None],
    shift: np.ndarray | None = None,
) -> tuple[bytes, Candidates]:
    """Convert every candidate the fine-tune yields with its learned ranges, and again with its
    class prior matched to the float model's (``match_prior``); score each *file* on val with
    the check's flip setting and offer it to ``found``, which keeps the best within the
    allowed drop of the float model."""
    from convert.qat import quantization_aware_candidates

    train, val = splits
    if qat.prior_rounds:
        picks = np.random.default_rng(0).permutation(len(train))[: qat.prior_faces]
        prior_faces = train.images[picks]
        float_prior = keras_predict(model, prior_faces, template.test_time_flip).mean(axis=0)
    for name, candidate in quantization_aware_candidates(model, recipe, train, qat, shift):
        content = to_tflite(candidate, "int8", None)
        files = [(name, content)]
        if qat.prior_rounds:
            matched = match_prior(candidate, content, template, prior_faces, float_prior, qat)
            files.append((f"{name}, prior matched", matched))
        for label, file in files:
            score = score_file(file, template, val, recipe.selection_weight)
            found.offer(label, file, score)
            ferplus = f", FER+ {score['ferplus']:.4f}" if "ferplus" in score else ""
            say(f"qat: {label}: int8 val accuracy {score['fer2013']:.4f}{ferplus}")
    return found.content, found


def match_prior(
    candidate: keras.Model,
    content: bytes,
    template: ModelMetadata,
    faces: np.ndarray,
    float_prior: np.ndarray,
    qat: QatRecipe,
) -> bytes:
    """The candidate converted again with a shift on its logits that makes the int8 file's mean
    prediction on ``faces`` (training faces) the float model's ``float_prior``.

    Why: int8 rounding moves the class prior (this lineage's first int8 file, #22, called
    neutral 1.7 points less often on val, happy and sad more), and on FER2013 a prior shift
    costs accuracy on one labelling or the other. A bias correction on the last layer (Nagel et
    al. 2019) puts it back without touching what the network learned. The file is measured
    after each correction, since the shift is applied before the rounding it corrects for.
    """
    from convert.qat import shifted_logits

    correction = np.zeros(len(EMOTIONS), np.float32)
    for _ in range(qat.prior_rounds):
        step = np.log(float_prior + 1e-6) - np.log(
            candidate_probs(content, template, faces).mean(axis=0) + 1e-6
        )
        correction += step
        with shifted_logits(candidate, correction):
            content = to_tflite(candidate, "int8", None)
        if np.abs(step).max() < qat.prior_tolerance:
            break
    return content


def candidate_probs(content: bytes, template: ModelMetadata, faces: np.ndarray) -> np.ndarray:
    """A candidate file's probabilities for ``faces``, run as the daemon runs it."""
    metadata = replace(template, sha256=hashlib.sha256(content).hexdigest())
    with tempfile.TemporaryDirectory() as folder:
        _, probs = run_tflite(content, metadata, Path(folder) / "candidate.tflite", faces)
    return probs


def logit_shift(history: dict) -> np.ndarray | None:
    """What ``convert adjust`` added to the model's logits, in label order (None if nothing)."""
    shift = history.get("adjusted", {}).get("logit_shift")
    return None if shift is None else np.array([shift[e] for e in EMOTIONS], np.float32)


def score_file(
    content: bytes, template: ModelMetadata, val: Split, ferplus_weight: float
) -> dict[str, float]:
    """Val accuracy of a TFLite file under each labelling, and the recipe's score."""
    probs = candidate_probs(content, template, val.images)
    found = accuracies(labellings(val.labels, val.votes), probs.argmax(1))
    return {**found, "score": selection_score(found, ferplus_weight)}


def load_keras_model(path: Path, flag: str = "") -> keras.Model:
    """The model, checked to be what the toolchain feeds and reads: one (N, 48, 48, 1) input
    of raw gray faces and one output of seven scores. Any other model loaded fine and then
    failed in a reshape deep in Keras, or (ten outputs) gave plausible but false numbers.
    ``flag`` names the option the path came from (``--teacher``) in every message."""
    name = check_keras_file(path, flag)
    quiet_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors...
        raise ConvertError(f"{name}: cannot load as a Keras model: {error}") from None
    check_model_shapes(name, model.inputs, model.outputs)
    check_probabilities(name, keras_predict(model, probe_faces(), flip=False))
    return model


def probe_faces() -> np.ndarray:
    """A few made-up faces (black, white, noise): any input shows whether a model's outputs are
    probabilities, before minutes of loading the real faces."""
    noise = np.random.default_rng(0).integers(0, 256, (2, FACE_SIZE, FACE_SIZE), np.uint8)
    plain = np.stack([np.zeros((FACE_SIZE, FACE_SIZE), np.uint8), np.full_like(noise[0], 255)])
    return np.concatenate([plain, noise])


def check_probabilities(name: str, probs: np.ndarray) -> None:
    """Refuse outputs that are not what every consumer takes them for: finite probabilities,
    each row in 0..1 summing to 1. A model without a final softmax was exported as
    "probabilities" (the daemon then published negative scores) and taught students raw
    logits; one with NaN weights was given an accuracy (argmax of a NaN row is 0, angry)."""
    if not np.isfinite(probs).all():
        raise ConvertError(f"{name}: predicts NaN or infinite values")
    if not probs.size:
        return
    sums = np.atleast_1d(probs.sum(axis=-1))
    low, high = float(probs.min()), float(probs.max())
    off = max(-low, high - 1, float(np.abs(sums - 1).max()))
    if off > PROBABILITY_SLACK:
        raise ConvertError(
            f"{name}: outputs are not probabilities (values {low:.3g}..{high:.3g}, rows summing "
            f"to {sums.min():.3g}..{sums.max():.3g}); the last layer needs a softmax"
        )


def check_keras_file(path: Path, flag: str = "") -> str:
    """What can be told of a model file without importing TensorFlow; its name for messages."""
    name = f"{flag} {path}" if flag else str(path)
    if why := not_a_file(path, "model file"):
        raise ConvertError(f"{name}: {why}")
    try:
        path.open("rb").close()
    except OSError as error:  # is_zipfile below would take "Permission denied" for "not a zip"
        raise ConvertError(f"{name}: {error.strerror or error}") from None
    if path.suffix.lower() == ".keras" and path.suffix != ".keras":
        raise ConvertError(f"{name}: Keras reads only names ending in .keras (lower case)")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras says "File not found" for a file that is there but not a zip archive.
        raise ConvertError(f"{name}: not a Keras model file (a .keras file is a zip archive)")
    return name


def check_model_shapes(name: str, inputs: list, outputs: list) -> None:
    """One input of 48x48 gray faces (dimensions left open are fine), one output of 7 scores."""
    wanted = (FACE_SIZE, FACE_SIZE, 1)
    if len(outputs) != 1 or tuple(outputs[0].shape)[-1] != len(EMOTIONS):
        scores = [tuple(o.shape)[-1] for o in outputs]
        raise ConvertError(
            f"{name}: gives {', '.join(map(str, scores))} scores, not {len(EMOTIONS)} "
            f"({', '.join(EMOTIONS)})"
        )
    shape = tuple(inputs[0].shape)[1:] if len(inputs) == 1 else ()
    if len(shape) != 3 or any(d not in (None, w) for d, w in zip(shape, wanted, strict=True)):
        found = ", ".join(str(tuple(i.shape)[1:]) for i in inputs)
        raise ConvertError(
            f"{name}: takes input {found}, not the {FACE_SIZE}x{FACE_SIZE} gray faces "
            f"{wanted} the toolchain feeds (the models `convert train` makes)"
        )


def training_record(model_path: Path) -> dict:
    """The run log ``convert train`` wrote next to the model, or ``{}`` for foreign models."""
    path = model_path.with_suffix(".history.json")
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ConvertError(f"{path}: not a readable training log ({error})") from None
    if not isinstance(record, dict):
        raise ConvertError(f"{path}: not a training log (expected a JSON object)")
    if why := _log_problem(record):
        raise ConvertError(f"{path}: not a valid training log: {why}")
    return record


# Where the toolchain reads a training log's fields: each must be what it is read as.
LOG_MAPPINGS = ("recipe", "data", "adjusted")
LOG_PATHS = ("path", "val_path", "votes", "train", "val", "init")


def _finite(value: object) -> bool:
    """A JSON number that is a float's (``2**70`` and ``1e400`` are not: OverflowError)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _log_problem(record: dict) -> str | None:
    """What an edited log (``"data": "x"``) gets wrong, or None: read as it is, it ended in an
    AttributeError, after a whole conversion in ``export``."""
    for key in LOG_MAPPINGS:
        if not isinstance(record.get(key, {}), dict):
            return f"{key!r} is not a mapping"
    data = record.get("data", {})
    for key in LOG_PATHS:
        if not isinstance(data.get(key) or "", str):
            return f"data.{key} is not a path"
    teachers = data.get("teachers", [])
    if not (isinstance(teachers, list) and all(isinstance(t, str) for t in teachers)):
        return "data.teachers is not a list of paths"
    shift = record.get("adjusted", {}).get("logit_shift")
    if shift is not None and not (
        isinstance(shift, dict) and all(_finite(shift.get(e)) for e in EMOTIONS)
    ):
        return f"adjusted.logit_shift is not a number for each of {', '.join(EMOTIONS)}"
    return None


def recorded_recipe(model_path: Path, history: dict) -> Recipe:
    """The recipe of the training log, with the log named when it is not a valid one (an edited
    log: ``"alpha": "0.35"``, a batch size out of range)."""
    record = history.get("recipe", {})
    try:
        if not isinstance(record, dict):
            raise TypeError("not a mapping")
        return Recipe.from_record(record)
    except (TypeError, ValueError, ConvertError) as error:
        log = model_path.with_suffix(".history.json")
        raise ConvertError(f"{log}: the recorded recipe is not valid: {error}") from None


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

    ``from_keras_model``, because the SavedModel path produced a broken model for a fine-tuned
    MobileNetV2 (README, "Things learned on the way"): whichever path is used, the check decides.
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
            # What the network learned to predict (convert.recipe.LABELS), and from whom.
            "trained_on": {
                "labels": recipe.get("labels", "fer2013"),
                "ferplus_weight": recipe.get("ferplus_weight"),
                "teachers": [Path(t).name for t in history.get("data", {}).get("teachers", [])],
                "teacher_weight": recipe.get("teacher_weight"),
            },
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # A logit adjustment (`convert adjust`) after training, if any.
            **({"adjusted": history["adjusted"]} if "adjusted" in history else {}),
        },
    )


def check_and_keep(
    keras_probs: np.ndarray,
    content: bytes,
    metadata: ModelMetadata,
    out: Path,
    val: Split,
    max_drop: float,
) -> ExportReport:
    """Write to a temporary name, compare with Keras' predictions on ``val`` (made with the
    file's test-time flip setting), then move into place or delete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.staging.tflite")
    try:
        metadata, tflite_probs = run_tflite(content, metadata, staging, val.images)
        report = compare(
            out, metadata.quantization, len(content), val, keras_probs, tflite_probs, max_drop
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


def keras_predict(model: keras.Model, images: np.ndarray, flip: bool) -> np.ndarray:
    """Keras' probabilities, averaged with the mirrored faces' as the daemon does when asked."""
    x = images[..., np.newaxis].astype(np.float32)
    probs = model.predict(x, batch_size=BATCH, verbose=0)
    if flip:
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=BATCH, verbose=0)) / 2
    return probs


def input_tensor(content: bytes) -> dict:
    from edge.emotions import input_tensor_details

    dtype, quant = in_litert_process(input_tensor_details, content)
    return {"input_dtype": dtype, "input_quant": quant}


def compare(
    out: Path,
    quantize: str,
    size: int,
    val: Split,
    keras_probs: np.ndarray,
    tflite_probs: np.ndarray,
    max_drop: float,
) -> ExportReport:
    """Refuse a file that outputs non-finite values or loses more than ``max_drop`` points of
    accuracy under any labelling at hand."""
    truth = labellings(val.labels, val.votes)
    keras_top, tflite_top = keras_probs.argmax(1), tflite_probs.argmax(1)
    keras_acc, tflite_acc = accuracies(truth, keras_top), accuracies(truth, tflite_top)
    reason = ""
    if not np.isfinite(tflite_probs).all():
        reason = "the TFLite model outputs NaN or infinite values"
    for name, what in (("fer2013", ""), ("ferplus", " (FER+ majority)")):
        drop = 100 * (keras_acc.get(name, 0) - tflite_acc.get(name, 0))
        if not reason and drop > max_drop:
            reason = (
                f"TFLite accuracy{what} {tflite_acc[name]:.4f} is {drop:.2f} points below "
                f"Keras {keras_acc[name]:.4f} (allowed: {max_drop})"
            )
    ferplus = {}
    if "ferplus" in truth:
        ferplus = {
            "n": int((truth["ferplus"] >= 0).sum()),
            "keras_accuracy": keras_acc["ferplus"],
            "tflite_accuracy": tflite_acc["ferplus"],
        }
    return ExportReport(
        path=out,
        quantize=quantize,
        size_bytes=size,
        n=len(val),
        keras_accuracy=keras_acc["fer2013"],
        tflite_accuracy=tflite_acc["fer2013"],
        agreement=float((keras_top == tflite_top).mean()),
        max_drop=max_drop,
        passed=not reason,
        reason=reason,
        ferplus=ferplus,
    )


def _with_qat(metadata: ModelMetadata, qat: QatRecipe, found: Candidates) -> ModelMetadata:
    provenance = dict(metadata.provenance)
    provenance["quantization_aware"] = {
        "epochs": qat.epochs,
        "learning_rate": qat.learning_rate,
        "kept": found.kept,
        "int8_val": {
            name: {k: round(v, 4) for k, v in score.items()} for name, score in found.scores.items()
        },
        "float_val": {k: round(v, 4) for k, v in found.reference.items()},
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
    if report.ferplus:
        provenance["export_check"]["ferplus"] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in report.ferplus.items()
        }
    return replace(metadata, provenance=provenance)
