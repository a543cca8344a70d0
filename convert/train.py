"""Transfer learning on FER2013: load, augment, build, fit (head, then whole network), log.

Reads like a Keras example on purpose: each step is one short function, and every number that
took measuring lives in ``Recipe`` with the reason next to it.
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
from keras import layers

from convert import EMOTIONS, ConvertError
from convert.data import Split, load_split
from convert.model import build_model


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of a training run; the defaults are the shipped model's recipe."""

    backbone: str = "mobilenetv2"
    weights: str = "imagenet"
    alpha: float = 0.35
    # 96 px: the 48-px faces upscaled 2x give MobileNetV2 a 3x3 final feature map; measured on
    # 2 CPU cores it trains ~8x faster than 224 px (README, "Choosing the input size").
    image_size: int = 96
    batch_size: int = 64
    # Phase 1 trains only the new head, so its random gradients do not wreck ImageNet features.
    head_epochs: int = 2
    head_learning_rate: float = 1e-3
    # Phase 2 fine-tunes everything at a lower rate; early stopping usually ends it sooner.
    epochs: int = 30
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    # Halve the rate after 2 flat validation epochs, stop after 6, keep the best val checkpoint.
    lr_patience: int = 2
    patience: int = 6
    # "plateau" halves the rate on stalls and stops early; "cosine" decays it to zero over exactly
    # ``epochs`` with no early stop: for a fixed CPU budget (continuing a run with ``init``) the
    # whole budget is spent and the last, lowest-rate epochs are usually the best.
    schedule: str = "plateau"
    # FER2013 has ambiguous and wrong labels: soften the targets a little.
    label_smoothing: float = 0.1
    # Class weights (N / (K * n_c)) ** power: 1 balances fully (disgust is 1.5% of train) but
    # costs overall accuracy; 0.5 lifts rare classes while keeping the majority ones.
    class_weight_power: float = 0.5
    seed: int = 1337


@dataclass
class RunLog:
    """What the run did, written next to the model after every epoch (so a crash keeps it)."""

    recipe: dict
    data: dict
    epochs: list[dict] = field(default_factory=list)
    best_val_accuracy: float = 0.0
    finished: bool = False


def train(
    data: str, val_data: str | None, out: Path, recipe: Recipe, init: Path | None = None
) -> RunLog:
    """The whole run; resumes from ``<out>.backup/`` if an earlier run was interrupted.

    ``init`` starts from the weights of an earlier run's model (same backbone and size), so a
    CPU budget can be spent in steps instead of one run of many hours.
    """
    keras.utils.set_random_seed(recipe.seed)
    train_split, val_split = load_data(data, val_data)
    train_ds = make_dataset(train_split, recipe.batch_size, augmentation(), recipe.seed)
    val_ds = make_dataset(val_split, recipe.batch_size)
    model, backbone = build_model(recipe.backbone, recipe.weights, recipe.image_size, recipe.alpha)
    if init is not None:
        load_weights(model, init)
    log = start_log(out, recipe, data, val_data, train_split, val_split, init)
    weights = class_weights(train_split.class_counts(), recipe.class_weight_power)
    checkpoint = keras.callbacks.ModelCheckpoint(
        out, monitor="val_accuracy", mode="max", save_best_only=True
    )
    checkpoint.best = log.best_val_accuracy or checkpoint.best

    fit = Fit(model, train_ds, val_ds, weights, recipe, out, log)
    backbone.trainable = False
    # A random backbone has no features worth protecting: from scratch, everything trains at once.
    head_epochs = 0 if recipe.weights == "none" else recipe.head_epochs
    fit.phase("head", 0, head_epochs, recipe.head_learning_rate, [checkpoint])
    backbone.trainable = True
    if recipe.schedule == "cosine":
        steps = recipe.epochs * len(train_ds)
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
    log.finished = True
    write_log(out, log)
    shutil.rmtree(out.with_suffix(".backup"), ignore_errors=True)
    plot_curves(log, out.with_suffix(".curves.png"))
    return log


def load_weights(model: keras.Model, path: Path) -> None:
    """Copy an earlier run's weights in; a different architecture is refused, not half-loaded."""
    if not path.is_file():
        raise ConvertError(f"--init {path}: no such file")
    try:
        earlier = keras.models.load_model(path, compile=False)
        model.set_weights(earlier.get_weights())
    except (ValueError, OSError) as error:
        raise ConvertError(
            f"--init {path}: does not fit this recipe's model (backbone and alpha must "
            f"match): {error}"
        ) from None


