"""Bad input to `python -m convert` is refused early, in one line that names the problem, and
never costs a model already made: models of other shapes, damaged images and CSVs, numbers
out of range, interrupted runs, outputs in the way, data paths from another directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    FER,
    MNV2_WEIGHTS,
    ROOT,
    SAMPLE_CSV,
    default_ctrl_c,
    huge_png,
    interrupted_after,
    run_cli,
)

from convert import EMOTIONS, ConvertError
from edge.emotions import ModelMetadata

SHIPPED_KERAS = ROOT / "models" / "emotion.keras"
SHIPPED_TFLITE = ROOT / "models" / "emotion.tflite"
TINY = ("--image-size", "32", "--batch-size", "32", "--head-epochs", "1", "--epochs", "1")
CSV_LABELS = ("--labels", "fer2013")


def one_line_error(result, message: str) -> None:
    """Exit 2 and one line on stderr, naming the problem: not after TensorFlow's start-up
    chatter (oneDNN, CUDA probes), which hid it."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], result.stderr[-2000:]
    assert message in lines[0], result.stderr[-2000:]


def keras_model(
    path: Path, input_shape: tuple[int, ...], outputs: int, activation: str = "softmax"
) -> Path:
    import keras

    inputs = keras.Input(input_shape)
    scores = keras.layers.Dense(outputs, activation=activation)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, scores).save(path)
    return path


def nan_model(path: Path) -> Path:
    """A model of the toolchain's shape whose weights are NaN (a diverged run)."""
    import keras

    inputs = keras.Input((48, 48, 1))
    dense = keras.layers.Dense(7, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([np.full((48 * 48, 7), np.nan, np.float32), np.zeros(7, np.float32)])
    model.save(path)
    return path


# --- models the toolchain cannot feed or read ---------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("foreign")
    garbage = folder / "garbage.keras"
    garbage.write_bytes(b"not a zip archive")
    return {
        "out10": keras_model(folder / "out10.keras", (48, 48, 1), 10),
        "in224": keras_model(folder / "in224.keras", (224, 224, 3), 7),
        "garbage": garbage,
    }


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("out10", "out10.keras: gives 10 scores, not 7"),
        ("in224", "in224.keras: takes input (224, 224, 3), not the 48x48 gray faces"),
        ("garbage", "garbage.keras: not a Keras model file"),
    ],
)
def test_evaluate_refuses_a_keras_model_it_cannot_feed_or_read(foreign, model, message):
    result = run_cli(
        "convert", "evaluate", "--model", foreign[model], "--data", SAMPLE_CSV, "--latency-faces", 1
    )
    one_line_error(result, message)
    assert "accuracy" not in result.stdout  # no false numbers


