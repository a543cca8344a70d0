"""Honest evaluation: accuracy, macro-F1, per-class results, confusion matrix, per-face latency,
under each labelling at hand: the data's own labels (FER2013's, or a folder's names) and, where
FER+ votes are found, the FER+ majority (``convert.labels``: faces without one are left out of
that score and counted).

A ``.tflite`` model is run through the daemon's own classifier (``edge.emotions``), so the
numbers describe exactly what the daemon will do, preprocessing included. Evaluating one never
imports TensorFlow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convert import EMOTIONS, ConvertError, quiet_tensorflow, write_aside
from convert.data import load_split
from convert.labels import NO_LABEL, ferplus_majority
from convert.litert import face_predictor
from edge.cli import not_a_file

Predict = Callable[[np.ndarray], np.ndarray]  # (N, 48, 48) uint8 -> (N, 7) probabilities


def evaluate(
    model_path: Path,
    data: str,
    usage: str | None,
    latency_faces: int = 300,
    votes: str | None = None,
    labels: str = "both",
) -> dict:
    """The report: the data's own labels at the top level (as always), FER+ under ``ferplus``.

    ``labels`` ferplus needs votes: data without them is refused before minutes of predicting.
    """
    predict_batch, predict_one = load_predictor(model_path)  # checked before the data's minutes
    split = load_split(data, usage, votes)
    if labels == "ferplus" and split.votes is None:
        raise ConvertError(
            f"--labels ferplus: no FER+ votes found for {split.source}: pass --votes FILE"
        )
    majority = ferplus_majority(split.votes) if split.votes is not None else None
    if majority is not None and not (majority != NO_LABEL).any():
        if labels == "ferplus":
            raise ConvertError(
                f"--labels ferplus: no face of {split.source} has a single FER+ top vote among "
                "the 7 emotions (all tied, contempt, unknown or not a face)"
            )
        majority = None  # nothing to score: no "accuracy 0.0000 on 0 faces", but said
        print(
            f"{split.votes_source}: no FER+ score: no face of {split.source} has a single top "
            "vote among the 7 emotions (all tied, contempt, unknown or not a face)",
            file=sys.stderr,
            flush=True,
        )
    probs = np.concatenate(
        [predict_batch(split.images[i : i + 256]) for i in range(0, len(split), 256)]
    )
    if not np.isfinite(probs).all():
        raise ConvertError(f"{model_path}: predicts NaN or infinite values")
    predicted = probs.argmax(axis=1)
    report = {"model": str(model_path), "data": split.source, **score(split.labels, predicted)}
    report["labellings"] = ["fer2013"]
    if majority is not None:
        scored = majority != NO_LABEL
        report["labellings"].append("ferplus")
        report["ferplus"] = {
            "votes": split.votes_source,
            "left_out": int((~scored).sum()),
            "without_votes": split.without_votes_count(),  # a file for part of the faces
            **score(majority[scored], predicted[scored]),
        }
    report["latency_ms"] = latency(predict_one, split.images[:latency_faces])
    return report


def load_predictor(path: Path) -> tuple[Predict, Predict]:
    """(batch predictor, single-face predictor on one thread) for a .tflite or .keras model."""
    if path.suffix.lower() == ".keras":
        return _keras_predictor(path)
    if why := not_a_file(path, "model file"):
        raise ConvertError(f"{path}: {why}")
    from edge.emotions import EmotionClassifier, ModelError

    try:
        batch, single = EmotionClassifier(path, num_threads=2), EmotionClassifier(path, 1)
    except ModelError as error:
        raise ConvertError(str(error)) from None
    if batch.labels != EMOTIONS:
        raise ConvertError(f"{path}: labels {batch.labels} are not FER2013's {EMOTIONS}")
    return face_predictor(batch), face_predictor(single)


def _keras_predictor(path: Path) -> tuple[Predict, Predict]:
    from convert.export import check_keras_file, load_keras_model

    check_keras_file(path)  # before the import, so a wrong file is the only line
    quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # latency on one thread, like TFLite
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = load_keras_model(path)

    def batch(images: np.ndarray) -> np.ndarray:
        return model.predict_on_batch(images[..., np.newaxis].astype(np.float32))

    def one(images: np.ndarray) -> np.ndarray:
        return model(images[..., np.newaxis].astype(np.float32), training=False).numpy()

    return batch, one


def score(labels: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: truth)."""
    k = len(EMOTIONS)
    confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    true_positive = np.diag(confusion).astype(float)
    precision = np.divide(
        true_positive, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0
    )
    recall = np.divide(true_positive, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(k), where=denominator > 0)
    # Averaged over the classes in the truth or the predictions (scikit-learn's default): a
    # class absent from both, in a folder without disgust faces, is no failure of the model.
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return {
        "n": len(labels),
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_f1_classes": [label for label, kept in zip(EMOTIONS, present, strict=True) if kept],
        "labels": list(EMOTIONS),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(confusion[i].sum()),
            }
            for i, label in enumerate(EMOTIONS)
        },
        "confusion": confusion.tolist(),
    }


