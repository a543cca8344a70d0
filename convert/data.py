"""Load FER2013 in either layout users have: Kaggle image folders or the original CSV, with the
FER+ votes of its faces when they are at hand.

Every loader returns 48x48 uint8 grayscale faces decoded by OpenCV, the decoder the daemon uses,
so training and serving see the same pixels (TensorFlow's default JPEG decoder differs by ~1.6
gray levels on FER2013).

FER+ votes come in two layouts: ``ferplus.csv`` (a ``path`` column relative to the dataset
folder, then the ten vote columns), which is found by itself at ``<data>/ferplus/ferplus.csv``
or beside a split folder, and Microsoft's ``fer2013new.csv`` (``Usage``, ``Image name``, the ten
vote columns), one row per row of the original ``fer2013.csv``, given with ``--votes``.
"""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from convert import EMOTIONS, FACE_SIZE, ConvertError
from edge import MAX_IMAGE_PIXELS
from edge.cli import not_a_file
from edge.emotions import native_stderr_silenced

USAGES = ("Training", "PublicTest", "PrivateTest")
# Folder names that hold each official split in the image-folder layouts seen in the wild.
SPLIT_FOLDERS = {
    "Training": ("train", "training"),
    "PublicTest": ("val", "validation", "publictest"),
    "PrivateTest": ("test", "privatetest"),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".pgm", ".tif", ".tiff"}
JPEG_SUFFIXES = {".jpg", ".jpeg", ".jfif"}
# A JPEG ends with the end-of-image marker; OpenCV decodes a cut-off file as grey below the
# cut, printing only "Premature end of JPEG file" without a name. Padding after it is allowed.
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
CSV_COLUMNS = ("emotion", "pixels", "usage")
# A face image is kilobytes; a file past this is no face (a video or a disk image named .jpg),
# and reading it whole would cost its size in memory before OpenCV refuses it.
MAX_IMAGE_BYTES = 64 * 2**20
# Header cells quoted in an error are cut to this length: a data row taken for the header
# quoted 2,304 pixels in one line.
SHOWN_CELL = 20


VOTES_FILE = Path("ferplus") / "ferplus.csv"


