"""Average the weights of models fine-tuned from one start (a "model soup").

Models fine-tuned from the same weights with other seeds (or targets) stay in one basin of the
loss, where the mean of their weights is a better model than each of them (Wortsman et al. 2022,
"Model soups"): the ensemble's gain at one model's cost, which a 2 ms budget per face needs.
Models from different starts are not: their mean is no model at all, so shapes and the recorded
``--init`` must agree. BatchNorm's moving statistics are averaged with the rest.

The soup keeps the first model's training record (its recipe and data), with the models it was
made of; ``adjust`` and ``export`` then take it like any trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convert import ConvertError

if TYPE_CHECKING:
    from convert.export import Inputs


def average(models: list[Path], out: Path, inputs: Inputs | None = None) -> dict[str, float]:
    """Write ``out``, the mean of ``models``; returns its val accuracy per labelling."""
    from convert.adjust import _save
    from convert.export import (
        Inputs,
        check_probabilities,
        keras_predict,
        load_keras_model,
        training_record,
    )
    from convert.labels import accuracies, labellings

    if len(models) < 2:
        raise ConvertError("--model: give two or more models to average")
    if out.suffix != ".keras":
        raise ConvertError(f"--out {out}: the model file must end in .keras")
    resolved = [m.resolve() for m in models]
    if twice := [m for i, m in enumerate(models) if resolved[i] in resolved[:i]]:
        # A model named twice weighs double, and given alone twice it is no soup at all.
        raise ConvertError(f"--model {twice[0]}: named twice; give each fine-tune once")
    if out.resolve() in {m.resolve() for m in models}:
        raise ConvertError(f"--out {out}: is one of the models (--model); give another name")
    records = [_record(path, training_record(path)) for path in models]
    _same_start(models, records)
    soup = load_keras_model(models[0], "--model")
    weights = [np.asarray(w, np.float64) for w in soup.get_weights()]
    for path in models[1:]:
        other = load_keras_model(path, "--model").get_weights()
        if [w.shape for w in other] != [w.shape for w in weights]:
            raise ConvertError(f"--model {path}: not the network of {models[0]} (other shapes)")
        weights = [w + o for w, o in zip(weights, other, strict=True)]
    soup.set_weights([(w / len(models)).astype(np.float32) for w in weights])

    history = dict(records[0])
    history["averaged"] = [str(path.resolve()) for path in models]
    _, val = (inputs or Inputs()).resolve(models[0], history)
    probs = keras_predict(soup, val.images, flip=False)
    check_probabilities(str(out), probs)
    found = accuracies(labellings(val.labels, val.votes), probs.argmax(1))
    history["averaged_val_accuracy"] = {k: round(v, 4) for k, v in found.items()}
    _save(soup, history, out)
    return found


def _record(path: Path, history: dict) -> dict:
    if not history.get("recipe"):
        raise ConvertError(f"--model {path}: no training record (made by `convert train`?)")
    if history.get("adjusted"):
        # Each would carry its own shift of the class prior; adjust the soup once instead.
        raise ConvertError(
            f"--model {path}: an adjusted model; average the models it came from, then adjust"
        )
    return history


def _same_start(models: list[Path], records: list[dict]) -> None:
    """Fine-tunes of one model (the same ``--init``): the mean of unrelated networks is noise."""
    starts = [record.get("data", {}).get("init") for record in records]
    if len(set(starts)) != 1 or None in starts:
        named = ", ".join(
            f"{m} from {start or 'no --init'}" for m, start in zip(models, starts, strict=True)
        )
        raise ConvertError(
            f"--model: the models were not fine-tuned from one model ({named}); their mean "
            "would not be a model"
        )