def test_a_keras_model_the_user_may_not_read_is_said_so_not_called_a_wrong_file(tmp_path):
    """ "not a Keras model file (a .keras file is a zip archive)" sent users to re-train a model
    that was only unreadable to them (root here: its file-permission override is dropped)."""
    model = tmp_path / "m.keras"
    shutil.copyfile(SHIPPED_KERAS, model)
    model.chmod(0)
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] * (os.geteuid() == 0)
    for command in ("evaluate", "export"):
        args = ("--data", SAMPLE_CSV) if command == "evaluate" else ("--out", tmp_path / "o.tflite")
        result = subprocess.run(
            [*as_user, sys.executable, "-m", "convert", command, "--model", str(model), *args],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        one_line_error(result, f"{model}: Permission denied")


def test_export_of_a_model_with_ten_outputs_names_the_model_and_leaves_nothing(foreign, tmp_path):
    out = tmp_path / "out10.tflite"
    result = run_cli(
        "convert", "export", "--model", foreign["out10"], "--quantize", "none", "--out", out,
        "--data", SAMPLE_CSV,
    )  # fmt: skip
    one_line_error(result, f"{foreign['out10']}: gives 10 scores, not 7")
    assert list(tmp_path.iterdir()) == []


def test_a_teacher_of_another_input_size_is_refused_before_training(foreign, tmp_path):
    result = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--weights", "none", "--teacher",
        foreign["in224"], "--out", tmp_path / "s.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(result, f"--teacher {foreign['in224']}: takes input (224, 224, 3)")


def test_a_teacher_that_is_not_a_model_is_named_before_the_data_is_loaded(tmp_path):
    teacher = tmp_path / "t.tflite"
    teacher.write_bytes(b"not a flatbuffer")
    metadata = json.loads(SHIPPED_TFLITE.with_suffix(".json").read_text())
    metadata.pop("sha256", None)
    teacher.with_suffix(".json").write_text(json.dumps(metadata))
    result = run_cli(
        "convert", "train", "--data", tmp_path / "absent.csv", "--weights", "none",
        "--teacher", teacher, "--out", tmp_path / "s.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(result, f"--teacher {teacher}: not a TFLite model")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("shape", [(64, 64, 1), (48, 48, 3)], ids=["gray-64", "rgb-48"])
def test_evaluate_feeds_a_tflite_model_the_layout_its_metadata_names(tmp_path, shape):
    """Layouts the daemon supports (fer's 64x64 gray, 3-channel models): the 48x48 faces are
    resized and converted as the daemon does, not fed raw into a reshape error."""
    import tensorflow as tf

    model = keras_model(tmp_path / "m.keras", shape, 7)
    import keras

    content = tf.lite.TFLiteConverter.from_keras_model(
        keras.saving.load_model(model, compile=False)
    ).convert()
    path = tmp_path / "m.tflite"
    path.write_bytes(content)
    ModelMetadata(
        labels=EMOTIONS, input_height=shape[0], input_width=shape[1], input_channels=shape[2]
    ).write(path)
    result = run_cli(
        "convert", "evaluate", "--model", path, "--data", SAMPLE_CSV, "--json",
        "--latency-faces", 2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.json()["n"] == 70


def test_a_tflite_model_without_softmax_declared_as_probabilities_is_refused(tmp_path):
    """A hand-converted model whose metadata says "probabilities" but ends in raw logits: the
    daemon published negative, unbounded scores in every event, and a teacher taught them."""
    import keras
    import tensorflow as tf

    logits = keras_model(tmp_path / "logits.keras", (48, 48, 1), 7, activation="linear")
    content = tf.lite.TFLiteConverter.from_keras_model(
        keras.saving.load_model(logits, compile=False)
    ).convert()
    path = tmp_path / "logits.tflite"
    path.write_bytes(content)
    ModelMetadata(labels=EMOTIONS, input_height=48, input_width=48, input_channels=1).write(path)
    config = tmp_path / "edge.yaml"
    clip = ROOT.parent / "shared" / "media" / "asl-again.mkv"
    config.write_text(f"cameras: [{{name: a, source: {clip}}}]\nmodel: {{path: {path}}}\n")
    daemon = run_cli("edge", "check-config", "--config", config)
    assert daemon.returncode == 2, daemon.stderr[-2000:]
    assert daemon.stderr.count("\n") == 1 and "outputs are not probabilities" in daemon.stderr

    evaluate = run_cli(
        "convert", "evaluate", "--model", path, "--data", SAMPLE_CSV, "--latency-faces", 1
    )
    one_line_error(evaluate, "outputs are not probabilities")

    ModelMetadata(
        labels=EMOTIONS, input_height=48, input_width=48, input_channels=1, output="logits"
    ).write(path)
    evaluate = run_cli(
        "convert", "evaluate", "--model", path, "--data", SAMPLE_CSV, "--latency-faces", 1
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]  # declared: softmax applied


def test_a_model_that_predicts_nan_gives_no_numbers(tmp_path):
    result = run_cli(
        "convert", "evaluate", "--model", nan_model(tmp_path / "nan.keras"), "--data", SAMPLE_CSV,
        "--latency-faces", 1,
    )  # fmt: skip
    one_line_error(result, "nan.keras: predicts NaN or infinite values")


def test_export_and_adjust_refuse_a_model_that_predicts_nan(tmp_path):
    """Export blamed the TFLite file for the Keras model's NaN (giving the model an accuracy:
    argmax of a NaN row is angry), and adjust saved the broken model."""
    model = nan_model(tmp_path / "nan.keras")
    record = json.loads(SHIPPED_KERAS.with_suffix(".history.json").read_text())
    history = {"recipe": {**record["recipe"], "labels": "fer2013"}}
    model.with_suffix(".history.json").write_text(json.dumps(history))
    data = ("--data", SAMPLE_CSV)
    export = run_cli(
        "convert", "export", "--model", model, "--out", tmp_path / "n.tflite", "--quantize",
        "float16", *data,
    )  # fmt: skip
    one_line_error(export, f"{model}: predicts NaN or infinite values")
    adjust = run_cli(
        "convert", "adjust", "--model", model, "--out", tmp_path / "adj.keras", "--strength",
        "0.5", *data,
    )  # fmt: skip
    one_line_error(adjust, f"{model}: predicts NaN or infinite values")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.history.json", "nan.keras"]


@pytest.fixture(scope="module")
def logits(tmp_path_factory) -> Path:
    """A model of the toolchain's shape without a final softmax: it outputs logits."""
    return keras_model(tmp_path_factory.mktemp("logits") / "logits.keras", (48, 48, 1), 7, "linear")


def test_a_model_whose_outputs_are_not_probabilities_is_refused(logits, tmp_path):
    """Exported as "probabilities", its logits became the daemon's confidences (negative, not
    summing to 1); evaluated, it got an accuracy; as a teacher, raw logits became targets."""
    message = f"{logits}: outputs are not probabilities"
    out = tmp_path / "logits.tflite"
    export = run_cli(
        "convert", "export", "--model", logits, "--out", out, "--quantize", "float16",
        "--data", SAMPLE_CSV,
    )  # fmt: skip
    one_line_error(export, message)
    assert "needs a softmax" in export.stderr and list(tmp_path.iterdir()) == []
    evaluate = run_cli(
        "convert", "evaluate", "--model", logits, "--data", SAMPLE_CSV, "--latency-faces", 1
    )
    one_line_error(evaluate, message)
    train = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--weights", "none", "--teacher", logits,
        "--out", tmp_path / "s.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(train, f"--teacher {message}")


# --- numbers, outputs and usage ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "--qat-epochs", "1", "--qat-learning-rate", "nan"), "--qat-learning-rate nan"),
        (("export", "--max-drop", "nan"), "--max-drop nan: must be in 0.0..100.0"),
        (("export", "--max-drop", "-1"), "--max-drop -1.0: must be in 0.0..100.0"),
        (("export", "--max-drop", "inf"), "--max-drop inf: must be in 0.0..100.0"),
        (("export", "--calibration-size", "-5"), "--calibration-size -5: must be 1 or more"),
        (("train", "--alpha", "-1"), "--alpha -1.0: must be in 0.1..2.0"),
        (("train", "--alpha", "nan", "--weights", "none"), "--alpha nan: must be in 0.1..2.0"),
        (("train", "--alpha", "0.2"), "--alpha 0.2: ImageNet weights of MobileNetV2 exist only"),
        (("train", "--learning-rate", "nan"), "--learning-rate nan: must be in"),
    ],
)
def test_numbers_out_of_range_are_refused_by_name(tmp_path, args, message):
    command, *rest = args
    io = ("--model", SHIPPED_KERAS, "--out", tmp_path / "m.tflite")
    if command == "train":
        io = ("--data", SAMPLE_CSV, "--out", tmp_path / "m.keras")
    one_line_error(run_cli("convert", command, *io, *rest), message)
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "m.keras").mkdir()
    (tmp_path / "m.tflite").mkdir()
    train = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--weights", "none", "--out",
        tmp_path / "m.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(train, f"--out {tmp_path / 'm.keras'}: is a folder")
    export = run_cli("convert", "export", "--model", SHIPPED_KERAS, "--out", tmp_path / "m.tflite")
    one_line_error(export, f"--out {tmp_path / 'm.tflite'}: is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.tflite"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("train", "--data", SAMPLE_CSV, "--teacher-weight", "1", "--out", "x.keras"),
            "--teacher-weight 1.0: has no effect without --teacher",
        ),
        (
            (
                "train",
                "--data",
                SAMPLE_CSV,
                *CSV_LABELS,
                "--ferplus-weight",
                "0.8",
                "--out",
                "x.keras",
            ),
            "--ferplus-weight 0.8: has no effect with --labels fer2013",
        ),
        (
            ("export", "--model", SHIPPED_KERAS, "--prior-rounds", "0", "--out", "x.tflite"),
            "--prior-rounds 0: has no effect without --qat-epochs",
        ),
    ],
    ids=[
        "teacher-weight-without-teacher",
        "ferplus-weight-without-mix",
        "prior-rounds-without-qat",
    ],
)
def test_a_flag_the_run_would_ignore_is_refused(tmp_path, args, message):
    """The user meant it to change something: training for an hour without it is worse."""
    one_line_error(run_cli("convert", *args), message)


