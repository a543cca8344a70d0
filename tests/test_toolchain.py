"""train -> export -> evaluate, as a user runs them, on the sample CSV with tiny settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FER, MNV2_WEIGHTS, ROOT, SAMPLE_CSV, run_cli

from convert import EMOTIONS
from edge.emotions import EmotionClassifier

TINY = ("--image-size", "32", "--batch-size", "32", "--head-epochs", "1", "--epochs", "1")
# The sample CSV has no FER+ votes: its runs learn FER2013's labels (test_ferplus: the votes).
CSV_LABELS = ("--labels", "fer2013")
# A model trained for two tiny epochs is near chance: one face of 70 flipping by rounding is 1.4
# points, so these plumbing tests lift the accuracy gate, which test_export_check tests for real.
ANY_DROP = ("--max-drop", "100")
SHIPPED = ROOT / "models" / "emotion.tflite"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A MobileNetV2 trained for two tiny epochs from the local ImageNet weights file."""
    out = tmp_path_factory.mktemp("train") / "tiny.keras"
    result = run_cli(
        "convert", "train", "--data", SAMPLE_CSV, "--weights", MNV2_WEIGHTS, "--out", out, *TINY,
        *CSV_LABELS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_training_leaves_model_history_and_curves(trained: Path):
    history = json.loads(trained.with_suffix(".history.json").read_text())
    assert trained.is_file() and trained.with_suffix(".curves.png").stat().st_size > 0
    assert [e["phase"] for e in history["epochs"]] == ["head", "finetune"]
    assert history["finished"] and history["data"]["labels"] == list(EMOTIONS)
    assert all(e["images_per_second"] > 0 for e in history["epochs"])
    assert not trained.with_suffix(".backup").exists()


@pytest.mark.parametrize("quantize", ["int8", "float16", "dynamic", "none"])
def test_export_writes_a_checked_model_with_its_metadata(trained: Path, quantize: str):
    out = trained.with_name(f"tiny-{quantize}.tflite")
    result = run_cli(
        "convert", "export", "--model", trained, "--quantize", quantize, "--out", out, *ANY_DROP
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 agreement" in result.stdout
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["labels"] == list(EMOTIONS)
    assert (meta["input_height"], meta["input_width"], meta["input_channels"]) == (48, 48, 1)
    assert meta["quantization"] == quantize
    assert meta["input_dtype"] == ("uint8" if quantize == "int8" else "float32")
    assert meta["provenance"]["export_check"]["val_faces"] == 70
    # The daemon's classifier loads it from the metadata alone and scores a batch in one call.
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    probs = EmotionClassifier(out).predict(list(faces))
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)


def test_quantization_aware_export_keeps_the_int8_file_that_scored_best(trained: Path):
    """`--qat-epochs`: fine-tune with int8 simulated, keep the epoch whose *file* is best on val;
    `--test-time-flip`: the daemon averages each face with its mirror, and so does the check."""
    out = trained.with_name("tiny-qat.tflite")
    result = run_cli(
        "convert",
        "export",
        "--model",
        trained,
        "--quantize",
        "int8",
        "--qat-epochs",
        "2",
        "--prior-rounds",
        "1",  # one round is the same code path as three, at a third of the conversions
        "--test-time-flip",
        "--out",
        out,
        *ANY_DROP,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qat: epoch 2/2: int8 val accuracy" in result.stdout
    assert "qat: mean of epochs 1-2: int8 val accuracy" in result.stdout
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["quantization"], meta["input_dtype"], meta["test_time_flip"]) == (
        "int8",
        "uint8",
        True,
    )
    qat, check = meta["provenance"]["quantization_aware"], meta["provenance"]["export_check"]
    scores = {name: score["score"] for name, score in qat["int8_val"].items()}
    steps = ["ranges only", "epoch 1/2", "epoch 2/2", "mean of epochs 1-2"]
    assert list(scores) == [f"{s}{m}" for s in steps for m in ("", ", prior matched")]
    assert scores[qat["kept"]] == max(scores.values())  # every file is within --max-drop 100
    # Compared with the float model as trained (not the fine-tuned copy), mirrored faces included.
    import keras

    from convert.data import load_split

    val = load_split(SAMPLE_CSV, "PublicTest")
    faces = val.images[..., np.newaxis].astype(np.float32)
    model = keras.saving.load_model(trained, compile=False)
    probs = (model.predict(faces, verbose=0) + model.predict(faces[:, :, ::-1], verbose=0)) / 2
    assert check["keras_accuracy"] == round(float((probs.argmax(1) == val.labels).mean()), 4)
    assert qat["float_val"]["fer2013"] == check["keras_accuracy"]  # candidates judged as the check
    one = EmotionClassifier(out).predict([np.full((48, 48), 128, np.uint8)])
    assert one.shape == (1, 7) and abs(one.sum() - 1) < 0.02


def test_int8_export_prefers_a_file_within_the_allowed_drop_on_every_labelling():
    """A candidate that gains on one labelling what it loses beyond --max-drop on the other is
    passed over for one that stays close to the float model on both."""
    from convert.export import Candidates

    found = Candidates(reference={"fer2013": 0.650, "ferplus": 0.760}, max_drop=0.5)
    found.offer("trades", b"a", {"fer2013": 0.665, "ferplus": 0.750, "score": 0.7075})
    found.offer("close", b"b", {"fer2013": 0.648, "ferplus": 0.757, "score": 0.7025})
    found.offer("worse", b"c", {"fer2013": 0.646, "ferplus": 0.756, "score": 0.7010})
    assert (found.kept, found.content) == ("close", b"b")
    alone = Candidates(reference={"fer2013": 0.650}, max_drop=0.5)
    alone.offer("far", b"a", {"fer2013": 0.630, "score": 0.630})
    alone.offer("farther", b"b", {"fer2013": 0.620, "score": 0.620})
    assert alone.kept == "far"  # none within: the best of all, which the check then refuses


def test_evaluate_reports_the_documented_json(trained: Path, tmp_path: Path):
    model = trained.with_name("eval-int8.tflite")
    assert (
        run_cli("convert", "export", "--model", trained, "--out", model, *ANY_DROP).returncode == 0
    )
    plot = tmp_path / "cm.png"
    result = run_cli(
        "convert", "evaluate", "--model", model, "--data", SAMPLE_CSV, "--json", "--plot", plot
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json()
    assert report["n"] == 70
    assert sum(map(sum, report["confusion"])) == 70
    correct = sum(report["confusion"][i][i] for i in range(7))
    assert report["accuracy"] == pytest.approx(correct / 70)
    assert set(report["per_class"]) == set(EMOTIONS)
    assert all(row["support"] == 10 for row in report["per_class"].values())
    f1 = [row["f1"] for row in report["per_class"].values()]
    assert report["macro_f1"] == pytest.approx(sum(f1) / 7)
    assert 0 < report["latency_ms"]["median"] <= report["latency_ms"]["p95"]
    assert plot.stat().st_size > 0


def test_an_evaluation_is_printed_even_when_its_plot_cannot_be_written():
    plot = Path("/proc/confusion.png")  # a folder that exists, where no file can be made
    result = run_cli(
        "convert", "evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--plot", plot
    )
    assert result.returncode == 2
    assert "accuracy" in result.stdout and "confusion" in result.stdout
    assert "the evaluation above is complete" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_evaluate_reads_a_plain_folder_of_emotion_folders(trained: Path):
    result = run_cli(
        "convert",
        "evaluate",
        "--model",
        trained,
        "--data",
        FER / "val",
        "--json",
        "--latency-faces",
        "20",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.json()["n"] == 3589


def test_resnet50_trains_from_scratch_and_exports(tmp_path: Path):
    out = tmp_path / "resnet.keras"
    result = run_cli(
        "convert",
        "train",
        "--data",
        SAMPLE_CSV,
        "--backbone",
        "resnet50",
        "--weights",
        "none",
        "--out",
        out,
        *TINY,
        *CSV_LABELS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tflite = tmp_path / "resnet-int8.tflite"
    result = run_cli("convert", "export", "--model", out, "--out", tflite, *ANY_DROP)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        json.loads(tflite.with_suffix(".json").read_text())["provenance"]["backbone"] == "resnet50"
    )


def test_imagenet_download_failure_is_a_clear_error(tmp_path: Path):
    """Offline (forced: dead proxy, empty Keras cache) is a clear error, not a crash."""
    env = {
        "KERAS_HOME": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    os.environ.update(env)
    try:
        result = run_cli(
            "convert",
            "train",
            "--data",
            SAMPLE_CSV,
            "--weights",
            "imagenet",
            "--out",
            tmp_path / "m.keras",
            *TINY,
            *CSV_LABELS,
        )
    finally:
        for key in env:
            os.environ.pop(key)
    assert result.returncode == 2
    assert "could not download the ImageNet weights for mobilenetv2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--latency-faces", "0"),
            "--latency-faces 0: must be 1 or more",
        ),
        (
            ("evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--plot", "confusion.xyz"),
            "must end in .png, .pdf, .svg",
        ),
        (
            ("evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--plot", SAMPLE_CSV / "c.png"),
            "a file is where an output folder must go",
        ),
        (
            ("evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--plot", "x" * 300 + ".png"),
            "File name too long",
        ),
        (
            ("export", "--model", SHIPPED.with_suffix(".keras"), "--out", "model.keras"),
            "the exported model's name must end in .tflite",
        ),
        (
            (
                "train",
                "--data",
                SAMPLE_CSV,
                "--head-epochs",
                "0",
                "--epochs",
                "0",
                "--out",
                "m.keras",
            ),
            "nothing would be trained",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--batch-size", "0", "--out", "m.keras"),
            "--batch-size 0: must be in 1..4096",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--image-size", "1000", "--out", "m.keras"),
            "--image-size 1000: must be in 32..512",
        ),
        (
            ("train", "--data", "/nonexistent", "--out", "x.keras"),
            "data path not found: /nonexistent",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--backbone", "vgg16", "--out", "x.keras"),
            "invalid choice: 'vgg16'",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--weights", "/no/such.h5", "--out", "x.keras"),
            "--weights /no/such.h5: weights file not found",
        ),
        (("evaluate", "--model", SAMPLE_CSV, "--data", SAMPLE_CSV), "not a TFLite model"),
        (
            (
                "export",
                "--model",
                "x.keras",
                "--quantize",
                "float16",
                "--qat-epochs",
                "1",
                "--out",
                "x.tflite",
            ),
            "--qat-epochs fine-tunes for int8; it does not apply to float16",
        ),
        (("evaluate", "--model", "/no/model.tflite", "--data", SAMPLE_CSV), "model file not found"),
        (
            ("evaluate", "--model", "/dev/zero", "--data", SAMPLE_CSV),
            "/dev/zero: not a regular file (a device or a pipe), not a model file",
        ),
        (
            ("evaluate", "--model", SHIPPED, "--data", "/dev/zero"),
            "/dev/zero: not a regular file (a device or a pipe): expected a fer2013 .csv file",
        ),
        (
            ("evaluate", "--model", SHIPPED, "--data", SAMPLE_CSV, "--votes", "/dev/zero"),
            "--votes /dev/zero: not a regular file (a device or a pipe), not a votes file",
        ),
        (
            ("train", "--data", SAMPLE_CSV, "--augment", "crop", "--out", "x.keras"),
            "invalid choice: 'crop'",
        ),
        (
            ("export", "--model", SAMPLE_CSV.with_suffix(".keras"), "--out", "x.tflite"),
            "model file not found",
        ),
        (
            (
                "export",
                "--model",
                "x.keras",
                "--out",
                "x.tflite",
                "--qat-epochs",
                "1",
                "--prior-rounds",
                "-1",
            ),
            "--prior-rounds -1: must be 0 or more",
        ),
    ],
    ids=[
        *(
            "no-latency-faces",
            "plot-format",
            "plot-folder-blocked-by-a-file",
            "plot-name-too-long",
            "export-out-not-tflite",
            "nothing-to-train",
            "batch-size-0",
            "image-size-1000",
        ),
        "missing-data",
        "unknown-backbone",
        "missing-weights",
        "not-tflite",
        "qat-not-int8",
        "missing-model",
        "model-a-device",
        "data-a-device",
        "votes-a-device",
        "unknown-augmentation",
        "missing-keras",
        "negative-prior-rounds",
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(args, message: str):
    result = run_cli("convert", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_csv_with_a_trailing_blank_line_reads_as_without_and_a_broken_one_names_its_line(
    tmp_path: Path,
):
    text = SAMPLE_CSV.read_text()
    blank = tmp_path / "blank.csv"
    blank.write_text(text + "\n\n")
    reports = [
        json.loads(
            run_cli(
                "convert",
                "evaluate",
                "--model",
                SHIPPED,
                "--data",
                data,
                "--json",
                "--latency-faces",
                "1",
            ).stdout
        )
        for data in (SAMPLE_CSV, blank)
    ]
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    assert reports[0]["n"] == reports[1]["n"] > 0
    short = tmp_path / "short.csv"
    short.write_text("\n".join([*text.splitlines()[:3], "3"]) + "\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(128, 256)) * 20)
    for data, message in (
        (short, "short.csv:4: 1 column(s), expected 3"),
        (binary, "binary.csv: not a UTF-8 text CSV file"),
    ):
        result = run_cli("convert", "evaluate", "--model", SHIPPED, "--data", data)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_broken_training_log_is_named_not_a_traceback(tmp_path: Path):
    model = tmp_path / "m.keras"
    model.write_bytes((ROOT / "models" / "emotion.keras").read_bytes())
    model.with_suffix(".history.json").write_text('{"recipe": {')
    result = run_cli("convert", "export", "--model", model, "--out", tmp_path / "m.tflite")
    assert result.returncode == 2
    assert "m.history.json: not a readable training log" in result.stderr, result.stderr


def test_a_run_continues_from_an_earlier_model_with_a_cosine_schedule(trained: Path, tmp_path):
    """A CPU budget spent in steps: the second run starts where the first ended."""
    out = tmp_path / "continued.keras"
    result = run_cli(
        "convert",
        "train",
        "--data",
        SAMPLE_CSV,
        "--weights",
        MNV2_WEIGHTS,
        "--init",
        trained,
        "--schedule",
        "cosine",
        "--learning-rate",
        "1e-3",
        *TINY[:4],
        "--head-epochs",
        "0",
        "--epochs",
        "2",
        "--out",
        out,
        *CSV_LABELS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads(out.with_suffix(".history.json").read_text())
    rates = [e["learning_rate"] for e in history["epochs"]]
    assert [e["phase"] for e in history["epochs"]] == ["finetune", "finetune"]
    assert history["data"]["init"] == str(trained)
    assert 0.4e-3 < rates[0] < 0.6e-3 and rates[1] < 1e-6  # half-way, then decayed to zero

    import keras

    before = keras.saving.load_model(trained, compile=False).get_layer("head_dense")
    after = keras.saving.load_model(out, compile=False).get_layer("head_dense")
    # A few small Adam steps away from the earlier weights; a fresh head would differ by ~0.1.
    assert np.abs(after.kernel.numpy() - before.kernel.numpy()).max() < 0.02


def test_init_from_a_model_of_another_architecture_is_refused(trained: Path, tmp_path):
    result = run_cli(
        "convert",
        "train",
        "--data",
        SAMPLE_CSV,
        "--backbone",
        "resnet50",
        "--weights",
        "none",
        "--init",
        trained,
        "--out",
        tmp_path / "r.keras",
        *TINY,
        *CSV_LABELS,
    )
    assert result.returncode == 2
    assert f"--init {trained}: does not fit" in result.stderr
    assert "Traceback" not in result.stderr


def test_quantization_aware_export_of_a_foreign_model_is_a_clear_error(tmp_path: Path):
    """QAT rebuilds the network `convert train` makes; any other model is refused, not guessed."""
    import keras

    foreign = tmp_path / "foreign.keras"
    keras.Sequential(
        [keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")]
    ).save(foreign)
    result = run_cli(
        "convert",
        "export",
        "--model",
        foreign,
        "--data",
        SAMPLE_CSV,
        "--qat-epochs",
        "1",
        "--out",
        tmp_path / "foreign.tflite",
    )
    assert result.returncode == 2
    assert "cannot rebuild the model for quantization-aware fine-tuning" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "foreign.tflite").exists()


def test_flip_augmentation_shows_each_training_face_as_itself_or_its_mirror_image():
    """--augment flip: no rotation, zoom, shift or photometric change reaches the network."""
    from convert.dataset import augmentation

    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 1)).astype(np.float32)
    for kind, only_mirrors in (("flip", True), ("geometric", False), ("full", False)):
        seen = np.asarray(augmentation(kind)(faces, training=True))
        same = np.all(seen == faces, axis=(1, 2, 3))
        mirrored = np.all(seen == faces[:, :, ::-1], axis=(1, 2, 3))
        assert (same | mirrored).all() == only_mirrors, kind
        if only_mirrors:
            assert same.any() and mirrored.any()  # the mirror image half of the time


def test_fine_tunes_of_one_model_average_into_a_model_that_exports(trained: Path, tmp_path: Path):
    """A model soup: two fine-tunes of one model (other seeds) average into one network whose
    weights are their mean, which export takes like any trained model. Models of other starts,
    or already adjusted ones, are refused: their mean would be no model."""
    import keras

    tunes = []
    for seed in ("1", "2"):
        tunes.append(tmp_path / f"tune{seed}.keras")
        result = run_cli(
            "convert", "train", "--data", SAMPLE_CSV, "--weights", MNV2_WEIGHTS, "--init", trained,
            "--head-epochs", "0", "--epochs", "1", "--image-size", "32", "--batch-size", "32",
            "--seed", seed, "--out", tunes[-1], *CSV_LABELS,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    soup = tmp_path / "soup.keras"
    result = run_cli("convert", "average", "--model", tunes[0], "--model", tunes[1], "--out", soup)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val accuracy (no flip): fer2013 0." in result.stdout
    a, b, mean = (
        keras.saving.load_model(m).get_layer("emotion").get_weights() for m in [*tunes, soup]
    )
    assert not np.allclose(a[0], b[0])  # the seeds made two models
    assert np.allclose(mean[0], (a[0] + b[0]) / 2, atol=1e-6)
    history = json.loads(soup.with_suffix(".history.json").read_text())
    assert history["averaged"] == [str(t.resolve()) for t in tunes]
    exported = tmp_path / "soup.tflite"
    # A 32-px model of one epoch on the sample sits near chance, with scores so close that
    # float16 turned one of the 70 val faces (1.43 points, over the default 1.0) once in CI.
    result = run_cli(
        "convert", "export", "--model", soup, "--quantize", "float16", "--max-drop", "5",
        "--out", exported,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    result = run_cli("convert", "average", "--model", trained, "--model", tunes[0], "--out", soup)
    assert result.returncode == 2 and "were not fine-tuned from one model" in result.stderr
    assert len(result.stderr.splitlines()) == 1
