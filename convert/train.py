"""Transfer learning on FER2013: load, label, augment, build, fit (head, then whole network), log.

Reads like a Keras example on purpose: each step is one short function, and every number that
took measuring lives in ``convert.recipe.Recipe`` with the reason next to it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from convert import EMOTIONS, ConvertError, write_aside
from convert.data import Split, check_separate_splits, load_split
from convert.dataset import Targets, faces, targets_for, training_batches
from convert.distill import check_teachers, teacher_predictions
from convert.labels import accuracies, labellings, selection_score, training_targets
from convert.model import build_model, weights_source
from convert.recipe import Recipe


@dataclass
class RunLog:
    """What the run did, written beside the run's checkpoint after every epoch (so a crash
    keeps it), and beside the model when the run ends."""

    recipe: dict
    data: dict
    epochs: list[dict] = field(default_factory=list)
    best_val_score: float = 0.0
    finished: bool = False

    @property
    def best_epoch(self) -> dict:
        return max(self.epochs, key=lambda e: e["val_score"], default={})


def train(
    data: str,
    val_data: str | None,
    out: Path,
    recipe: Recipe,
    init: Path | None = None,
    votes: str | None = None,
    teachers: tuple[Path, ...] = (),
) -> RunLog:
    """The whole run; resumes from ``<out stem>.partial.backup/`` if an earlier run was
    interrupted.

    Checkpoints and the log go to ``<out stem>.partial.keras`` (``staging_path``) and replace
    ``out`` only when training ends normally: an interrupted or failed run never costs the
    model already at ``out``, whose first epoch used to overwrite it.

    ``init`` starts from the weights of an earlier run's model (same backbone and size), so a
    CPU budget can be spent in steps instead of one run of many hours. ``teachers``: models
    whose predictions are mixed into the targets (distillation, ``convert.distill``).
    """
    keras.utils.set_random_seed(recipe.seed)
    weights_source(recipe.weights)  # a missing weights file is said before minutes of loading
    check_teachers(list(teachers))
    train_split, val_split = load_data(data, val_data, votes, recipe)
    teacher = (
        teacher_predictions(list(teachers), train_split, recipe.selection_weight)
        if teachers
        else None
    )
    targets = targets_for(train_split, recipe, teacher)
    if targets.left_out:
        print(
            f"{targets.left_out} training faces without FER+ votes for the seven emotions "
            "(not faces to FER+) are left out",
            flush=True,
        )
    train_ds = training_batches(targets, recipe.batch_size, recipe.seed, recipe.augment)
    model, backbone = build_model(recipe.backbone, recipe.weights, recipe.image_size, recipe.alpha)
    if init is not None:
        load_weights(model, init)
    staging = staging_path(out)
    log = start_log(
        staging, recipe, data, val_data, train_split, val_split, init, targets, teachers
    )
    checkpoint = keras.callbacks.ModelCheckpoint(
        staging, monitor="val_score", mode="max", save_best_only=True
    )
    checkpoint.best = log.best_val_score or checkpoint.best

    fit = Fit(model, train_ds, Validation(val_split, recipe), recipe, staging, log)
    try:
        fit_phases(fit, backbone, checkpoint, len(train_ds))
    except KeyboardInterrupt:
        print(
            f"training interrupted: nothing was written to {out}; the best checkpoint so far is "
            f"{staging} (log {staging.with_suffix('.history.json')}); run the same command "
            "again to resume",
            file=sys.stderr,
            flush=True,
        )
        raise
    log.finished = True
    write_log(staging, log)
    move_into_place(staging, out)
    shutil.rmtree(staging.with_suffix(".backup"), ignore_errors=True)
    plot_curves(log, out.with_suffix(".curves.png"))
    return log


def staging_path(out: Path) -> Path:
    """Where a run keeps its checkpoint until it ends: beside ``out``, with a visible name (the
    user is told to look there after an interrupt), still ending in .keras as Keras wants."""
    return out.with_name(f"{out.stem}.partial.keras")


def move_into_place(staging: Path, out: Path) -> None:
    """The finished run's model and log replace ``out``'s (the model first: a log never
    describes a model that is not there)."""
    if not staging.is_file():
        raise ConvertError(
            f"{staging}: the run's checkpoint is missing (deleted while resuming?); {out} is "
            "unchanged"
        )
    staging.replace(out)
    staging.with_suffix(".history.json").replace(out.with_suffix(".history.json"))


def fit_phases(
    fit: Fit, backbone: keras.Model, checkpoint: keras.callbacks.Callback, steps_per_epoch: int
) -> None:
    """The head alone on a frozen backbone, then the whole network."""
    recipe = fit.recipe
    backbone.trainable = False
    # A random backbone has no features worth protecting: from scratch, everything trains at once.
    head_epochs = 0 if recipe.weights == "none" else recipe.head_epochs
    fit.phase("head", 0, head_epochs, recipe.head_learning_rate, [checkpoint])
    backbone.trainable = True
    if recipe.schedule == "cosine":
        steps = recipe.epochs * steps_per_epoch
        rate, schedule = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, steps), []
    else:
        rate, schedule = recipe.learning_rate, validation_schedule(recipe)
    fit.phase(
        "finetune",
        head_epochs,
        head_epochs + recipe.epochs,
        rate,
        [checkpoint, *schedule],
    )


def load_weights(model: keras.Model, path: Path) -> None:
    """Copy an earlier run's weights in; a different architecture is refused, not half-loaded."""
    from convert.export import load_keras_model

    earlier = load_keras_model(path, "--init")
    try:
        model.set_weights(earlier.get_weights())
    except ValueError as error:
        raise ConvertError(
            f"--init {path}: does not fit this recipe's model (backbone and alpha must "
            f"match): {error}"
        ) from None