@pytest.mark.parametrize("command", ["pack", "adjust", "export", "evaluate"])
def test_a_url_or_a_name_too_long_for_what_is_written_beside_it_is_refused_first(tmp_path, command):
    """A URL as --out made local folders named after the host and printed its password in
    "saved to ..."; a legal name too long for the temporary files beside it failed only after
    the work, naming the temporary file."""
    url, long = "https://user:s3\tcret@host/o", tmp_path / ("x" * 240)
    suffix = {"pack": ".npz", "adjust": ".keras", "export": ".tflite", "evaluate": ".png"}[command]
    args = {
        "pack": ("--data", FER),
        "adjust": ("--model", copy_of_the_shipped_model(tmp_path), "--strength", "0.5"),
        "export": ("--model", SHIPPED_KERAS),
        "evaluate": ("--model", SHIPPED_TFLITE, "--data", SAMPLE_CSV),
    }[command]
    flag = "--plot" if command == "evaluate" else "--out"
    result = run_cli("convert", command, *args, flag, url + suffix, timeout=120)
    one_line_error(result, f"{flag} https:/***:***@host/o{suffix}: a URL")
    assert "cret" not in result.stdout + result.stderr  # a tab once ended the URL's mask
    result = run_cli("convert", command, *args, flag, f"{long}{suffix}", timeout=120)
    one_line_error(result, f"{flag} {long}{suffix}: the name is too long")
    assert not (ROOT / "https:").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"m.keras", "m.history.json"}


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    """Hours of training (or minutes of evaluation) must not end in "cannot save"."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder was meant to be")
    train = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--weights", "none", "--out",
        blocker / "m.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(
        train,
        f"--out {blocker / 'm.keras'}: cannot be written: a file is where an output folder "
        f"must go: {blocker}",
    )
    adjust = run_cli(
        "convert", "adjust", "--model", SHIPPED_KERAS, "--out", blocker / "sub" / "m.keras",
        "--strength", "0.5",
    )  # fmt: skip
    one_line_error(adjust, f"--out {blocker / 'sub' / 'm.keras'}: cannot be written")
    export = run_cli("convert", "export", "--model", SHIPPED_KERAS, "--out", blocker / "m.tflite")
    one_line_error(export, f"--out {blocker / 'm.tflite'}: cannot be written")
    evaluate = run_cli(
        "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", SAMPLE_CSV,
        "--plot", blocker / "confusion.png",
    )  # fmt: skip
    one_line_error(evaluate, f"--plot {blocker / 'confusion.png'}: cannot be written")
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_a_plot_that_cannot_be_written_leaves_the_one_there_intact(tmp_path, monkeypatch):
    """A full disk cut the new confusion plot short over the old one: both were lost."""
    import errno

    import matplotlib.figure

    from convert.evaluate import plot_confusion, score

    plot = tmp_path / "confusion.png"
    plot.write_bytes(b"the last run's plot")

    def disk_full(figure, path, **kwargs) -> None:
        Path(path).write_bytes(b"\x89PNG, cut short")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    with pytest.raises(OSError):
        plot_confusion(score(np.array([0, 3]), np.array([0, 3])), plot, ["fer2013"])
    assert plot.read_bytes() == b"the last run's plot"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


def test_adjust_refuses_to_write_over_its_own_input(tmp_path):
    model = tmp_path / "m.keras"
    shutil.copyfile(SHIPPED_KERAS, model)
    result = run_cli("convert", "adjust", "--model", model, "--out", model, "--strength", "0.5")
    one_line_error(result, f"--out {model}: is the input model")
    assert model.read_bytes() == SHIPPED_KERAS.read_bytes()


def copy_of_the_shipped_model(folder: Path, recipe_change: dict | None = None) -> Path:
    model = folder / "m.keras"
    shutil.copyfile(SHIPPED_KERAS, model)
    history = json.loads(SHIPPED_KERAS.with_suffix(".history.json").read_text())
    history["recipe"] |= recipe_change or {}
    model.with_suffix(".history.json").write_text(json.dumps(history))
    return model


def test_export_never_writes_its_metadata_over_the_training_log(tmp_path):
    model = copy_of_the_shipped_model(tmp_path)
    log = model.with_suffix(".history.json").read_bytes()
    out = tmp_path / "m.history.tflite"  # its metadata would be m.history.json
    result = run_cli("convert", "export", "--model", model, "--out", out)
    one_line_error(result, "would replace the model's training log")
    assert model.with_suffix(".history.json").read_bytes() == log


def test_an_edited_training_log_is_named_not_a_traceback(tmp_path):
    model = copy_of_the_shipped_model(tmp_path, {"alpha": "0.35"})
    result = run_cli("convert", "export", "--model", model, "--out", tmp_path / "m.tflite")
    one_line_error(result, "m.history.json: the recorded recipe is not valid")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"data": "x"}, "'data' is not a mapping"),
        ({"adjusted": "yes"}, "'adjusted' is not a mapping"),
        ({"data": {"teachers": "t.keras"}}, "data.teachers is not a list of paths"),
        ({"adjusted": {"logit_shift": {"angry": "0.1"}}}, "adjusted.logit_shift is not a number"),
        ({"adjusted": {"logit_shift": {"angry": 2**70}}}, "adjusted.logit_shift is not a number"),
    ],
    ids=["data", "adjusted", "teachers", "logit-shift", "logit-shift-huge"],
)
@pytest.mark.parametrize("command", ["export", "adjust", "average"])
def test_a_training_log_edited_into_other_types_is_named_by_every_command(
    tmp_path, command, edit, message
):
    """Valid JSON with a field of another type ended in an AttributeError traceback, for
    export only after the whole conversion."""
    model = copy_of_the_shipped_model(tmp_path)
    log = model.with_suffix(".history.json")
    log.write_text(json.dumps(json.loads(log.read_text()) | edit))
    args = {
        "export": ("--model", model, "--quantize", "none"),
        "adjust": ("--model", model, "--strength", "0.5"),
        "average": ("--model", model, "--model", SHIPPED_KERAS),
    }[command]
    out = tmp_path / ("o.tflite" if command == "export" else "o.keras")
    result = run_cli("convert", command, *args, "--out", out)
    one_line_error(result, f"{log}: not a valid training log: {message}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--out", "x" * 300 + ".keras"), "File name too long"),
        (("--out", "m.keras", "--weights", "none", "--epochs", "0"), "no head phase"),
    ],
    ids=["name-too-long", "from-scratch-without-epochs"],
)
def test_train_refuses_before_loading_data(args, message):
    result = run_cli("convert", "train", "--data", SAMPLE_CSV, *args, *CSV_LABELS)
    one_line_error(result, message)


def test_a_model_trained_on_votes_is_not_checked_without_them(tmp_path):
    """The votes file its training log names has moved: the check would compare FER2013's
    labels only and say 'kept' all the same."""
    model = copy_of_the_shipped_model(tmp_path)
    history = json.loads(model.with_suffix(".history.json").read_text())
    history["data"] |= {"path": str(FER), "votes": str(tmp_path / "moved" / "ferplus.csv")}
    model.with_suffix(".history.json").write_text(json.dumps(history))
    out = tmp_path / "m.tflite"
    result = run_cli("convert", "export", "--model", model, "--out", out)
    one_line_error(result, "ferplus.csv: data named by the training log")
    assert "pass --votes with its path" in result.stderr and not out.exists()


def test_an_adjusted_model_is_not_adjusted_again(tmp_path):
    """Two shifts add up while the record keeps only the last one (and the int8 fine-tune reads
    it): the shipped model is adjusted already; its trained source is what to adjust."""
    out = tmp_path / "again.keras"
    result = run_cli("convert", "adjust", "--model", SHIPPED_KERAS, "--out", out, "--strength", "1")
    one_line_error(result, f"{SHIPPED_KERAS}: already adjusted (toward fer2013, strength 0.5)")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--data", "x.csv"), "the following arguments are required: --out"),
        (("evaluate", "--model", "m.tflite", "--data", "x", "--usage", "Test"), "--usage"),
        ((), "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message):
    result = run_cli("convert", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and result.stderr.rstrip().endswith("(see --help)")


@pytest.mark.parametrize("script", ["edge-emotion", "edge-emotion-convert"])
def test_a_console_script_names_itself_in_its_usage(script):
    """`edge-emotion --help` printed `usage: python -m edge`: a command the user had not typed."""
    path = Path(sys.executable).parent / script  # installed with the project (pyproject scripts)
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script} "), result
    result = subprocess.run([path, "bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(f"{script}: error: "), result


# --- data ---------------------------------------------------------------------------------


def copy_faces(root: Path, per_class: int, rename=lambda name: name) -> None:
    """``per_class`` FER2013 val images per emotion folder under ``root``."""
    for emotion in EMOTIONS:
        (root / emotion).mkdir(parents=True, exist_ok=True)
        for image in sorted((FER / "val" / emotion).iterdir())[:per_class]:
            shutil.copyfile(image, root / emotion / rename(image.name))


def test_files_of_a_class_folder_that_are_not_read_are_counted_not_silent(tmp_path):
    """A .jfif is a JPEG and is read; a .gif or notes are skipped and said; macOS's hidden
    ._ twins are not faces at all."""
    copy_faces(tmp_path, 2)
    first = sorted((tmp_path / "happy").iterdir())[0]
    shutil.copyfile(first, tmp_path / "happy" / "extra.jfif")
    (tmp_path / "happy" / "notes.txt").write_text("labels checked by hand")
    shutil.copyfile(first, tmp_path / "sad" / "face.gif")
    (tmp_path / "sad" / "._face.png").write_bytes(b"\0\5\26\7 AppleDouble")
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{tmp_path} (15 faces)" in result.stdout
    assert f"{tmp_path}: 2 files skipped, not images by their names (.gif, .txt;" in result.stderr


def test_an_image_of_too_many_pixels_in_a_class_folder_is_named(tmp_path):
    """Refused from its header (a PNG of a few hundred KB can claim gigabytes decoded)."""
    copy_faces(tmp_path, 1)
    huge_png(tmp_path / "fear" / "poster.png", 10000, 6000)
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path)
    one_line_error(result, f"{tmp_path / 'fear' / 'poster.png'}: larger than 50 megapixels")


def test_a_truncated_jpeg_is_refused_by_name(tmp_path):
    copy_faces(tmp_path, 2)
    cut = sorted((tmp_path / "happy").iterdir())[0]
    cut.write_bytes(cut.read_bytes()[:400])
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path)
    one_line_error(result, f"{cut}: not a readable image (a truncated JPEG")


@pytest.mark.parametrize("kind", ["pipe", "device"])
def test_a_pipe_or_a_device_named_like_an_image_is_refused_unread(tmp_path, kind):
    """Reading a named pipe waited forever; a link to /dev/zero read until the memory ran out
    (/dev/null, a device read the same way, keeps this test safe on a machine without the fix)."""
    copy_faces(tmp_path, 1)
    odd = tmp_path / "happy" / "odd.jpg"
    if kind == "pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/null")
    result = run_cli(
        "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path, timeout=120
    )
    one_line_error(result, f"{odd}: not a regular file (a device or a pipe), not a face image")


def _png(path: Path, header: bytes, rows: bytes) -> None:
    """A gray PNG from its IHDR fields and its compressed pixel rows."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    parts = [chunk(b"IHDR", header), chunk(b"IDAT", rows), chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(parts))