@dataclass(frozen=True)
class Split:
    """Faces of one split: ``images`` (N, 48, 48) uint8, ``labels`` (N,) int64 FER2013 ids;
    ``votes`` (N, 10) FER+ vote counts (``convert.labels.VOTE_COLUMNS``; a row of zeros where a
    face has no votes), or None when no votes file was found; ``keys`` name each face (its path
    relative to the dataset folder, or ``csv:<line>``)."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    votes: np.ndarray | None = None
    votes_source: str = ""
    keys: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(EMOTIONS))

    def subset(self, keep: np.ndarray) -> Split:
        """The faces where ``keep`` is True, with everything that belongs to them."""
        return replace(
            self,
            images=self.images[keep],
            labels=self.labels[keep],
            votes=None if self.votes is None else self.votes[keep],
            keys=tuple(k for k, kept in zip(self.keys, keep, strict=True) if kept),
        )

    def without_votes_count(self) -> int:
        return 0 if self.votes is None else int((self.votes.sum(axis=1) == 0).sum())


def load_split(
    path: str | os.PathLike, usage: str | None, votes: str | os.PathLike | None = None
) -> Split:
    """Load one split from a CSV, a folder of splits, or a folder of emotion folders.

    ``usage`` is an official split name; ``None`` takes a class folder whole and means
    PublicTest (the validation split) anywhere else. In a class folder,
    Kaggle file-name prefixes (``PrivateTest_*.jpg``) select the split, so the Kaggle ``test/``
    folder, which mixes both test halves, yields only the half asked for.
    ``votes``: a FER+ votes file; by default ``ferplus/ferplus.csv`` in the dataset folder is
    used when it is there.
    """
    root = Path(path)
    if usage is not None and usage not in USAGES:
        raise ConvertError(f"unknown usage {usage!r}: expected one of {', '.join(USAGES)}")
    if not root.exists():
        raise ConvertError(f"data path not found: {root}")
    if votes is not None and (why := not_a_file(Path(votes), "votes file")):
        raise ConvertError(f"--votes {votes}: {why}")
    if not root.is_file() and not root.is_dir():
        raise ConvertError(
            f"{root}: not a regular file (a device or a pipe): expected a fer2013 .csv file or "
            "a folder of images"
        )
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ConvertError(f"{root}: expected a fer2013 .csv file or a folder of images")
        split = _load_csv(root, usage or "PublicTest")
        return _with_row_votes(split, Path(votes), usage or "PublicTest") if votes else split
    if is_class_folder(root):
        split = _load_class_folder(root, usage)
    else:
        # Inside a folder of splits, no usage means PublicTest, also in the file-name prefixes
        # (Kaggle's test/ holds both test halves).
        usage = usage or "PublicTest"
        split = _load_class_folder(_split_folder(root, usage), usage)
    if votes is not None:
        return _with_path_votes(split, Path(votes))
    found = _find_votes(split)
    return _with_path_votes(split, found, required=False) if found else split


def check_separate_splits(data: str, val_data: str | None, otherwise: str) -> None:
    """A folder of emotion folders holds one split only: taken as val too (no ``--val-data``,
    or the same folder through ``..``, a trailing slash or a symlink), the training faces
    would be scored as val faces, which would ``otherwise``. A CSV or a folder of splits is
    fine: each split is taken from its own rows or subfolder."""
    if not is_class_folder(Path(data)):
        return
    if val_data is None:
        raise ConvertError(
            f"{data}: a folder of emotion folders holds one split only, so there is nothing to "
            f"validate on (it would {otherwise}): pass --val-data with a separate folder "
            "(FER2013's PublicTest)"
        )
    if Path(data).resolve() == Path(val_data).resolve():
        raise ConvertError(
            f"--val-data {val_data}: is the training folder (--data {data}); validating on the "
            f"training faces would {otherwise}: pass a separate folder (FER2013's PublicTest)"
        )


def is_class_folder(folder: Path) -> bool:
    """A folder of emotion folders (one split), as opposed to a folder of splits."""
    if not folder.is_dir():
        return False
    return _is_class_folder(folder)


def _is_class_folder(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in EMOTIONS) or any(
        d.is_dir() and d.name.lower() in EMOTIONS for d in folder.iterdir()
    )


def _split_folder(root: Path, usage: str) -> Path:
    children = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    for name in SPLIT_FOLDERS[usage]:
        if name in children:
            return children[name]
    # Kaggle's layout has train/ and test/ only, test/ holding PublicTest_ and PrivateTest_
    # files: the prefixes pick PublicTest there.
    test = next((children[n] for n in SPLIT_FOLDERS["PrivateTest"] if n in children), None)
    if usage == "PublicTest" and test is not None and _holds_prefix(test, usage):
        return test
    wanted = " or ".join(f"{n}/" for n in SPLIT_FOLDERS[usage])
    raise ConvertError(
        f"{root}: no emotion folders ({', '.join(EMOTIONS)}) and no {usage} split ({wanted}) found"
    )


def _holds_prefix(folder: Path, usage: str) -> bool:
    """Whether any image in ``folder``'s emotion folders is named ``<usage>_*``."""
    return any(
        image.name.startswith(f"{usage}_")
        for entry in folder.iterdir()
        if entry.is_dir() and entry.name.lower() in EMOTIONS
        for image in entry.iterdir()
    )


