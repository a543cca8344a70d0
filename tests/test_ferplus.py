"""Ten human votes per face: training on them, scoring against them, and distillation.

A small copy of the real data (FER2013 images with their real FER+ rows) keeps these runs short;
the full val split checks the scoring rule itself.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import FER, MNV2_WEIGHTS, SAMPLE_CSV, run_cli

from convert import EMOTIONS

TINY = ("--image-size", "32", "--batch-size", "32", "--head-epochs", "1", "--epochs", "1")
ANY_DROP = ("--max-drop", "100")
VOTES = FER / "ferplus" / "ferplus.csv"


def _clear_majority_votes() -> dict[str, list[str]]:
    """FER+ rows whose single top vote is one of the seven emotions (the first seven columns)."""
    with VOTES.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    clear = {}
    for row in rows:
        counts = [int(c) for c in row[1:]]
        top = max(counts)
        if counts.count(top) == 1 and counts.index(top) < 7:
            clear[row[0]] = row
    return clear


def _has_votes() -> set[str]:
    with VOTES.open(newline="") as handle:
        return {row[0] for row in csv.reader(handle)}


@pytest.fixture(scope="module")
def small_fer(tmp_path_factory) -> Path:
    """train/ (24 faces per class) and val/ (10 per class) copied from FER2013 with their FER+
    rows in ferplus/ferplus.csv; in each split one face FER+ dropped as not a face (no row)."""
    root = tmp_path_factory.mktemp("fer") / "fer2013"
    votes, any_votes = _clear_majority_votes(), _has_votes()
    rows = []
    for split, per_class in (("train", 24), ("val", 10)):
        for emotion in EMOTIONS:
            files = sorted((FER / split / emotion).iterdir())
            with_votes = [f for f in files if f"{split}/{emotion}/{f.name}" in votes]
            (root / split / emotion).mkdir(parents=True)
            for f in with_votes[:per_class]:
                shutil.copyfile(f, root / split / emotion / f.name)
                rows.append(votes[f"{split}/{emotion}/{f.name}"])
        no_votes = next(
            f
            for f in sorted((FER / split / "sad").iterdir())
            if f"{split}/sad/{f.name}" not in any_votes
        )
        shutil.copyfile(no_votes, root / split / "sad" / no_votes.name)
    (root / "ferplus").mkdir()
    with (root / "ferplus" / "ferplus.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(next(csv.reader(VOTES.open())))
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def trained_on_votes(small_fer: Path) -> Path:
    out = small_fer.parent / "votes.keras"
    result = run_cli(
        "convert", "train", "--data", small_fer, "--weights", MNV2_WEIGHTS,
        "--labels", "mix", "--ferplus-weight", "0.7", "--out", out, *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 training faces without FER+ votes" in result.stdout
    return out


def test_training_on_votes_chooses_checkpoints_by_both_labellings(trained_on_votes: Path):
    history = json.loads(trained_on_votes.with_suffix(".history.json").read_text())
    assert history["recipe"]["labels"] == "mix" and history["recipe"]["ferplus_weight"] == 0.7
    assert history["data"]["train_count"] == 7 * 24 and history["data"]["train_left_out"] == 1
    assert history["data"]["votes"].endswith("ferplus/ferplus.csv")
    for epoch in history["epochs"]:
        expected = 0.7 * epoch["val_ferplus_accuracy"] + 0.3 * epoch["val_accuracy"]
        assert epoch["val_score"] == pytest.approx(expected)
    assert history["best_val_score"] == max(e["val_score"] for e in history["epochs"])


def test_the_export_check_scores_both_labellings(trained_on_votes: Path):
    out = trained_on_votes.with_name("votes-int8.tflite")
    result = run_cli(
        "convert", "export", "--model", trained_on_votes, "--out", out, *ANY_DROP
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FER+ majority (70 faces)" in result.stdout
    check = json.loads(out.with_suffix(".json").read_text())["provenance"]["export_check"]
    assert check["val_faces"] == 71 and check["ferplus"]["n"] == 70
    trained_on = json.loads(out.with_suffix(".json").read_text())["provenance"]["trained_on"]
    assert trained_on["labels"] == "mix" and trained_on["ferplus_weight"] == 0.7


def test_export_data_chooses_the_split_the_check_runs_on(trained_on_votes: Path, tmp_path):
    """`--data` names the check's faces even though the training log names others."""
    out = tmp_path / "csv.tflite"
    result = run_cli(
        "convert", "export", "--model", trained_on_votes, "--data", SAMPLE_CSV, "--out", out,
        *ANY_DROP,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(out.with_suffix(".json").read_text())["provenance"]["export_check"]
    assert check["val_faces"] == 70 and "ferplus" not in check  # the CSV's PublicTest rows
    assert "the check compares FER2013's labels only" in result.stdout  # and says so


def test_evaluate_scores_the_fer_plus_majority_and_says_how_many_were_left_out(
    trained_on_votes: Path,
):
    """On the real val split: 3,372 of 3,589 faces have a single top vote among the seven."""
    result = run_cli(
        "convert", "evaluate", "--model", trained_on_votes, "--data", FER / "val", "--json",
        "--latency-faces", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()
    assert report["n"] == 3589 and report["labellings"] == ["fer2013", "ferplus"]
    ferplus = report["ferplus"]
    assert (ferplus["n"], ferplus["left_out"]) == (3372, 217)
    correct = sum(ferplus["confusion"][i][i] for i in range(7))
    assert ferplus["accuracy"] == pytest.approx(correct / 3372)
    # The FER2013 score is untouched by the votes: every face, its folder's label.
    assert sum(map(sum, report["confusion"])) == 3589

    text = run_cli(
        "convert", "evaluate", "--model", trained_on_votes, "--data", FER / "val",
        "--labels", "ferplus", "--latency-faces", "5",
    )  # fmt: skip
    assert "3372 faces scored, 217 left out" in text.stdout
    assert f"accuracy  {ferplus['accuracy']:.4f}" in text.stdout


def _one_face_each(folder: Path, emotions) -> dict[str, str]:
    """The first val face of each emotion copied into ``folder/<emotion>/``; by emotion, its
    path as a votes file names it (relative to the dataset folder, ``folder``'s parent)."""
    keys = {}
    for emotion in emotions:
        source = sorted((FER / "val" / emotion).iterdir())[0]
        (folder / emotion).mkdir(parents=True)
        shutil.copyfile(source, folder / emotion / source.name)
        keys[emotion] = f"{folder.name}/{emotion}/{source.name}"
    return keys


def _votes_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A ferplus.csv of (path, ten vote counts) rows."""
    header = "path,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    path.write_text("\n".join([header, *(f"{key},{votes}" for key, votes in rows)]) + "\n")
    return path


HAPPY, SAD, NOT_A_FACE = "0,8,0,0,0,0,0,0,2,0", "0,0,0,9,0,0,0,0,1,0", "0,0,0,0,0,0,0,0,0,10"


def _evaluate(data: Path, votes: Path, *flags: str):
    return run_cli(
        "convert", "evaluate", "--model", "models/emotion.tflite", "--data", data,
        "--votes", votes, "--latency-faces", "1", *flags,
    )  # fmt: skip


def test_a_tie_or_a_top_vote_outside_the_seven_has_no_fer_plus_label(tmp_path, trained_on_votes):
    """Votes are matched by path: one face per rule, in a copied class folder with its own file."""
    rules = {
        "happy": "0,6,2,0,0,0,0,0,2,0",  # happy majority: scored
        "angry": "4,0,0,0,4,0,0,0,2,0",  # neutral/anger tie: left out
        "disgust": "1,0,0,0,2,3,0,4,0,0",  # contempt on top: left out
        "fear": "0,0,3,0,0,0,2,0,5,0",  # unknown on top: left out
    }
    keys = _one_face_each(tmp_path / "faces", rules)
    votes = _votes_file(tmp_path / "votes.csv", [(keys[e], v) for e, v in rules.items()])
    result = run_cli(
        "convert", "evaluate", "--model", trained_on_votes, "--data", tmp_path / "faces",
        "--votes", votes, "--json", "--latency-faces", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ferplus = result.json()["ferplus"]
    assert (ferplus["n"], ferplus["left_out"], ferplus["without_votes"]) == (1, 3, 0)
    assert ferplus["per_class"]["happy"]["support"] == 1


def test_faces_without_votes_are_counted_apart_from_faces_without_a_label(tmp_path):
    """A votes file for 2 of the 7 faces (made for another copy of the data, say): the FER+
    score covers 1 face, and the report says that 5 had no votes at all, instead of counting
    them with the ties and not-a-face votes."""
    keys = _one_face_each(tmp_path / "faces", EMOTIONS)
    votes = _votes_file(tmp_path / "votes.csv", [(keys["happy"], HAPPY), (keys["sad"], NOT_A_FACE)])
    text = _evaluate(tmp_path / "faces", votes)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "1 faces scored, 6 left out (5 without votes, 1 with a top vote of" in text.stdout
    assert _evaluate(tmp_path / "faces", votes, "--json").json()["ferplus"]["without_votes"] == 5


def test_an_image_given_two_rows_of_other_votes_is_refused_by_name(tmp_path):
    """Which row is right cannot be told: the last one won without a word."""
    keys = _one_face_each(tmp_path / "faces", ["happy", "sad"])
    rows = [(keys["happy"], HAPPY), (keys["sad"], SAD), (keys["happy"], SAD)]
    votes = _votes_file(tmp_path / "votes.csv", rows)
    result = _evaluate(tmp_path / "faces", votes)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert f"{votes}:4: {keys['happy']} has other votes on line 2" in result.stderr


def test_votes_that_give_no_face_a_label_are_said_not_dropped_silently(tmp_path):
    """Every face voted not-a-face: there is no FER+ score to give, and the report said
    nothing of the votes file it was asked to use."""
    keys = _one_face_each(tmp_path / "faces", ["happy", "sad"])
    votes = _votes_file(tmp_path / "votes.csv", [(key, NOT_A_FACE) for key in keys.values()])
    result = _evaluate(tmp_path / "faces", votes)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{votes}: no FER+ score: no face of {tmp_path / 'faces'}" in result.stderr
    assert "FER+ majority" not in result.stdout


def test_a_teacher_s_predictions_are_learned(small_fer: Path, tmp_path: Path):
    """Distillation: a student trained on nothing but a teacher that calls every face happy
    calls faces happy, whatever their labels."""
    teacher = tmp_path / "always-happy.keras"
    inputs = keras.Input((48, 48, 1))
    dense = keras.layers.Dense(7, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    bias = np.full(7, -5.0, np.float32)
    bias[EMOTIONS.index("happy")] = 5.0
    dense.set_weights([np.zeros((48 * 48, 7), np.float32), bias])
    model.save(teacher)
    out = tmp_path / "student.keras"
    predicted = _taught_student(small_fer, teacher, "fer2013", out)
    assert json.loads(out.with_suffix(".history.json").read_text())["data"]["teachers"] == [
        str(teacher)
    ]
    assert (predicted == EMOTIONS.index("happy")).mean() > 0.9


def _taught_student(data: Path, teacher: Path, labels: str, out: Path) -> np.ndarray:
    """A student trained on the teacher alone (``--teacher-weight 1``): its classes on val."""
    result = run_cli(
        "convert", "train", "--data", data, "--weights", MNV2_WEIGHTS, "--labels", labels,
        "--teacher", teacher, "--teacher-weight", "1", "--label-smoothing", "0",
        "--class-weight-power", "0", "--learning-rate", "1e-3", "--out", out,
        *TINY[:4], "--head-epochs", "2", "--epochs", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    faces = np.stack(_val_faces(data))[..., np.newaxis].astype(np.float32)
    return keras.saving.load_model(out).predict(faces, verbose=0).argmax(1)


def test_a_teacher_trained_elsewhere_teaches_through_its_predictions(
    small_fer: Path, tmp_path: Path
):
    """`convert pack` carries the faces to a GPU machine (scripts/teacher.py); what comes back
    is predictions by face, one head per labelling, mixed as --labels mixes the student's own
    targets: a teacher whose FER+ head says happy and FER2013 head says angry teaches happy to
    a student learning FER+ votes."""
    from convert.data import load_split
    from convert.pack import unpack, write_predictions

    packed = tmp_path / "faces.npz"
    result = run_cli("convert", "pack", "--data", small_fer, "--out", packed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train 169, val 71 faces" in result.stdout
    train = unpack(packed, "train")
    original = load_split(small_fer, "Training")
    assert (train["images"] == original.images).all() and list(train["keys"]) == list(original.keys)
    assert (train["votes"] == original.votes).all() and (train["labels"] == original.labels).all()

    def always(emotion: str, n: int) -> np.ndarray:
        return np.tile(np.eye(7, dtype=np.float32)[EMOTIONS.index(emotion)], (n, 1))

    teacher = tmp_path / "teacher.npz"
    n = len(train["keys"])
    write_predictions(
        teacher,
        {"train": train["keys"]},
        {"train": {"fer2013": always("angry", n), "ferplus": always("happy", n)}},
    )
    predicted = _taught_student(small_fer, teacher, "ferplus", tmp_path / "student.keras")
    assert (predicted == EMOTIONS.index("happy")).mean() > 0.9

    # Predictions for other faces are refused before any training, naming how many are missing.
    write_predictions(
        teacher,
        {"train": train["keys"][:-5]},
        {"train": {"fer2013": always("angry", n - 5), "ferplus": always("happy", n - 5)}},
    )
    result = run_cli(
        "convert", "train", "--data", small_fer, "--weights", MNV2_WEIGHTS,
        "--teacher", teacher, "--out", tmp_path / "other.keras", *TINY,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--teacher {teacher}: no prediction for 5 of the {n} training faces" in result.stderr


def test_recorded_teacher_predictions_that_are_not_probabilities_are_refused(tmp_path: Path):
    """Logits in a teacher's file became training targets as they were (-2.5..2.7)."""
    from convert.pack import write_predictions

    logits = np.random.default_rng(0).normal(size=(2, 7)).astype(np.float32)
    teacher = tmp_path / "logits.npz"
    head = {"fer2013": logits, "ferplus": np.full((2, 7), 1 / 7, np.float32)}
    write_predictions(teacher, {"train": np.array(["a", "b"])}, {"train": head})
    result = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--labels", "fer2013", "--weights", "none",
        "--teacher", teacher, "--out", tmp_path / "s.keras", *TINY,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert f"--teacher {teacher} (fer2013 head): outputs are not probabilities" in result.stderr


def _fer2013new(path: Path, first_row: str) -> Path:
    """Microsoft's votes layout for the sample CSV, one row per its row, the first with
    ``first_row``'s counts and every other face voted happy."""
    usages = [row.rsplit(",", 1)[1] for row in SAMPLE_CSV.read_text().splitlines()[1:]]
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
    lines = [header + "unknown,NF"]
    for i, usage in enumerate(usages):
        lines.append(f"{usage},fer{i:07d}.png,{first_row if i == 0 else HAPPY}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_face_whose_file_name_is_not_utf8_is_packed_under_its_own_name(
    small_fer: Path, tmp_path: Path
):
    """File names are bytes on Linux (a camera's Latin-1 export): pack ended in a
    UnicodeEncodeError traceback, and the teacher's predictions must come back to that face."""
    from convert.data import load_split
    from convert.pack import unpack

    data = tmp_path / "fer2013"
    shutil.copytree(small_fer, data)
    face = next((data / "train" / "happy").iterdir())
    shutil.copyfile(face, data / "train" / "happy" / os.fsdecode(b"caf\xe9.jpg"))
    packed = tmp_path / "faces.npz"
    result = run_cli("convert", "pack", "--data", data, "--out", packed)
    assert result.returncode == 0, result.stderr[-2000:]
    keys = list(unpack(packed, "train")["keys"])
    assert keys == list(load_split(data, "Training").keys)
    assert os.fsdecode(b"train/happy/caf\xe9.jpg") in keys


def test_packed_vote_counts_come_back_as_they_were_or_are_refused(tmp_path: Path):
    """Packed as int8, a count of 200 came back as -56 and counts of 0.6 and 0.4 as 0 (a face
    without votes), without a word."""
    from convert.pack import unpack

    big = _fer2013new(tmp_path / "big.csv", "200,0,0,0,0,0,0,0,0,0")
    result = run_cli(
        "convert", "pack", "--data", SAMPLE_CSV, "--votes", big, "--out", tmp_path / "big.npz"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert unpack(tmp_path / "big.npz", "train")["votes"][0].tolist() == [200] + [0] * 9
    share = _fer2013new(tmp_path / "share.csv", "0.6,0.4,0,0,0,0,0,0,0,0")
    out = tmp_path / "share.npz"
    result = run_cli("convert", "pack", "--data", SAMPLE_CSV, "--votes", share, "--out", out)
    assert result.returncode == 2 and not out.exists(), result.stderr[-3000:]
    assert (
        f"{share}: the votes of Training:0 (0.6, 0.4, 0, 0, 0, 0, 0, 0, 0, 0) are not whole counts"
        in result.stderr
    )


def _val_faces(root: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(root.glob("val/*/*.jpg"))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("train", "--data", SAMPLE_CSV, "--labels", "mix", "--out", "x.keras"),
            "--labels mix learns from FER+ votes, but none were found",
        ),
        (
            ("train", "--data", FER / "val", "--labels", "fer2013", "--out", "x.keras"),
            "a folder of emotion folders holds one split only",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--ferplus-weight", "1.5", "--out", "x.keras"),
            "--ferplus-weight 1.5: must be in 0..1",
        ),
        (
            (
                "evaluate",
                "--model",
                "models/emotion.tflite",
                "--data",
                SAMPLE_CSV,
                "--labels",
                "ferplus",
            ),
            "--labels ferplus: no FER+ votes found",
        ),
        (
            (
                "evaluate",
                "--model",
                "models/emotion.tflite",
                "--data",
                FER / "val",
                "--votes",
                SAMPLE_CSV,
            ),
            "needs a 'path' column",
        ),
        (
            (
                "train",
                "--data",
                SAMPLE_CSV,
                "--labels",
                "fer2013",
                "--teacher",
                "t.h5",
                "--out",
                "x.keras",
            ),
            "--teacher t.h5: expected an existing .keras or .tflite model, or an .npz",
        ),
    ],
    ids=["no-votes", "no-val-split", "weight-range", "eval-no-votes", "bad-votes", "bad-teacher"],
)
def test_bad_input_about_labels_is_a_clear_error(args, message: str):
    result = run_cli("convert", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluating_a_tflite_model_never_loads_tensorflow(tmp_path: Path):
    """LiteRT and TensorFlow in one process can abort; `evaluate` of a .tflite and `--help`
    import neither TensorFlow nor Keras."""
    for args in (
        ("evaluate", "--model", "models/emotion.tflite", "--data", SAMPLE_CSV,
         "--latency-faces", "5"),
        ("train", "--help"),
    ):  # fmt: skip
        result = run_cli("convert", *args, python_flags=("-X", "importtime"))
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
        assert not {"tensorflow", "keras"} & imported, args


def test_adjusting_toward_the_fer2013_prior_calls_fewer_faces_neutral(
    trained_on_votes: Path, small_fer: Path
):
    """FER+ voters call a third of the faces neutral; moving the trained prior toward FER2013's
    labels (every emotion equally common in this copy) shifts the logits away from neutral, and
    the exported file says how it was made."""
    out = trained_on_votes.with_name("adjusted.keras")
    result = run_cli(
        "convert", "adjust", "--model", trained_on_votes, "--out", out, "--strength", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    adjusted = json.loads(out.with_suffix(".history.json").read_text())["adjusted"]
    shift = np.array([adjusted["logit_shift"][e] for e in EMOTIONS])
    assert shift.argmin() == EMOTIONS.index("neutral") and shift[EMOTIONS.index("neutral")] < 0
    before = keras.saving.load_model(trained_on_votes).get_layer("emotion").get_weights()[1]
    after = keras.saving.load_model(out).get_layer("emotion").get_weights()[1]
    np.testing.assert_allclose(after - before, shift, atol=1e-3)

    faces = np.stack(_val_faces(small_fer))[..., np.newaxis].astype(np.float32)
    neutral = EMOTIONS.index("neutral")
    calls = [
        (keras.saving.load_model(m).predict(faces, verbose=0).argmax(1) == neutral).sum()
        for m in (trained_on_votes, out)
    ]
    assert calls[1] <= calls[0]

    tflite = out.with_suffix(".tflite")
    result = run_cli("convert", "export", "--model", out, "--out", tflite, *ANY_DROP)
    assert result.returncode == 0, result.stderr[-3000:]
    provenance = json.loads(tflite.with_suffix(".json").read_text())["provenance"]
    assert provenance["adjusted"]["toward"] == "fer2013"
    assert provenance["adjusted"]["strength"] == 1.0