@pytest.mark.parametrize("damage", ["cut-off", "bad-header"])
def test_a_damaged_png_is_named_in_one_line(tmp_path, damage):
    """libpng and OpenCV printed their own line first ("libpng error: Invalid IHDR data",
    "[ WARN:0] ... PNG input buffer is incomplete"), naming no file."""
    import struct
    import zlib

    copy_faces(tmp_path, 1)
    png = tmp_path / "sad" / "damaged.png"
    rows = zlib.compress(b"\0" * 49 * 48)
    if damage == "cut-off":
        _png(png, struct.pack(">IIBBBBB", 48, 48, 8, 0, 0, 0, 0), rows)
        png.write_bytes(png.read_bytes()[:60])
    else:  # a bit depth of 3
        _png(png, struct.pack(">IIBBBBB", 48, 48, 3, 0, 0, 0, 0), rows)
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path)
    one_line_error(result, f"{png}: not a readable image")


def _sample_rows() -> tuple[str, list[str]]:
    """The sample CSV's header and rows."""
    header, *rows = SAMPLE_CSV.read_text().splitlines()
    return header, rows


def test_a_csv_row_of_another_split_name_is_refused_not_dropped(tmp_path):
    """A row of 'Validation' (or 'publictest') was skipped without a word: the report then
    covered fewer faces than the file holds."""
    header, rows = _sample_rows()
    public = [row for row in rows if row.endswith(",PublicTest")][:5]
    label, pixels, _ = public[0].split(",")
    bad = tmp_path / "usage.csv"
    bad.write_text("\n".join([header, *public, f"{label},{pixels},Validation"]) + "\n")
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", bad)
    one_line_error(
        result, f"{bad}:7: Usage 'Validation' is not one of Training, PublicTest, PrivateTest"
    )


