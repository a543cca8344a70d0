"""FER2013 loading: both layouts users have, the original label order, and clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FER, SAMPLE_CSV

from convert import EMOTIONS, ConvertError
from convert.data import load_split

# Published per-class counts of the official splits (FER2013 README).
VAL_COUNTS = [467, 56, 496, 895, 653, 415, 607]


def write_folders(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / EMOTIONS[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{prefix}_{i:05d}.png"), image)


def test_kaggle_folders_give_official_counts_in_original_label_order():
    val = load_split(FER, "PublicTest")
    assert val.class_counts().tolist() == VAL_COUNTS
    assert val.images.shape == (3589, 48, 48) and val.images.dtype == np.uint8
    # Alphabetical folder numbering would put neutral at 4; the original order puts it at 6.
    assert val.labels[val.labels == EMOTIONS.index("neutral")].size == 607


def test_csv_and_folders_agree_on_labels_and_pixels(tmp_path: Path):
    csv_split = load_split(SAMPLE_CSV, "Training")
    assert csv_split.class_counts().tolist() == [10] * 7
    write_folders(tmp_path / "train", csv_split.images, csv_split.labels, "Training")
    folder_split = load_split(tmp_path, "Training")
    order = np.lexsort((folder_split.labels,))
    assert folder_split.labels[order].tolist() == sorted(csv_split.labels.tolist())
    for label in range(7):
        from_csv = csv_split.images[csv_split.labels == label]
        from_folder = folder_split.images[folder_split.labels == label]
        np.testing.assert_array_equal(from_csv, from_folder)


def test_kaggle_test_folder_yields_only_the_requested_half(tmp_path: Path):
    split = load_split(SAMPLE_CSV, "PublicTest")
    write_folders(tmp_path / "test", split.images[:35], split.labels[:35], "PublicTest")
    write_folders(tmp_path / "test", split.images[35:], split.labels[35:], "PrivateTest")
    assert len(load_split(tmp_path, "PrivateTest")) == 35
    assert len(load_split(tmp_path / "test", "PublicTest")) == 35
    assert len(load_split(tmp_path / "test", None)) == 70


def test_class_folder_is_taken_whole_and_other_sizes_are_resized(tmp_path: Path):
    big = cv2.resize(load_split(SAMPLE_CSV, "PublicTest").images[0], (120, 120))
    (tmp_path / "Happy").mkdir()
    cv2.imwrite(str(tmp_path / "Happy" / "me.jpg"), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    split = load_split(tmp_path, None)
    assert split.labels.tolist() == [EMOTIONS.index("happy")]
    assert split.images.shape == (1, 48, 48)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere", "data path not found"),
        (lambda d: _write(d / "x.csv", "label,image\n1,2 3\n"), "lacks column(s) emotion, pixels"),
        (
            lambda d: _write(d / "x.csv", "emotion,pixels,Usage\n9,1 2,Training\n"),
            "x.csv:2: emotion '9'",
        ),
        (lambda d: _write(d / "x.csv", "emotion,pixels,Usage\n1,1 2,Training\n"), "2304 values"),
        (
            lambda d: _write(d / "sad" / "broken.jpg", "not a jpeg") and d,
            "broken.jpg: not a readable",
        ),
        (
            lambda d: _write(d / "sad" / "a.txt", "") and _write(d / "smiling" / "a.jpg", "") and d,
            "smiling: folder name is not an emotion",
        ),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no emotion folders"),
    ],
    ids=[
        "missing",
        "csv-columns",
        "csv-label",
        "csv-pixels",
        "corrupt-image",
        "unknown-folder",
        "no-split",
    ],
)
def test_bad_data_is_named_in_the_error(tmp_path: Path, make, message: str):
    with pytest.raises(ConvertError) as error:
        load_split(make(tmp_path), "Training")
    assert message in str(error.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