def load_data(
    data: str, val_data: str | None, votes: str | None, recipe: Recipe
) -> tuple[Split, Split]:
    """Train and val splits; validating on the training faces would choose checkpoints by
    memorisation (``check_separate_splits``)."""
    check_separate_splits(data, val_data, "choose checkpoints by memorisation")
    train_split = load_split(data, "Training", votes)
    val_split = load_split(val_data or data, "PublicTest", votes)
    missing = [EMOTIONS[i] for i, n in enumerate(train_split.class_counts()) if n == 0]
    if missing:
        raise ConvertError(f"{train_split.source}: no training images for {', '.join(missing)}")
    if recipe.uses_votes and train_split.votes is None:
        raise ConvertError(
            f"--labels {recipe.labels} learns from FER+ votes, but none were found for "
            f"{train_split.source}: pass --votes FILE (ferplus.csv, or Microsoft's "
            "fer2013new.csv for a fer2013.csv), or --labels fer2013 to learn FER2013's labels alone"
        )
    if recipe.uses_votes and val_split.votes is None:
        raise ConvertError(
            f"--labels {recipe.labels} chooses checkpoints by FER+ accuracy on val, but no votes "
            f"were found for {val_split.source}: pass --votes FILE, or --labels fer2013 to learn "
            "FER2013's labels alone"
        )
    return train_split, val_split


def validation_schedule(recipe: Recipe) -> list[keras.callbacks.Callback]:
    """Halve the rate when val accuracy stalls, stop when it stops improving."""
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_score", mode="max", factor=0.5, patience=recipe.lr_patience, min_lr=1e-6
        ),
        keras.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=recipe.patience),
    ]


@dataclass
class Fit:
    """What the training phases share: model, data, validation, recipe and the run log."""

    model: keras.Model
    train_ds: tf.data.Dataset
    validation: Validation
    recipe: Recipe
    out: Path
    log: RunLog

    def phase(
        self,
        name: str,
        first_epoch: int,
        end_epoch: int,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
        callbacks: list[keras.callbacks.Callback],
    ) -> None:
        """Compile and fit one phase; skipped when the log shows it already finished (its last
        weights are then loaded: the next phase of a resumed run starts where it ended)."""
        log = self.log
        finished = self.out.with_suffix(".backup") / f"{name}.end.weights.h5"
        if end_epoch <= first_epoch:
            return
        if any(e["phase"] == name and e.get("last") for e in log.epochs):
            if finished.is_file():
                self.model.load_weights(finished)
            return
        self.model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=self.recipe.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.recipe.label_smoothing),
            metrics=["accuracy"],
        )
        backup = keras.callbacks.BackupAndRestore(os.fspath(self.out.with_suffix(".backup") / name))
        self.model.fit(
            self.train_ds,
            initial_epoch=first_epoch,
            epochs=end_epoch,
            # Validation first: the log, the checkpoint and the schedule read its val_score.
            callbacks=[self.validation, backup, EpochLog(name, self.out, log), *callbacks],
            shuffle=False,  # the dataset shuffles itself
            verbose=1 if sys.stdout.isatty() else 2,
        )
        if log.epochs and log.epochs[-1]["phase"] == name:
            finished.parent.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(finished)
            log.epochs[-1]["last"] = True
            write_log(self.out, log)


class Validation(keras.callbacks.Callback):
    """Scores val after each epoch under both labellings, and the recipe's mix of them.

    Keras' own validation knows one target per face; checkpoints here are chosen by the
    accuracy the product is judged by: the FER2013 label, the FER+ majority, or the recipe's
    weighting of the two (``val_score``). ``val_loss`` is the cross-entropy against the
    recipe's own targets.
    """

    def __init__(self, split: Split, recipe: Recipe) -> None:
        super().__init__()
        self.faces = faces(split.images)
        self.truth = labellings(split.labels, split.votes)
        self.targets, self.usable = training_targets(
            split.labels, split.votes, recipe.labels, recipe.ferplus_weight
        )
        self.weight = recipe.selection_weight

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.model.predict(self.faces, batch_size=256, verbose=0)
        found = accuracies(self.truth, probs.argmax(axis=1))
        clipped = np.clip(probs[self.usable], 1e-7, 1.0)
        if logs is not None:
            logs["val_loss"] = float(-(self.targets[self.usable] * np.log(clipped)).sum(1).mean())
            logs["val_accuracy"] = found["fer2013"]
            if "ferplus" in found:
                logs["val_ferplus_accuracy"] = found["ferplus"]
            logs["val_score"] = selection_score(found, self.weight)