def _load_class_folder(folder: Path, usage: str | None) -> Split:
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []  # the Kaggle prefixes of images of another split
    not_images: list[str] = []  # suffixes of files that are not images by their names
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
            if image.name.startswith("."):  # hidden: macOS's ._face.jpg is not a face
                continue
            if image.is_dir():  # its faces are not read: said, as other skipped files are
                not_images.append("folders")
                continue
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                not_images.append(image.suffix.lower() or "no extension")
                continue
            if not _matches_usage(image.name, usage):
                skipped.append(image.name.split("_", 1)[0] + "_")
                continue
            files.append(image)
            labels.append(EMOTIONS.index(label))
    if not_images:  # said: a .gif of faces left out of training should not go unnoticed
        print(
            f"{folder}: {len(not_images)} files skipped, not images by their names "
            f"({', '.join(sorted(set(not_images)))}; read: {', '.join(sorted(IMAGE_SUFFIXES))})",
            file=sys.stderr,
            flush=True,
        )
    if not files and skipped:
        raise ConvertError(
            f"{folder}: no {usage} images in its emotion folders: all {len(skipped)} were "
            f"skipped, their names say another split ({', '.join(sorted(set(skipped)))}); "
            "give the split's own folder (evaluate: or pick the split with --usage)"
        )
    if not files:
        raise ConvertError(f"{folder}: no images found in its emotion folders")
    if skipped:  # said: a folder of mixed splits is scored on part of itself
        print(
            f"{folder}: {len(skipped)} images skipped, their names say another split than "
            f"{usage} ({', '.join(sorted(set(skipped)))})",
            file=sys.stderr,
            flush=True,
        )
    # libpng and OpenCV print their own complaints about a damaged file ("libpng error: Invalid
    # IHDR data", "[ WARN:0] ... PNG input buffer is incomplete") to fd 2, without the file's
    # name, before our one line that names it.
    with native_stderr_silenced(), ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = list(pool.map(read_face, files, chunksize=256))
    # Keys are relative to the dataset folder (the split folder's parent), as in ferplus.csv.
    keys = tuple(f.relative_to(folder.parent).as_posix() for f in files)
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), str(folder), keys=keys)


def _matches_usage(filename: str, usage: str | None) -> bool:
    """A Kaggle-prefixed file of another split does not belong; unprefixed files always do."""
    prefix = filename.split("_", 1)[0]
    if usage is None or prefix not in USAGES:
        return True
    return prefix == usage


def read_face(path: Path) -> np.ndarray:
    """Decode one image to a 48x48 gray face; names the file when it cannot be read."""
    content = _image_bytes(path)
    if _truncated_jpeg(path, content):
        raise ConvertError(f"{path}: not a readable image (a truncated JPEG: no end marker)")
    try:
        image = (
            cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_GRAYSCALE)
            if content
            else None
        )
    except cv2.error:  # refused from its header, before a decode of gigabytes
        raise ConvertError(
            f"{path}: larger than {MAX_IMAGE_PIXELS // 10**6} megapixels, not a face image "
            "(remove it from the folder)"
        ) from None
    if image is None:
        raise ConvertError(f"{path}: not a readable image (corrupt or unsupported format)")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        image = cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return image


def _image_bytes(path: Path) -> bytes:
    """The file's content, refused unread when it is no image file: reading a pipe named like
    an image waited forever, and ``/dev/zero`` (or a huge file) filled the memory."""
    if path.exists() and (why := not_a_file(path, "face image")):  # else: named by the read
        raise ConvertError(f"{path}: {why}")
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size > MAX_IMAGE_BYTES:
                raise ConvertError(
                    f"{path}: larger than {MAX_IMAGE_BYTES // 2**20} MiB, not a face image "
                    "(remove it from the folder)"
                )
            return file.read()
    except OSError as error:
        raise ConvertError(f"{path}: cannot read the image: {error.strerror or error}") from None


def _truncated_jpeg(path: Path, content: bytes) -> bool:
    """A JPEG (by name and start-of-image marker) without its end-of-image marker."""
    is_jpeg = path.suffix.lower() in JPEG_SUFFIXES and content.startswith(JPEG_START)
    return is_jpeg and not content.rstrip(b"\0\r\n ").endswith(JPEG_END)


def _load_csv(path: Path, usage: str) -> Split:
    try:
        labels, images = _read_csv_rows(path, usage)
    except UnicodeDecodeError:
        raise ConvertError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as error:
        raise ConvertError(f"{path}: not a readable CSV file ({error})") from None
    if not labels:
        raise ConvertError(f"{path}: no rows with Usage={usage}")
    keys = tuple(f"{usage}:{i}" for i in range(len(labels)))
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), f"{path}:{usage}", keys=keys)