def test_a_csv_without_a_header_is_said_to_start_with_data_in_a_short_line(tmp_path):
    """The first data row was quoted whole as the header: one line of 7,559 characters."""
    _, rows = _sample_rows()
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join(rows) + "\n")
    result = run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", bare)
    one_line_error(result, f"{bare}: its first line looks like data, not a header")
    assert len(result.stderr) < 300, result.stderr


def test_csv_pixels_quote_the_first_bad_value_and_excel_s_bom_is_read(tmp_path):
    rows = SAMPLE_CSV.read_text().splitlines()
    label, pixels, usage = rows[1].split(",")
    for name, value, message in (
        ("huge", "99999999999999999999", "huge.csv:2: pixel 1 is '99999999999999999999'"),
        ("high", "256", "high.csv:2: pixel 1 is '256', expected an integer 0..255"),
    ):
        bad = " ".join([value, *pixels.split()[1:]])
        (tmp_path / f"{name}.csv").write_text("\n".join([rows[0], f"{label},{bad},{usage}"]))
        result = run_cli(
            "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path / f"{name}.csv",
            "--usage", usage,
        )  # fmt: skip
        one_line_error(result, message)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + SAMPLE_CSV.read_bytes())
    flags = ("--json", "--latency-faces", 1)
    reports = [
        run_cli("convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", data, *flags)
        for data in (SAMPLE_CSV, bom)
    ]
    assert reports[1].returncode == 0, reports[1].stderr[-2000:]
    assert reports[1].json()["accuracy"] == reports[0].json()["accuracy"]


