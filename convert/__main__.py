"""``python -m convert train|adjust|average|export|evaluate|pack``: the toolchain's command line."""

from __future__ import annotations

import os
import sys

from edge.cli import (
    Interrupts,
    OneLineParser,
    name_max,
    path_argument,
    prog,
    say_error,
    unwritable,
)

# `python -m convert` or the console script. Ctrl-C: one line, also while TensorFlow imports.
_COMMAND_LINE = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "edge-emotion-convert"
_INTERRUPTS = Interrupts("convert") if _COMMAND_LINE else None

import argparse  # noqa: E402
from dataclasses import fields  # noqa: E402
from pathlib import Path  # noqa: E402

from convert import EMOTIONS, ConvertError, quiet_tensorflow  # noqa: E402

# The longest name made beside an output, over its stem: adjust's ".STEM.adjusting.history.json".
DERIVED_NAME_EXTRA = 24

# What ``evaluate --plot`` can write (matplotlib picks the format from the suffix).
PLOT_FORMATS = (".png", ".pdf", ".svg")

# TensorFlow's C++ start-up chatter hides the progress display; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


TRAINING_MODULES = ("tensorflow", "keras", "tf_keras")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return _INTERRUPTS.run(_run_command, argv) if _INTERRUPTS else _run_command(argv)