def _read_csv_rows(path: Path, usage: str) -> tuple[list[int], list[np.ndarray]]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which is not part of the
    # first column's name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        _check_csv_header(path, header)
        col = {name: header.index(name) for name in CSV_COLUMNS}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue  # a blank line (often the last one)
            if len(row) != len(header):  # cut off, or pixels separated by commas
                raise ConvertError(
                    f"{path}:{line}: {len(row)} column(s), expected {len(header)} "
                    f"({','.join(header)})"
                )
            if _csv_usage(path, line, row[col["usage"]]) != usage:
                continue
            labels.append(_csv_label(path, line, row[col["emotion"]]))
            images.append(_csv_pixels(path, line, row[col["pixels"]]))
    return labels, images


def _check_csv_header(path: Path, header: list[str]) -> None:
    """The fer2013.csv columns, in any order; a first line that is a data row is said to be one."""
    missing = [c for c in CSV_COLUMNS if c not in header]
    if not missing:
        return
    shown = [_cell(c) for c in header]
    data = any(cell.replace(" ", "").isdecimal() for cell in header)
    found = "its first line looks like data, not a header" if data else f"CSV header {shown}"
    raise ConvertError(
        f"{path}: {found}: lacks column(s) {', '.join(missing)}; expected the fer2013.csv "
        "columns emotion,pixels,Usage"
    )


def _cell(text: str) -> str:
    """A CSV cell as an error quotes it: cut to ``SHOWN_CELL`` characters."""
    return text if len(text) <= SHOWN_CELL else f"{text[:SHOWN_CELL]}..."


def _csv_usage(path: Path, line: int, value: str) -> str:
    """A row's split; any other value is refused: a row of 'Validation' (or one whose pixels
    were separated by commas) was dropped without a word."""
    usage = value.strip()
    if usage not in USAGES:
        raise ConvertError(
            f"{path}:{line}: Usage {_cell(usage)!r} is not one of {', '.join(USAGES)}"
        )
    return usage


def _csv_label(path: Path, line: int, value: str) -> int:
    try:
        label = int(value)
    except ValueError:
        label = -1
    if not 0 <= label < len(EMOTIONS):
        raise ConvertError(f"{path}:{line}: emotion {value!r} is not a label id 0..6")
    return label


def _csv_pixels(path: Path, line: int, value: str) -> np.ndarray:
    """48x48 space-separated integers 0..255; the first bad one is quoted with its position."""
    tokens = value.split()
    if len(tokens) != FACE_SIZE * FACE_SIZE:
        raise ConvertError(
            f"{path}:{line}: pixels must be {FACE_SIZE * FACE_SIZE} values separated by "
            f"spaces, got {len(tokens)}"
        )
    pixels = np.array([int(t) if t.isdecimal() and len(t) <= 3 else -1 for t in tokens])
    bad = np.flatnonzero((pixels < 0) | (pixels > 255))
    if bad.size:
        raise ConvertError(
            f"{path}:{line}: pixel {bad[0] + 1} is {tokens[bad[0]]!r}, expected an integer "
            f"0..255 ({bad.size} bad value(s) in the row)"
        )
    return pixels.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE)


def _find_votes(split: Split) -> Path | None:
    """``ferplus/ferplus.csv`` in the dataset folder (the split folder's parent), if present."""
    candidate = Path(split.source).parent / VOTES_FILE
    return candidate if candidate.is_file() else None


def _read_vote_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise ConvertError(f"{path}: cannot read the FER+ votes file: {error}") from None
    if not rows:
        raise ConvertError(f"{path}: empty FER+ votes file")
    return [c.strip() for c in rows[0]], rows[1:]


def _vote_columns(path: Path, header: list[str]) -> list[int]:
    from convert.labels import VOTE_COLUMNS

    lower = [c.lower() for c in header]
    missing = [c for c in VOTE_COLUMNS if c.lower() not in lower]
    if missing:
        raise ConvertError(
            f"{path}: FER+ votes file lacks column(s) {', '.join(missing)}; expected "
            f"{', '.join(VOTE_COLUMNS)}"
        )
    return [lower.index(c.lower()) for c in VOTE_COLUMNS]