def test_a_short_row_of_a_votes_file_names_its_line(tmp_path):
    from convert.labels import VOTE_COLUMNS

    copy_faces(tmp_path / "val", 1)
    votes = tmp_path / "votes.csv"
    votes.write_text(f"{','.join(VOTE_COLUMNS)},path\n" + "10," * 10 + "val/happy/x.jpg\n1,2\n")
    result = run_cli(
        "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path, "--votes", votes
    )
    one_line_error(result, f"{votes}:3: 2 column(s), expected 11")


def test_images_skipped_for_another_split_s_prefix_are_counted(tmp_path):
    copy_faces(tmp_path / "train", 2, lambda name: "Training_" + name.split("_", 1)[1])
    result = run_cli(
        "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path / "train",
        "--usage", "PublicTest",
    )  # fmt: skip
    one_line_error(result, "all 14 were skipped, their names say another split (Training_)")


def test_a_kaggle_root_validates_on_the_public_half_of_test(tmp_path):
    """Kaggle's layout: train/ and test/, test/ holding PublicTest_ and PrivateTest_ files."""
    copy_faces(tmp_path / "train", 1, lambda name: "Training_" + name.split("_", 1)[1])
    copy_faces(tmp_path / "test", 3)  # FER2013's val: PublicTest_ files
    copy_faces(tmp_path / "test", 2, lambda name: "PrivateTest_" + name.split("_", 1)[1] + "x.jpg")
    result = run_cli(
        "convert", "evaluate", "--model", SHIPPED_TFLITE, "--data", tmp_path, "--json",
        "--latency-faces", 1,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.json()["n"] == 21


def test_ferplus_labels_without_votes_are_refused_before_predicting(monkeypatch):
    import convert.evaluate as evaluation

    def never(images):
        raise AssertionError("predicted before checking for votes")

    monkeypatch.setattr(evaluation, "load_predictor", lambda path: (never, never))
    with pytest.raises(ConvertError, match="--labels ferplus: no FER\\+ votes found"):
        evaluation.evaluate(SHIPPED_TFLITE, str(SAMPLE_CSV), None, 1, None, "ferplus")


def test_macro_f1_averages_the_classes_in_the_data_or_predicted():
    """A folder without disgust faces, and a model that never says disgust: disgust is no
    failure of the model, so it is not averaged in as an F1 of 0 (as scikit-learn does)."""
    from convert.evaluate import format_report, score

    truth = np.array([0, 0, 3, 3, 6, 6])
    found = score(truth, np.array([0, 3, 3, 3, 6, 2]))  # fear predicted once, never true
    f1 = {name: row["f1"] for name, row in found["per_class"].items()}
    averaged = ["angry", "fear", "happy", "neutral"]
    assert found["macro_f1"] == pytest.approx(np.mean([f1[name] for name in averaged]))
    assert sorted(found["macro_f1_classes"]) == averaged
    report = {**found, "model": "m", "data": "d", "latency_ms": {"median": 1, "p95": 1}}
    assert "over the 4 classes in the data or predicted" in format_report(report, ["fer2013"])


# --- training runs: nothing made is lost, records work from anywhere -----------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run given its data by a path relative to where it ran."""
    out = tmp_path_factory.mktemp("run") / "tiny.keras"
    relative = Path("..") / SAMPLE_CSV.relative_to(ROOT.parent)
    result = run_cli(
        "convert", "train", "--data", relative, "--weights", MNV2_WEIGHTS, "--out", out,
        *TINY, *CSV_LABELS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "tiny.curves.png",
        "tiny.history.json",
        "tiny.keras",
    ]  # no staging file or backup left behind
    return out


def test_one_folder_of_emotion_folders_is_never_both_splits_of_export_adjust_or_pack(tmp_path):
    """`train` refused it; export's check, adjust's val accuracy and pack's val split took
    the training faces as val faces (pack said "train 21, val 21": the same 21)."""
    copy_faces(tmp_path / "faces", 1)
    faces = tmp_path / "faces"
    unadjusted = copy_of_the_shipped_model(tmp_path)
    log = unadjusted.with_suffix(".history.json")
    log.write_text(json.dumps({k: v for k, v in json.loads(log.read_text()).items()
                               if k != "adjusted"}))  # fmt: skip
    for command, args in [
        ("export", ("--model", SHIPPED_KERAS, "--out", tmp_path / "m.tflite")),
        ("adjust", ("--model", unadjusted, "--out", tmp_path / "a.keras", "--strength", "0.5",
                    "--votes", FER / "ferplus" / "ferplus.csv")),
    ]:  # fmt: skip
        result = run_cli("convert", command, *args, "--data", faces)
        one_line_error(result, f"{faces}: a folder of emotion folders holds one split only")
    pack = run_cli("convert", "pack", "--data", faces, "--out", tmp_path / "p.npz")
    one_line_error(pack, f"--data {faces}: a folder of emotion folders holds one split only")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "m.history.json", "m.keras"]