def _run_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        return args.command(args)
    except ConvertError as error:
        say_error(f"convert {args.name}", str(error))
        return 2
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        # The daemon's install (and its Docker image) has the toolchain without TensorFlow:
        # evaluate of a .tflite runs there, training and export do not.
        print(
            f"convert {args.name}: error: needs TensorFlow, which is not installed: "
            "pip install 'edge-emotion[convert]'",
            file=sys.stderr,
        )
        return 2
    except OSError as error:
        # An output path that cannot be made (a file where a folder must go, no permission, a
        # name too long, a full disk): the input files were checked before anything ran.
        where = error.filename or "output"
        why = error.strerror or str(error)
        if isinstance(error, FileExistsError | NotADirectoryError):
            why = "a file is where an output folder must go"
        print(f"convert {args.name}: error: {where}: {why}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    from convert.recipe import AUGMENTATIONS, LABELS, QatRecipe, Recipe

    defaults = Recipe()
    top = OneLineParser(
        prog=prog("convert", "edge-emotion-convert"),
        description="The emotion model's toolchain: train it, adjust or average trained models, "
        "export to TFLite, evaluate, and pack a dataset into one file.",
    )
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train the emotion classifier on FER2013")
    train.set_defaults(command=run_train, name="train")
    train.add_argument(
        "--data",
        required=True,
        help="fer2013.csv, or a folder with train/ and val/ emotion folders",
    )
    train.add_argument("--val-data", help="validation data if not inside --data (PublicTest)")
    votes_help = (
        "FER+ votes: ferplus.csv (a path column) or Microsoft's fer2013new.csv (for a "
        "fer2013.csv); default: ferplus/ferplus.csv in the data folder, when present"
    )
    train.add_argument("--votes", help=votes_help)
    train.add_argument(
        "--out", type=path_argument, required=True, help="where to save the .keras model"
    )
    train.add_argument(
        "--labels",
        choices=LABELS,
        default=defaults.labels,
        help="targets: FER2013's label (one annotator), the FER+ vote distribution (ten), or "
        f"--ferplus-weight x votes + the rest x label (default {defaults.labels})",
    )
    train.add_argument(
        "--teacher",
        type=path_argument,
        action="append",
        default=[],
        help="distillation: a .keras or .tflite model whose predictions are mixed into the "
        "targets (--teacher-weight), or an .npz of predictions from scripts/teacher.py; "
        "repeat for an ensemble (averaged)",
    )
    train.add_argument("--backbone", choices=("mobilenetv2", "resnet50"), default=defaults.backbone)
    train.add_argument(
        "--weights",
        default=defaults.weights,
        help="imagenet (Keras download), none (from scratch) or a weights FILE",
    )
    train.add_argument(
        "--init", type=path_argument, help="start from the weights of an earlier run's .keras model"
    )
    train.add_argument("--schedule", choices=("plateau", "cosine"), default=defaults.schedule)
    train.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=defaults.augment,
        help="jitter of the training faces: flip, rotation, zoom, shift, contrast, brightness, "
        "erasing (full); flip, rotation, zoom, shift (geometric); or the mirror image only "
        f"(flip); default {defaults.augment}",
    )
    for spec in fields(Recipe):
        if spec.name in {"backbone", "weights", "schedule", "labels", "augment"}:
            continue
        flag = "--" + spec.name.replace("_", "-")
        train.add_argument(
            flag,
            type=type(getattr(defaults, spec.name)),
            default=getattr(defaults, spec.name),
            help=f"default {getattr(defaults, spec.name)}",
        )

    export = commands.add_parser("export", help="convert a trained .keras model to TFLite")
    export.set_defaults(command=run_export, name="export")
    export.add_argument("--model", type=path_argument, required=True, help="trained .keras model")
    export.add_argument(
        "--quantize", choices=("int8", "float16", "dynamic", "none"), default="int8"
    )
    export.add_argument(
        "--out", type=path_argument, required=True, help="the .tflite file to write"
    )
    export.add_argument(
        "--data",
        help="FER2013 data for calibration and fine-tuning (Training) and the check "
        "(PublicTest); default: the data the model was trained on",
    )
    export.add_argument(
        "--val-data",
        help="the check's faces (PublicTest) if not inside --data; default: --data, else the "
        "validation data the model was trained with",
    )
    export.add_argument("--votes", help=votes_help + "; the check then scores both labellings")
    export.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="refuse if TFLite val accuracy is lower than Keras' by more than "
        "this many points (default 1.0)",
    )
    export.add_argument(
        "--calibration-size",
        type=int,
        default=500,
        help="training images used to calibrate int8 (default 500)",
    )

    export.add_argument(
        "--qat-epochs",
        type=int,
        default=0,
        help="int8 only: epochs of quantization-aware fine-tuning on the training run's targets "
        "(keeping a `convert adjust` shift) before conversion; of the int8 files after each "
        "epoch and for the mean of the epochs' weights, the one that scores best on val (the "
        "training run's selection score) among those within --max-drop on each labelling is "
        "kept (default 0: post-training quantization)",
    )
    export.add_argument(
        "--qat-learning-rate",
        type=float,
        default=QatRecipe().learning_rate,
        help=f"learning rate of the quantization-aware fine-tuning (default "
        f"{QatRecipe().learning_rate})",
    )

    export.add_argument(
        "--prior-rounds",
        type=int,
        default=QatRecipe().prior_rounds,
        help="with --qat-epochs: rounds of matching each int8 candidate's class prior to the "
        "float model's on training faces; the matched file is scored as one more candidate "
        f"(0: none; default {QatRecipe().prior_rounds})",
    )

    export.add_argument(
        "--test-time-flip",
        action="store_true",
        help="the daemon averages each face with its mirror image (two inferences per face); "
        "the check compares with Keras doing the same",
    )

    adjust = commands.add_parser(
        "adjust",
        help="move a trained model's class prior toward another labelling's (logit adjustment)",
    )
    adjust.set_defaults(command=run_adjust, name="adjust")
    adjust.add_argument(
        "--model", type=path_argument, required=True, help="a .keras model from train"
    )
    adjust.add_argument(
        "--out", type=path_argument, required=True, help="the adjusted .keras model"
    )
    adjust.add_argument(
        "--toward",
        choices=("fer2013", "ferplus"),
        default="fer2013",
        help="whose class prior: FER2013's labels (every emotion common) or the FER+ votes' "
        "(a third neutral); default fer2013",
    )
    adjust.add_argument(
        "--data",
        help="FER2013 data for the class priors (Training) and the val accuracy (PublicTest); "
        "default: the data the model was trained on",
    )
    adjust.add_argument(
        "--val-data", help="the val faces (PublicTest) if not inside --data (default as export)"
    )
    adjust.add_argument("--votes", help=votes_help)
    adjust.add_argument(
        "--strength",
        type=float,
        required=True,
        help="0 keeps the model as trained, 1 swaps its targets' prior for the other entirely",
    )

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class results, latency")
    evaluate.set_defaults(command=run_evaluate, name="evaluate")
    evaluate.add_argument(
        "--model", type=path_argument, required=True, help=".tflite or .keras model"
    )
    evaluate.add_argument(
        "--data",
        required=True,
        help="fer2013.csv, a folder of splits, or a folder of emotion folders",
    )
    evaluate.add_argument(
        "--usage",
        choices=("Training", "PublicTest", "PrivateTest"),
        help="split to evaluate (default PublicTest; a folder of emotion folders is taken whole)",
    )
    evaluate.add_argument("--votes", help=votes_help)
    evaluate.add_argument(
        "--labels",
        choices=("fer2013", "ferplus", "both"),
        default="both",
        help="which labelling to print and plot: the data's own labels (FER2013's, or the "
        "folder names), the FER+ majority, or both (default; FER+ where votes are found). "
        "--json always has every labelling at hand",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--plot", type=path_argument, help="write the confusion matrix as a PNG")
    evaluate.add_argument(
        "--latency-faces",
        type=int,
        default=300,
        help="faces timed one at a time for the latency figures",
    )

    pack = commands.add_parser(
        "pack", help="pack train and val faces into one file for a teacher trained elsewhere"
    )
    pack.set_defaults(command=run_pack, name="pack")
    pack.add_argument("--data", required=True, help="a folder with train/ and val/, or a .csv")
    pack.add_argument("--votes", help=votes_help)
    pack.add_argument("--out", type=path_argument, required=True, help="the .npz file to write")

    average = commands.add_parser(
        "average", help="average the weights of models fine-tuned from one model (a model soup)"
    )
    average.set_defaults(command=run_average, name="average")
    average.add_argument(
        "--model",
        type=path_argument,
        action="append",
        required=True,
        help="a .keras model from train, fine-tuned from the same --init; repeat (two or more)",
    )
    average.add_argument("--out", type=path_argument, required=True, help="the .keras soup")
    average.add_argument(
        "--data", help="FER2013 data for the val accuracy (default: the data of the first model)"
    )
    average.add_argument("--val-data", help="the val faces (PublicTest) if not inside --data")
    average.add_argument("--votes", help=votes_help)
    return top


def run_pack(args: argparse.Namespace) -> int:
    from convert.data import is_class_folder, load_split
    from convert.pack import SPLITS, pack

    _output_file(args.out, ".npz", "the packed file")
    if is_class_folder(Path(args.data)):
        raise ConvertError(
            f"--data {args.data}: a folder of emotion folders holds one split only; pack needs "
            "both: a folder with train/ and val/, or a fer2013 .csv"
        )
    splits = {name: load_split(args.data, usage, args.votes) for name, usage in SPLITS.items()}
    size = pack(splits, args.out)
    counts = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    print(f"{args.out}: {counts} faces with FER+ votes, {size / 2**20:.1f} MiB")
    return 0


def run_average(args: argparse.Namespace) -> int:
    from convert.average import average
    from convert.export import Inputs

    _output_file(args.out, ".keras", "the model file", args.model[0])
    found = average(args.model, args.out, Inputs(args.data, args.val_data, args.votes))
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in found.items())
    print(f"val accuracy (no flip): {accuracy}\nsaved to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from convert.recipe import Recipe

    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    defaults = Recipe()
    _without_effect(
        ("--teacher-weight", args.teacher_weight, defaults.teacher_weight, not args.teacher,
         "without --teacher"),
        ("--ferplus-weight", args.ferplus_weight, defaults.ferplus_weight,
         args.labels != "mix", f"with --labels {args.labels} (it weighs --labels mix)"),
    )  # fmt: skip
    _output_file(args.out, ".keras", "the model file")
    quiet_tensorflow()
    from convert.train import train

    log = train(
        args.data, args.val_data, args.out, recipe, args.init, args.votes, tuple(args.teacher)
    )
    best = log.best_epoch
    ferplus = (
        f", FER+ majority {best['val_ferplus_accuracy']:.4f}"
        if "val_ferplus_accuracy" in best
        else ""
    )
    print(
        f"best val: score {log.best_val_score:.4f} (epoch {best.get('epoch')}: FER2013 labels "
        f"{best.get('val_accuracy', 0):.4f}{ferplus}); model saved to {args.out}"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from convert.export import Inputs, export
    from convert.recipe import EXPORT_RANGES, QatRecipe, check_numbers

    defaults = QatRecipe()
    _without_effect(
        ("--qat-learning-rate", args.qat_learning_rate, defaults.learning_rate,
         not args.qat_epochs, "without --qat-epochs"),
        ("--prior-rounds", args.prior_rounds, defaults.prior_rounds, not args.qat_epochs,
         "without --qat-epochs"),
    )  # fmt: skip
    _output_file(args.out, ".tflite", "the exported model's name", args.model)
    if args.out.with_suffix(".json").resolve() == args.model.with_suffix(".history.json").resolve():
        raise ConvertError(
            f"--out {args.out}: its metadata ({args.out.with_suffix('.json')}) would replace the "
            "model's training log; give another name"
        )
    check_numbers(args, EXPORT_RANGES)
    qat = (
        QatRecipe(
            epochs=args.qat_epochs,
            learning_rate=args.qat_learning_rate,
            prior_rounds=args.prior_rounds,
        )
        if args.qat_epochs
        else None
    )
    report = export(
        args.model,
        args.out,
        args.quantize,
        Inputs(args.data, args.val_data, args.votes),
        args.max_drop,
        args.calibration_size,
        qat,
        args.test_time_flip,
    )
    print(report.summary())
    if not report.passed:
        print(f"convert export: error: refused: {report.reason}", file=sys.stderr)
        return 1
    return 0


def run_adjust(args: argparse.Namespace) -> int:
    from convert.adjust import adjust
    from convert.export import Inputs

    _output_file(args.out, ".keras", "the model file", args.model)
    inputs = Inputs(args.data, args.val_data, args.votes)
    result = adjust(args.model, args.out, args.toward, args.strength, inputs)
    shift = ", ".join(f"{e} {s:+.3f}" for e, s in zip(EMOTIONS, result.shift, strict=True))
    accuracy = ", ".join(f"{k} {v:.4f}" for k, v in result.val_accuracy.items())
    print(f"logit shift: {shift}\nval accuracy (no flip): {accuracy}\nsaved to {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from convert.evaluate import evaluate, format_report, plot_confusion
    from convert.recipe import check_numbers

    check_numbers(args, (("latency_faces", 1, None),))
    if args.plot:
        _plot_destination(args.plot)
    report = evaluate(
        args.model, args.data, args.usage, args.latency_faces, args.votes, args.labels
    )
    shown = ["fer2013", "ferplus"] if args.labels == "both" else [args.labels]
    if "ferplus" not in report["labellings"]:  # --labels ferplus without votes: refused above
        shown = ["fer2013"]
    if args.json:
        import json

        print(json.dumps(report), flush=True)
    else:
        print(format_report(report, shown), flush=True)
    if args.plot:  # after the report: a plot that cannot be written loses no evaluation
        try:
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_confusion(report, args.plot, shown)
        except OSError as error:
            raise ConvertError(
                f"--plot {args.plot}: not written ({error.strerror or error}); "
                "the evaluation above is complete"
            ) from None
    return 0


def _without_effect(*flags: tuple[str, object, object, bool, str]) -> None:
    """A flag given that this run would ignore is refused: the user meant it to change
    something (``--teacher-weight 1`` with no teacher trains on the labels alone)."""
    for flag, value, default, ignored, why in flags:
        if ignored and value != default:
            raise ConvertError(f"{flag} {value}: has no effect {why}")


def _output_file(out: Path, suffix: str, what: str, model: Path | None = None) -> None:
    """``--out`` checked before any work: its suffix, not a folder, not the input model (which
    a failed write would destroy)."""
    _local("--out", out)
    if out.suffix != suffix:
        raise ConvertError(f"--out {out}: {what} must end in {suffix}")
    if out.is_dir():
        raise ConvertError(f"--out {out}: is a folder; give a file name ending in {suffix}")
    if model is not None and out.resolve() == model.resolve():
        raise ConvertError(f"--out {out}: is the input model (--model); give another file name")
    _writable("--out", out)


def _local(flag: str, path: Path) -> None:
    """A URL (``http://user:pass@host/m.tflite``) is refused, not made into local folders
    named after the host, with its password printed in "saved to ..." (errors are masked)."""
    from edge.config.camera import URL_AS_PATH

    if URL_AS_PATH.match(str(path)):
        raise ConvertError(f"{flag} {path}: a URL; the toolchain writes local files")


def _writable(flag: str, path: Path) -> None:
    """Said before minutes or hours of work, not when their result is saved: also a name too
    long for the files made beside it (``.NAME.partial.npz``), which failed only then."""
    why = unwritable(path)
    if why is not None:
        raise ConvertError(f"{flag} {path}: cannot be written: {why}")
    longest = name_max(path) - DERIVED_NAME_EXTRA
    if len(os.fsencode(path.stem)) > longest:
        raise ConvertError(
            f"{flag} {path}: the name is too long: the files written beside it need its stem "
            f"to be at most {longest} bytes on this file system"
        )


def _plot_destination(path: Path) -> None:
    """Checked before minutes of evaluation: the format, and a folder the plot can go in."""
    _local("--plot", path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConvertError(f"--plot {path}: must end in {', '.join(PLOT_FORMATS)}")
    try:
        if path.is_dir():
            raise ConvertError(f"--plot {path}: is a folder; give a file name")
    except OSError as error:  # a name too long for the file system
        raise ConvertError(f"--plot {path}: {error.strerror or error}") from None
    _writable("--plot", path)  # its missing folders are made once there is a plot to save


if __name__ == "__main__":
    sys.exit(main())