def _counts(path: Path, line: int, row: list[str], columns: list[int]) -> np.ndarray:
    try:
        counts = np.array([float(row[i] or 0) for i in columns], np.float32)
    except (ValueError, IndexError):
        raise ConvertError(f"{path}:{line}: vote counts must be numbers") from None
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ConvertError(f"{path}:{line}: vote counts must be finite and not negative")
    return counts


def _check_row_length(
    path: Path, line: int, row: list[str], header: list[str], needed: list[int]
) -> None:
    """A row too short for a column it must have (a cut-off line) is named, not indexed."""
    if len(row) <= max(needed):
        raise ConvertError(
            f"{path}:{line}: {len(row)} column(s), expected {len(header)} ({','.join(header)})"
        )


def _with_path_votes(split: Split, path: Path, required: bool = True) -> Split:
    """Votes matched by path relative to the dataset folder, else by ``<emotion>/<file>``
    (unique within FER2013, whose file names carry the split), so a copied or renamed split
    folder still finds its votes."""
    header, rows = _read_vote_rows(path)
    if "path" not in [c.lower() for c in header]:
        raise ConvertError(
            f"{path}: a FER+ votes file for image folders needs a 'path' column "
            "(relative to the dataset folder, e.g. train/angry/Training_10118481.jpg)"
        )
    columns, key_column = _vote_columns(path, header), [c.lower() for c in header].index("path")
    by_path: dict[str, np.ndarray] = {}
    by_tail: dict[str, np.ndarray | None] = {}
    lines: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        _check_row_length(path, line, row, header, [*columns, key_column])
        key = row[key_column].strip().replace("\\", "/")
        counts = _counts(path, line, row, columns)
        if key in by_path and not np.array_equal(by_path[key], counts):
            # Which row is right cannot be told; the last one used to win without a word.
            raise ConvertError(
                f"{path}:{line}: {key} has other votes on line {lines[key]}; give each image "
                "one row"
            )
        by_path[key], lines[key] = counts, line
        tail = "/".join(key.split("/")[-2:])
        by_tail[tail] = None if tail in by_tail else counts  # ambiguous tails match nothing
    votes = np.zeros((len(split), 10), np.float32)
    for i, key in enumerate(split.keys):
        found = by_path.get(key)
        if found is None:
            found = by_tail.get("/".join(key.split("/")[-2:]))
        if found is not None:
            votes[i] = found
    if not votes.any():
        if not required:  # a votes file that happens to lie there, for other images
            return split
        raise ConvertError(f"{path}: none of the {len(split)} images of {split.source} has votes")
    return replace(split, votes=votes, votes_source=str(path))


def _with_row_votes(split: Split, path: Path, usage: str) -> Split:
    """Microsoft's ``fer2013new.csv``: one row per ``fer2013.csv`` row, in the same order, so the
    n-th row of a Usage is the n-th face of that split there too."""
    header, rows = _read_vote_rows(path)
    lower = [c.lower() for c in header]
    if "usage" not in lower:
        raise ConvertError(
            f"{path}: votes for a fer2013.csv need Microsoft's fer2013new.csv layout "
            "(a Usage column and one row per fer2013.csv row)"
        )
    columns, usage_column = _vote_columns(path, header), lower.index("usage")
    for line, row in enumerate(rows, start=2):
        if row:
            _check_row_length(path, line, row, header, [*columns, usage_column])
    votes = [
        _counts(path, line, row, columns)
        for line, row in enumerate(rows, start=2)
        if row and row[usage_column].strip() == usage
    ]
    if len(votes) != len(split):
        raise ConvertError(
            f"{path}: {len(votes)} rows with Usage={usage}, but {split.source} has "
            f"{len(split)}: not the votes of this CSV"
        )
    return replace(split, votes=np.stack(votes), votes_source=str(path))
