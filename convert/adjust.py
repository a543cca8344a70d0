"""Move a trained model's class prior toward the FER2013 labels' (logit adjustment), on val.

A network trained on targets learns their class prior along with the faces: one trained on FER+
votes has learned that a third of faces are neutral and hardly any show fear, which is what most
people answer for FER2013's ambiguous web faces, but not for posed or clear expressions of
other data, where every emotion is common. Adding ``strength * log(prior_to / prior_trained)``
to the logits (Menon et al. 2021, "Long-tail learning via logit adjustment") moves the decision
toward another prior without retraining: 0 keeps the model as trained, 1 swaps the prior
entirely. The shift goes into the bias of the final dense layer, so the exported file carries
it and the daemon needs nothing new; val accuracy under both labellings is printed so the
strength can be chosen on val.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convert import EMOTIONS, ConvertError, write_aside
from convert.labels import accuracies, expected_counts, labellings, training_targets

if TYPE_CHECKING:
    from convert.export import Inputs

PRIORS = ("fer2013", "ferplus")


@dataclass(frozen=True)
class Adjustment:
    toward: str
    strength: float
    shift: tuple[float, ...]  # added to the logits, in EMOTIONS order
    val_accuracy: dict[str, float]


def adjust(
    model_path: Path, out: Path, toward: str, strength: float, inputs: Inputs | None = None
) -> Adjustment:
    """Write ``out``: the model with its logits shifted, and a training log that says so.

    ``inputs``: the data for the priors and the val accuracy, by default (as for ``export``)
    what the training log names."""
    from convert.export import (
        Inputs,
        check_probabilities,
        keras_predict,
        load_keras_model,
        recorded_recipe,
        training_record,
    )

    if out.suffix != ".keras":
        raise ConvertError(f"--out {out}: the model file must end in .keras")
    if out.resolve() == model_path.resolve():
        raise ConvertError(f"--out {out}: is the input model (--model); give another file name")
    if toward not in PRIORS:
        raise ConvertError(f"--toward {toward}: expected one of {', '.join(PRIORS)}")
    if not 0.0 <= strength <= 1.0:
        raise ConvertError(f"--strength {strength}: must be in 0..1")
    model = load_keras_model(model_path)
    history = training_record(model_path)
    if not history.get("recipe"):
        raise ConvertError(f"{model_path}: no training record (made by `convert train`?)")
    if history.get("adjusted"):
        # A second shift would add to the first while the record (read by the int8
        # fine-tune) kept only the second: adjust the trained model once, at the strength wanted.
        done = history["adjusted"]
        raise ConvertError(
            f"{model_path}: already adjusted (toward {done.get('toward')}, strength "
            f"{done.get('strength')}); adjust the model it came from, {done.get('from')}, instead"
        )
    recipe = recorded_recipe(model_path, history)
    train, val = (inputs or Inputs()).resolve(model_path, history)
    trained = class_shares(train.labels, train.votes, recipe.labels, recipe.ferplus_weight)
    wanted = class_shares(train.labels, train.votes, toward, 1.0)
    shift = strength * np.log(wanted / trained)
    _shift_logits(model, shift)

    probs = keras_predict(model, val.images, flip=False)
    check_probabilities(str(model_path), probs)
    found = accuracies(labellings(val.labels, val.votes), probs.argmax(1))
    result = Adjustment(toward, strength, tuple(float(s) for s in shift), found)
    history["adjusted"] = {
        "from": str(model_path.resolve()),
        "toward": toward,
        "strength": strength,
        "logit_shift": dict(zip(EMOTIONS, (round(s, 4) for s in result.shift), strict=True)),
        "val_accuracy": {k: round(v, 4) for k, v in found.items()},
    }
    _save(model, history, out)
    curves = model_path.with_suffix(".curves.png")
    if curves.is_file():
        write_aside(out.with_suffix(".curves.png"), lambda copy: shutil.copyfile(curves, copy))
    return result


def _save(model: object, history: dict, out: Path) -> None:
    """Written aside and renamed into place: an interrupt or a full disk leaves ``out`` as it
    was (or absent), never a half-written model that would be exported."""
    from convert.train import move_into_place

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.adjusting.keras")
    try:
        model.save(staging)
        staging.with_suffix(".history.json").write_text(json.dumps(history, indent=1))
        move_into_place(staging, out)
    finally:
        for leftover in (staging, staging.with_suffix(".history.json")):
            leftover.unlink(missing_ok=True)


def class_shares(
    labels: np.ndarray, votes: np.ndarray | None, kind: str, ferplus_weight: float
) -> np.ndarray:
    """The share of each class in the targets of ``kind`` over the training faces."""
    try:
        targets, usable = training_targets(labels, votes, kind, ferplus_weight)
    except ValueError:
        raise ConvertError(f"the {kind} prior needs the FER+ votes of the training data") from None
    counts = expected_counts(targets[usable])
    return np.maximum(counts, 1e-6) / counts.sum()


def _shift_logits(model: object, shift: np.ndarray) -> None:
    """Add ``shift`` to the bias of the final softmax layer (``emotion``, from build_model)."""
    try:
        layer = model.get_layer("emotion")
        kernel, bias = layer.get_weights()
    except ValueError:
        raise ConvertError(
            "the model has no final dense layer named 'emotion' (not made by `convert train`?)"
        ) from None
    layer.set_weights([kernel, (bias + shift).astype(bias.dtype)])