def latency(predict_one: Predict, faces: np.ndarray, warmup: int = 10) -> dict:
    """Milliseconds per face, one face per invocation, after a short warm-up."""
    for face in faces[:warmup]:
        predict_one(face[np.newaxis])
    times = []
    for face in faces:
        start = time.perf_counter()
        predict_one(face[np.newaxis])
        times.append(1000 * (time.perf_counter() - start))
    return {
        "median": float(np.median(times)),
        "p95": float(np.percentile(times, 95)),
        "faces": len(times),
        "threads": 1,
    }


TITLES = {
    "fer2013": "labels of the data (FER2013's)",
    "ferplus": "FER+ majority (top vote of ten)",
}


def format_report(report: dict, shown: list[str]) -> str:
    lines = [
        f"model     {report['model']}",
        f"data      {report['data']} ({report['n']} faces)",
        f"latency   median {report['latency_ms']['median']:.3f} ms, "
        f"p95 {report['latency_ms']['p95']:.3f} ms per face (1 thread)",
    ]
    for name in shown:
        part = _part(report, name)
        lines += ["", f"== {TITLES[name]} =="]
        if name == "ferplus":
            lines.append(
                f"votes     {part['votes']}: {part['n']} faces scored, {part['left_out']} left "
                f"out ({part['without_votes']} without votes, "
                f"{part['left_out'] - part['without_votes']} with a top vote of contempt, "
                "unknown or not-a-face, or tied)"
            )
        lines += [
            f"accuracy  {part['accuracy']:.4f}",
            f"macro-F1  {part['macro_f1']:.4f}{_averaged_over(part)}",
            "",
            f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
        ]
        for label, row in part["per_class"].items():
            lines.append(
                f"{label:<10}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                f"{row['f1']:>10.3f}{row['support']:>10d}"
            )
        lines += [
            "",
            "confusion (rows: true, columns: predicted)",
            " " * 10 + "".join(f"{label[:8]:>9}" for label in part["labels"]),
        ]
        for label, row in zip(part["labels"], part["confusion"], strict=True):
            lines.append(f"{label:<10}" + "".join(f"{count:>9d}" for count in row))
    return "\n".join(lines)


def _averaged_over(part: dict) -> str:
    """Which classes the macro-F1 averages, said only when some are left out."""
    classes = part.get("macro_f1_classes", part["labels"])
    if len(classes) == len(part["labels"]):
        return ""
    return f" (over the {len(classes)} classes in the data or predicted: {', '.join(classes)})"


def _part(report: dict, name: str) -> dict:
    return report if name == "fer2013" else report[name]


def plot_confusion(report: dict, path: Path, shown: list[str]) -> None:
    """Row-normalised confusion matrices with counts (one per labelling shown), so rare classes
    are readable too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(7 * len(shown), 6), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=True):
        part = _part(report, name)
        counts = np.array(part["confusion"])
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        labels = part["labels"]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                f"{count}\n{rates[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(
            f"{TITLES[name]}\naccuracy {part['accuracy']:.1%}, macro-F1 {part['macro_f1']:.3f} "
            f"(n={part['n']})"
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_aside(path, lambda partial: fig.savefig(partial, dpi=100))
    finally:
        plt.close(fig)