def load_data(data: str, val_data: str | None) -> tuple[Split, Split]:
    train_split = load_split(data, "Training")
    val_split = load_split(val_data or data, "PublicTest")
    missing = [EMOTIONS[i] for i, n in enumerate(train_split.class_counts()) if n == 0]
    if missing:
        raise ConvertError(f"{train_split.source}: no training images for {', '.join(missing)}")
    return train_split, val_split


def augmentation() -> keras.Sequential:
    """Faces are near-frontal and mirror-symmetric: small geometric and photometric jitter."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(0.04, fill_mode="nearest"),  # +-15 degrees
            layers.RandomZoom(0.1, fill_mode="nearest"),
            layers.RandomTranslation(0.08, 0.08, fill_mode="nearest"),
            layers.RandomContrast(0.3),
            layers.RandomBrightness(0.2, value_range=(0, 255)),
            # Hides part of the face, as hands, glasses and masks do in the field.
            layers.RandomErasing(factor=0.5, scale=(0.02, 0.15), value_range=(0, 255)),
        ],
        name="augmentation",
    )


def make_dataset(
    split: Split, batch_size: int, augment: keras.Sequential | None = None, seed: int = 0
) -> tf.data.Dataset:
    images = split.images[..., np.newaxis].astype(np.float32)
    labels = keras.utils.to_categorical(split.labels, len(EMOTIONS))
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if augment is not None:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(counts: np.ndarray, power: float) -> dict[int, float]:
    """Inverse-frequency weights to ``power``, scaled so the average sample weighs 1."""
    present = np.maximum(counts, 1)
    weights = (counts.sum() / (len(counts) * present)) ** power
    weights /= (weights * counts).sum() / counts.sum()
    return {i: float(w) for i, w in enumerate(weights)}


def validation_schedule(recipe: Recipe) -> list[keras.callbacks.Callback]:
    """Halve the rate when val accuracy stalls, stop when it stops improving."""
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy", mode="max", factor=0.5, patience=recipe.lr_patience, min_lr=1e-6
        ),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=recipe.patience),
    ]


@dataclass
class Fit:
    """What the training phases share: model, data, class weights, recipe and the run log."""

    model: keras.Model
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    weights: dict[int, float]
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
        """Compile and fit one phase; skipped when the log shows it already finished."""
        log = self.log
        if end_epoch <= first_epoch or any(
            e["phase"] == name and e.get("last") for e in log.epochs
        ):
            return
        self.model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=self.recipe.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.recipe.label_smoothing),
            metrics=["accuracy"],
        )
        backup = keras.callbacks.BackupAndRestore(os.fspath(self.out.with_suffix(".backup") / name))
        self.model.fit(
            self.train_ds,
            validation_data=self.val_ds,
            initial_epoch=first_epoch,
            epochs=end_epoch,
            class_weight=self.weights,
            callbacks=[backup, EpochLog(name, self.out, log), *callbacks],
            shuffle=False,  # the dataset shuffles itself
            verbose=1 if sys.stdout.isatty() else 2,
        )
        if log.epochs and log.epochs[-1]["phase"] == name:
            log.epochs[-1]["last"] = True
            write_log(self.out, log)


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
        self.log.best_val_accuracy = max(self.log.best_val_accuracy, entry["val_accuracy"])
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
    init: Path | None = None,
) -> RunLog:
    """A new log, or the interrupted run's log when its backup is still there to resume."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".history.json")
    if out.with_suffix(".backup").exists() and path.exists():
        saved = json.loads(path.read_text())
        if saved["recipe"] == asdict(recipe):
            print(f"resuming the interrupted run logged in {path}", flush=True)
            return RunLog(**saved)
    record = {
        "path": data,
        "val_path": val_data,
        "train": train_split.source,
        "val": val_split.source,
        "train_count": len(train_split),
        "val_count": len(val_split),
        "train_class_counts": train_split.class_counts().tolist(),
        "labels": list(EMOTIONS),
        # The earlier model this run continued from (--init): part of how the result was made.
        "init": str(init) if init else None,
    }
    return RunLog(recipe=asdict(recipe), data=record)


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
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [e[metric] for e in log.epochs], label="train (augmented)")
        ax.plot(epochs, [e[f"val_{metric}"] for e in log.epochs], label="val")
        finetune = [e["epoch"] for e in log.epochs if e["phase"] == "finetune"]
        if finetune:
            ax.axvline(finetune[0] - 0.5, color="gray", linestyle=":", label="fine-tune starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