def test_training_refuses_to_validate_on_its_own_training_folder(tmp_path):
    """The same folder as --data and --val-data (here through '..' and a trailing slash) chose
    checkpoints by memorisation of the training faces."""
    copy_faces(tmp_path / "faces", 1)
    same = f"{tmp_path}/faces/../faces/"
    result = run_cli(
        "convert", "train", "--data", tmp_path / "faces", "--val-data", same, "--weights",
        "none", "--out", tmp_path / "m.keras", *TINY, *CSV_LABELS,
    )  # fmt: skip
    one_line_error(result, f"--val-data {same}: is the training folder (--data {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def run_elsewhere(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )


def test_a_run_records_absolute_paths_so_adjust_works_from_anywhere(trained, tmp_path):
    record = json.loads(trained.with_suffix(".history.json").read_text())["data"]
    assert record["path"] == str(SAMPLE_CSV)
    result = run_elsewhere(
        tmp_path, "adjust", "--model", trained, "--out", "adjusted.keras", "--strength", "0.5"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "adjusted.keras").is_file()
    assert (tmp_path / "adjusted.history.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if "adjusting" in p.name]  # written aside


def test_a_recorded_data_path_not_found_says_where_it_came_from(trained, tmp_path):
    model = tmp_path / "old.keras"
    shutil.copyfile(trained, model)
    history = json.loads(trained.with_suffix(".history.json").read_text())
    history["data"]["path"] = "../shared/fer2013/fer2013-sample.csv"  # an older version's log
    model.with_suffix(".history.json").write_text(json.dumps(history))
    result = run_elsewhere(
        tmp_path, "adjust", "--model", model, "--out", "a.keras", "--strength", "0.5"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"named by the training log {model.with_suffix('.history.json')}" in result.stderr
    assert "pass --data" in result.stderr
    result = run_elsewhere(
        tmp_path, "adjust", "--model", model, "--out", "a.keras", "--strength", "0.5",
        "--data", SAMPLE_CSV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("after", [0.2, 1.0, 2.5, 4.0])
def test_ctrl_c_while_tensorflow_imports_ends_evaluate_in_one_line(after):
    result = interrupted_after(
        after, "convert", "evaluate", "--model", SHIPPED_KERAS, "--data", SAMPLE_CSV
    )
    assert (result.returncode, result.stderr) == (130, "convert evaluate: interrupted\n")


def test_ctrl_c_inside_an_extensions_own_python_code_still_exits_130(tmp_path):
    """A C extension that runs Python code through ``PyRun_String`` (what was under way when
    CI's Ctrl-C during TensorFlow's import ended with status -2): the interrupt is caught and
    said, and the exit code is still 130, which scripts test for."""
    (tmp_path / "nested.py").write_text(
        textwrap.dedent(
            """
            import ctypes
            import sys

            from edge.cli import Interrupts

            run_string = ctypes.pythonapi.PyRun_String
            run_string.restype = ctypes.py_object
            run_string.argtypes = [ctypes.c_char_p, ctypes.c_int] + [ctypes.py_object] * 2
            code = b"import time; print('inside', flush=True); time.sleep(60)"
            sys.exit(Interrupts("tool").run(lambda argv: run_string(code, 257, {}, {}), ["x"]))
            """
        )
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "nested"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=default_ctrl_c,
    )  # fmt: skip
    assert run.stdout.readline() == "inside\n"
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert (run.returncode, stderr) == (130, "tool x: interrupted\n")


def test_ctrl_c_that_lands_in_a_finaliser_still_ends_the_command_with_130(tmp_path):
    """CPython swallows an exception raised in a ``__del__`` ("Exception ignored in ...") and
    the command ran on to exit 0 (seen under load when Ctrl-C came early in ``convert
    evaluate``): a script would take an interrupted run for a finished one. Said in one line,
    not as CPython's report of the swallowed exception."""
    (tmp_path / "finaliser.py").write_text(
        textwrap.dedent(
            """
            import os
            import signal
            import sys
            import time

            from edge.cli import Interrupts

            class Closing:
                def __del__(self):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)  # the handler runs here, inside the finaliser

            def command(argv):
                Closing()
                print("ran on", flush=True)
                return 0

            sys.exit(Interrupts("tool").run(command, ["x"]))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "finaliser"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, preexec_fn=default_ctrl_c,
    )  # fmt: skip
    assert result.stdout == "ran on\n"  # the interrupt was swallowed in the finaliser
    assert (result.returncode, result.stderr) == (130, "tool x: interrupted\n")


@pytest.mark.parametrize("after", [0.03, 0.06, 0.1, 0.15])
def test_ctrl_c_while_the_litert_worker_starts_is_one_line(tmp_path, after):
    """Ctrl-C reaches the whole process group, so also the worker that runs TFLite files for
    export and evaluate: while it was still importing, it printed its own traceback."""
    result = run_litert_worker(tmp_path, after, job_s=30, on_ctrl_c=default_ctrl_c)
    assert (result.returncode, result.stderr) == (130, "tool x: interrupted\n")


def test_a_command_started_ignoring_ctrl_c_keeps_its_litert_worker(tmp_path):
    """`convert export ... &` in a script, or under nohup: the command ignores Ctrl-C, and so
    must its worker (it died, and the export ended in "the LiteRT interpreter crashed")."""
    result = run_litert_worker(
        tmp_path, 0.5, job_s=2, on_ctrl_c=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    assert (result.returncode, result.stderr) == (0, "")


def run_litert_worker(
    tmp_path: Path, after: float, job_s: float, on_ctrl_c: Callable[[], object]
) -> subprocess.CompletedProcess:
    """A command whose LiteRT worker runs for ``job_s``; Ctrl-C to its group ``after`` s."""
    (tmp_path / "worker.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import signal
            import sys
            import threading
            import time

            from edge.cli import Interrupts

            def command(argv):
                from convert.litert import in_litert_process

                threading.Timer({after}, os.killpg, (0, signal.SIGINT)).start()
                return in_litert_process(time.sleep, {job_s})

            if __name__ == "__main__":  # the worker imports this module (spawn)
                sys.exit(Interrupts("tool").run(command, sys.argv[1:]))
            """
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "worker", "x"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=on_ctrl_c,
    )  # fmt: skip


def test_ctrl_c_while_python_shuts_down_after_the_command_is_one_line(tmp_path):
    """The result is said and Python is shutting down (TensorFlow's teardown takes a second,
    here a thread still to be joined): Ctrl-C then ended the process by SIGINT, status -2
    and no word, or with a traceback of the shut-down."""
    (tmp_path / "ending.py").write_text(
        textwrap.dedent(
            """
            import os
            import signal
            import sys
            import threading
            import time

            from edge.cli import Interrupts

            returned = threading.Event()

            def teardown():
                returned.wait()
                time.sleep(0.3)  # the main thread is joining this one by now
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)

            def command(argv):
                threading.Thread(target=teardown).start()
                print("result", flush=True)
                returned.set()
                return 0

            sys.exit(Interrupts("tool").run(command, sys.argv[1:]))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "ending", "x"], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=default_ctrl_c,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (
        130, "result\n", "tool x: interrupted\n"
    )  # fmt: skip


def test_an_interrupted_run_keeps_the_model_at_out_and_resumes(tmp_path):
    """Ctrl-C after the first checkpoint: the model and log already at --out are untouched, the
    user is told where the partial checkpoint is, and the same command resumes and finishes."""
    out = tmp_path / "m.keras"
    shutil.copyfile(SHIPPED_KERAS, out)
    shutil.copyfile(SHIPPED_KERAS.with_suffix(".history.json"), out.with_suffix(".history.json"))
    before = out.read_bytes(), out.with_suffix(".history.json").read_bytes()
    command = [
        sys.executable, "-m", "convert", "train", "--data", SAMPLE_CSV, "--weights",
        MNV2_WEIGHTS, "--out", out, *TINY[:4], "--head-epochs", "0", "--epochs", "12",
        "--schedule", "cosine", *CSV_LABELS,
    ]  # fmt: skip
    partial = tmp_path / "m.partial.keras"

    def interrupted() -> None:
        run = subprocess.Popen(
            list(map(str, command)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=default_ctrl_c,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (partial.is_file() and zipfile.is_zipfile(partial)) and run.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 5 minutes"
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 130, stderr[-2000:]
        assert f"the best checkpoint so far is {partial}" in stderr
        assert (out.read_bytes(), out.with_suffix(".history.json").read_bytes()) == before

    # Another recipe under the same --out must not continue the interrupted run's weights.
    interrupted()
    other = list(command)
    other[other.index("--epochs") + 1] = "1"
    fresh = subprocess.run(list(map(str, other)), cwd=ROOT, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "starting afresh" in fresh.stdout and "resuming" not in fresh.stdout
    assert len(json.loads(out.with_suffix(".history.json").read_text())["epochs"]) == 1
    shutil.copyfile(SHIPPED_KERAS, out)
    shutil.copyfile(SHIPPED_KERAS.with_suffix(".history.json"), out.with_suffix(".history.json"))

    interrupted()
    resumed = subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run" in resumed.stdout
    history = json.loads(out.with_suffix(".history.json").read_text())
    assert history["finished"] and len(history["epochs"]) == 12
    assert not partial.exists() and not (tmp_path / "m.partial.backup").exists()


def test_training_without_tensorflow_installed_says_which_extra_to_install(tmp_path):
    """The daemon's install has the `convert` command but not TensorFlow: a traceback ending in
    ModuleNotFoundError was all a user got."""
    code = (
        "import sys; sys.modules['keras'] = sys.modules['tensorflow'] = None; "
        "from convert.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["train", "--data", str(SAMPLE_CSV), "--out", str(tmp_path / "m.keras")]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "needs TensorFlow" in result.stderr and "edge-emotion[convert]" in result.stderr
    assert "Traceback" not in result.stderr