class EpochLog(keras.callbacks.Callback):
    """Appends each epoch (metrics, learning rate, images/s timed on batches) to the run log.

    Throughput is timed from batch callbacks: ``fit()`` on tf.data can return seconds after the
    last batch, so wall-clock time around it overstates the cost.
    """

    def __init__(self, phase: str, out: Path, log: RunLog) -> None:
        super().__init__()
        self.phase, self.out, self.log = phase, out, log

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.batch_seconds, self.started = 0.0, time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batch_seconds += time.perf_counter() - self.batch_start

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        images = self.log.data["train_count"]
        entry = {
            "epoch": epoch + 1,
            "phase": self.phase,
            **{k: float(v) for k, v in logs.items()},
            "learning_rate": learning_rate(self.model.optimizer),
            "train_seconds": round(self.batch_seconds, 2),
            "epoch_seconds": round(time.perf_counter() - self.started, 2),
            "images_per_second": round(images / max(self.batch_seconds, 1e-9), 1),
        }
        self.log.epochs = [e for e in self.log.epochs if e["epoch"] != epoch + 1] + [entry]
        self.log.best_val_score = max(self.log.best_val_score, entry["val_score"])
        write_log(self.out, self.log)


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate in use now, whether fixed or a schedule of the step count."""
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(rate))


def start_log(
    out: Path,
    recipe: Recipe,
    data: str,
    val_data: str | None,
    train_split: Split,
    val_split: Split,
    init: Path | None,
    targets: Targets,
    teachers: tuple[Path, ...],
) -> RunLog:
    """A new log, or the interrupted run's log when its backup is still there to resume and
    it ran the same recipe on the same data (anything else would continue other weights under
    this run's name: the backup of such a run is removed and this one starts afresh)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".history.json")
    # Absolute paths: `export` and `adjust` read them from wherever they are run.
    record = {
        "path": _absolute(data),
        "val_path": _absolute(val_data),
        "votes": _absolute(train_split.votes_source or None),
        "train": _absolute(train_split.source),
        "val": _absolute(val_split.source),
        "train_count": len(targets),
        "train_left_out": targets.left_out,
        "val_count": len(val_split),
        "train_class_counts": train_split.class_counts().tolist(),
        "labels": list(EMOTIONS),
        # The earlier model this run continued from (--init) and the teachers it learned from:
        # part of how the result was made.
        "init": _absolute(init),
        "teachers": [_absolute(t) for t in teachers],
    }
    backup = out.with_suffix(".backup")
    if backup.exists():
        from convert.export import training_record

        saved = training_record(out) if path.exists() else {}
        if saved.get("recipe") == asdict(recipe) and saved.get("data") == record:
            print(f"resuming the interrupted run logged in {path}", flush=True)
            return RunLog(**saved)
        print(
            f"an interrupted run of another recipe or data left {backup}: starting afresh",
            flush=True,
        )
        shutil.rmtree(backup)
    return RunLog(recipe=asdict(recipe), data=record)


def _absolute(path: str | os.PathLike | None) -> str | None:
    return os.path.abspath(path) if path else None


def write_log(out: Path, log: RunLog) -> None:
    path = out.with_suffix(".history.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(log), indent=1))
    tmp.replace(path)


def plot_curves(log: RunLog, path: Path) -> None:
    """Accuracy and loss per epoch, train vs val, with the start of fine-tuning marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in log.epochs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series = {
        "accuracy": [
            ("accuracy", "train (augmented, own targets)"),
            ("val_accuracy", "val, FER2013 labels"),
            ("val_ferplus_accuracy", "val, FER+ majority"),
        ],
        "loss": [("loss", "train (augmented)"), ("val_loss", "val")],
    }
    for ax, (metric, lines) in zip(axes, series.items(), strict=True):
        for key, label in lines:
            if all(key in e for e in log.epochs):
                ax.plot(epochs, [e[key] for e in log.epochs], label=label)
        finetune = [e["epoch"] for e in log.epochs if e["phase"] == "finetune"]
        if finetune:
            ax.axvline(finetune[0] - 0.5, color="gray", linestyle=":", label="fine-tune starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    try:
        write_aside(path, lambda partial: fig.savefig(partial, dpi=100))
    finally:
        plt.close(fig)
