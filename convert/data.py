"""Load FER2013 in either layout users have: Kaggle image folders or the original CSV.

Every loader returns 48x48 uint8 grayscale faces decoded by OpenCV, the decoder the daemon uses,
so training and serving see the same pixels (TensorFlow's default JPEG decoder differs by ~1.6
gray levels on FER2013).
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from convert import EMOTIONS, FACE_SIZE, ConvertError

USAGES = ("Training", "PublicTest", "PrivateTest")
# Folder names that hold each official split in the image-folder layouts seen in the wild.
SPLIT_FOLDERS = {
    "Training": ("train", "training"),
    "PublicTest": ("val", "validation", "publictest"),
    "PrivateTest": ("test", "privatetest"),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".tif", ".tiff"}
CSV_COLUMNS = ("emotion", "pixels", "usage")


@dataclass(frozen=True)
class Split:
    """Faces of one split: ``images`` (N, 48, 48) uint8, ``labels`` (N,) int64 ids."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(EMOTIONS))


def load_split(path: str | os.PathLike, usage: str | None) -> Split:
    """Load one split from a CSV, a folder of splits, or a folder of emotion folders.

    ``usage`` is an official split name; ``None`` takes a class folder whole and means
    PublicTest (the validation split) anywhere else. In a class folder,
    Kaggle file-name prefixes (``PrivateTest_*.jpg``) select the split, so the Kaggle ``test/``
    folder, which mixes both test halves, yields only the half asked for.
    """
    root = Path(path)
    if usage is not None and usage not in USAGES:
        raise ConvertError(f"unknown usage {usage!r}: expected one of {', '.join(USAGES)}")
    if not root.exists():
        raise ConvertError(f"data path not found: {root}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ConvertError(f"{root}: expected a fer2013 .csv file or a folder of images")
        return _load_csv(root, usage or "PublicTest")
    if _is_class_folder(root):
        return _load_class_folder(root, usage)
    usage = usage or "PublicTest"
    return _load_class_folder(_split_folder(root, usage), usage)


def _is_class_folder(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in EMOTIONS) or any(
        d.is_dir() and d.name.lower() in EMOTIONS for d in folder.iterdir()
    )


def _split_folder(root: Path, usage: str) -> Path:
    children = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    for name in SPLIT_FOLDERS[usage]:
        if name in children:
            return children[name]
    wanted = " or ".join(f"{n}/" for n in SPLIT_FOLDERS[usage])
    raise ConvertError(
        f"{root}: no emotion folders ({', '.join(EMOTIONS)}) and no {usage} split ({wanted}) found"
    )


def _load_class_folder(folder: Path, usage: str | None) -> Split:
    files: list[Path] = []
    labels: list[int] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            continue
        label = entry.name.lower()
        if label not in EMOTIONS:
            raise ConvertError(
                f"{entry}: folder name is not an emotion; expected one of {', '.join(EMOTIONS)}"
            )
        for image in sorted(entry.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and _matches_usage(image.name, usage):
                files.append(image)
                labels.append(EMOTIONS.index(label))
    if not files:
        raise ConvertError(f"{folder}: no images found in its emotion folders")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = list(pool.map(read_face, files, chunksize=256))
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), str(folder))


def _matches_usage(filename: str, usage: str | None) -> bool:
    """A Kaggle-prefixed file of another split does not belong; unprefixed files always do."""
    prefix = filename.split("_", 1)[0]
    if usage is None or prefix not in USAGES:
        return True
    return prefix == usage


def read_face(path: Path) -> np.ndarray:
    """Decode one image to a 48x48 gray face; names the file when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ConvertError(f"{path}: not a readable image (corrupt or unsupported format)")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        image = cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return image


def _load_csv(path: Path, usage: str) -> Split:
    images: list[np.ndarray] = []
    labels: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ConvertError(
                f"{path}: CSV header {header} lacks column(s) {', '.join(missing)}; "
                "expected the fer2013.csv columns emotion,pixels,Usage"
            )
        col = {name: header.index(name) for name in CSV_COLUMNS}
        for line, row in enumerate(reader, start=2):
            if row[col["usage"]].strip() != usage:
                continue
            labels.append(_csv_label(path, line, row[col["emotion"]]))
            images.append(_csv_pixels(path, line, row[col["pixels"]]))
    if not labels:
        raise ConvertError(f"{path}: no rows with Usage={usage}")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), f"{path}:{usage}")


def _csv_label(path: Path, line: int, value: str) -> int:
    try:
        label = int(value)
    except ValueError:
        label = -1
    if not 0 <= label < len(EMOTIONS):
        raise ConvertError(f"{path}:{line}: emotion {value!r} is not a label id 0..6")
    return label


def _csv_pixels(path: Path, line: int, value: str) -> np.ndarray:
    try:
        pixels = np.array(value.split(), dtype=np.int64)
    except ValueError:
        raise ConvertError(f"{path}:{line}: pixels must be space-separated integers") from None
    if pixels.size != FACE_SIZE * FACE_SIZE or pixels.min() < 0 or pixels.max() > 255:
        raise ConvertError(
            f"{path}:{line}: pixels must be {FACE_SIZE * FACE_SIZE} values in 0..255, "
            f"got {pixels.size}"
        )
    return pixels.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE)
