"""Faces and targets as the network is fed them: augmentation, class weights, tf.data batches.

One module for every step that fits the network (``convert.train`` and the quantization-aware
fine-tune in ``convert.qat``), so both see the same augmentation, targets and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from convert import ConvertError
from convert.data import Split
from convert.labels import expected_counts, training_targets
from convert.recipe import Recipe


@dataclass(frozen=True)
class Targets:
    """What a split's faces are trained towards: ``targets`` (N, 7) rows summing to 1, and
    ``weights`` (N,) per face (its target's expected class weight)."""

    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    left_out: int  # faces of the split without a target of this kind (no FER+ votes)

    def __len__(self) -> int:
        return len(self.targets)


def targets_for(split: Split, recipe: Recipe, teacher: np.ndarray | None = None) -> Targets:
    """The recipe's targets for ``split``, mixed with a teacher's predictions when given.

    Class weights are computed from the *expected* class counts of the label targets, and each
    face is weighted by its target's expected class weight; with one-hot targets this is
    exactly Keras' ``class_weight``, which for soft targets would weight by the argmax only.
    """
    if recipe.uses_votes and split.votes is None:
        raise ConvertError(
            f"--labels {recipe.labels} learns from FER+ votes, but none were found for "
            f"{split.source}: pass --votes FILE (ferplus.csv or Microsoft's fer2013new.csv), or "
            "--labels fer2013 to learn FER2013's labels alone"
        )
    targets, usable = training_targets(
        split.labels, split.votes, recipe.labels, recipe.ferplus_weight
    )
    if teacher is not None:
        targets = (1 - recipe.teacher_weight) * targets + recipe.teacher_weight * teacher
    per_class = class_weights(expected_counts(targets[usable]), recipe.class_weight_power)
    weights = targets @ per_class
    return Targets(
        images=split.images[usable],
        targets=targets[usable].astype(np.float32),
        weights=weights[usable].astype(np.float32),
        left_out=int((~usable).sum()),
    )


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Inverse-frequency weights to ``power``, scaled so the average face weighs 1."""
    present = np.maximum(counts, 1e-6)
    weights = (counts.sum() / (len(counts) * present)) ** power
    weights /= (weights * counts).sum() / counts.sum()
    return weights.astype(np.float32)


def augmentation(kind: str = "full") -> keras.Sequential:
    """Faces are near-frontal and mirror-symmetric: small geometric and photometric jitter
    (``full``), the geometric part alone (``geometric``: crops as other face detectors make
    them), or the mirror image alone (``flip``)."""
    steps = [layers.RandomFlip("horizontal")]
    if kind in ("full", "geometric"):
        steps += [
            layers.RandomRotation(0.04, fill_mode="nearest"),  # +-15 degrees
            layers.RandomZoom(0.1, fill_mode="nearest"),
            layers.RandomTranslation(0.08, 0.08, fill_mode="nearest"),
        ]
    if kind == "full":
        steps += [
            layers.RandomContrast(0.3),
            layers.RandomBrightness(0.2, value_range=(0, 255)),
            # Hides part of the face, as hands, glasses and masks do in the field.
            layers.RandomErasing(factor=0.5, scale=(0.02, 0.15), value_range=(0, 255)),
        ]
    return keras.Sequential(steps, name="augmentation")


def training_batches(
    data: Targets, batch_size: int, seed: int, augment: str = "full"
) -> tf.data.Dataset:
    """Shuffled, augmented batches of (faces, targets, weights)."""
    images = data.images[..., np.newaxis].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, data.targets, data.weights))
    ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    jitter = augmentation(augment)
    ds = ds.map(
        lambda x, y, w: (jitter(x, training=True), y, w), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def faces(images: np.ndarray) -> np.ndarray:
    """(N, 48, 48) uint8 -> the (N, 48, 48, 1) float32 the Keras model takes."""
    return images[..., np.newaxis].astype(np.float32)
