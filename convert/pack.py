"""Faces packed into one file for a teacher trained on another machine (``scripts/teacher.py``).

A GPU machine lent for minutes (see the model card, "Distillation") cannot read ``../shared``;
what travels to it is the working tree, 64 MiB in all. FER2013's train and val faces are 74 MB
as pixels and 55 MB with xz, which fits; zlib (``np.savez_compressed``) makes 68 MB, which does
not. The file is an ``.npz`` whose image arrays are xz-compressed bytes (``*_images_xz``),
read by ``unpack`` with numpy and the standard library alone (the teacher's machine has no
TensorFlow; this module imports nothing that needs it, or OpenCV).

Per split (``train``, ``val``): the images, FER2013 labels, FER+ vote counts (zeros where a face
has none), and keys (paths relative to the dataset folder), so the teacher's predictions come
back matched to the faces by name, not by position.
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convert import FACE_SIZE, ConvertError, write_aside

if TYPE_CHECKING:
    from convert.data import Split

SPLITS = {"train": "Training", "val": "PublicTest"}
MAX_VOTES = 255  # counts are stored as uint8 (FER+ has ten votes per face)


def pack(splits: dict[str, Split], out: Path) -> int:
    """Write ``out``; returns its size in bytes."""
    # Every split's votes checked before minutes of compression.
    arrays = {f"{name}_votes": _vote_counts(split) for name, split in splits.items()}
    for name, split in splits.items():
        arrays[f"{name}_images_xz"] = _xz(np.ascontiguousarray(split.images).tobytes())
        arrays[f"{name}_labels"] = split.labels.astype(np.int8)
        arrays[f"{name}_keys_xz"] = _xz(_joined(split))
    out.parent.mkdir(parents=True, exist_ok=True)
    # An interrupted or failed write (Ctrl-C, disk full) leaves no 50 MB half-file behind.
    write_aside(out, lambda partial: _savez(partial, arrays))
    return out.stat().st_size


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as file:  # a file object: np.savez would add .npz to a name
        np.savez(file, **arrays)


def _vote_counts(split: Split) -> np.ndarray:
    """The votes as bytes, refused unless each is a whole count that fits: a count of 200
    came back as -56 and fractions as 0 (the face then had no votes), without a word."""
    votes = split.votes
    if votes is None:
        raise ConvertError(
            f"{split.source}: no FER+ votes found; the teacher learns both labellings "
            "(pass --votes FILE)"
        )
    bad = np.flatnonzero(((votes != np.round(votes)) | (votes > MAX_VOTES)).any(axis=1))
    if bad.size:
        counts = ", ".join(f"{v:g}" for v in votes[bad[0]])
        raise ConvertError(
            f"{split.votes_source}: the votes of {split.keys[bad[0]]} ({counts}) are not whole "
            f"counts 0..{MAX_VOTES}, which a packed file stores ({bad.size} faces like it)"
        )
    return votes.astype(np.uint8)


def _joined(split: Split) -> bytes:
    """The keys, one per line, as the file system's bytes (a name that is not UTF-8 included)."""
    if odd := [key for key in split.keys if "\n" in key]:
        raise ConvertError(f"{split.source}: a file name with a line break: {odd[0]!r}")
    return "\n".join(split.keys).encode("utf-8", "surrogateescape")


def _keys(array: np.ndarray) -> list[str]:
    return _unxz(array).decode("utf-8", "surrogateescape").split("\n")


def _xz(data: bytes) -> np.ndarray:
    return np.frombuffer(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME), np.uint8)


def _unxz(array: np.ndarray) -> bytes:
    return lzma.decompress(array.tobytes())


def unpack(path: Path, split: str) -> dict[str, np.ndarray]:
    """One split of a packed file: ``images`` (N, 48, 48) uint8, ``labels``, ``votes``, ``keys``."""
    with np.load(path) as packed:
        images = np.frombuffer(_unxz(packed[f"{split}_images_xz"]), np.uint8)
        return {
            "images": images.reshape(-1, FACE_SIZE, FACE_SIZE),
            "labels": packed[f"{split}_labels"].astype(np.int64),
            "votes": packed[f"{split}_votes"].astype(np.float32),
            "keys": np.array(_keys(packed[f"{split}_keys_xz"])),
        }


def write_predictions(
    out: Path, keys: dict[str, np.ndarray], heads: dict[str, dict[str, np.ndarray]]
) -> None:
    """A teacher's predictions as ``convert train --teacher FILE.npz`` reads them: per split
    (``train``, ``val``) its ``keys`` and one (N, 7) array of probabilities per labelling
    (``fer2013``, ``ferplus``): ``train_keys``, ``train_fer2013``, ``train_ferplus``, ..."""
    arrays = {f"{split}_keys": np.asarray(k, dtype=str) for split, k in keys.items()}
    for split, by_head in heads.items():
        arrays.update({f"{split}_{head}": p.astype(np.float32) for head, p in by_head.items()})
    np.savez(out, **arrays)
