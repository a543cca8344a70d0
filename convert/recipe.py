"""The numbers of a training run and of the quantization-aware fine-tune, with the reasons.

No TensorFlow here: the command line (every ``--help`` included), ``convert evaluate`` on a
``.tflite`` (which runs LiteRT and must not load TensorFlow's own TFLite runtime beside it) and
the export's reading of a training log all need the recipe without paying for TensorFlow.
Measurements behind the numbers are in ``models/MODEL_CARD.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

LABELS = ("fer2013", "ferplus", "mix")
"""What the network learns to predict (``convert.labels`` builds the targets):

- ``fer2013``: each image's FER2013 label (one annotator), one-hot;
- ``ferplus``: the distribution of the ten FER+ votes over the seven emotions;
- ``mix``: ``ferplus_weight`` x the FER+ distribution + the rest x the FER2013 label.
"""

AUGMENTATIONS = ("full", "geometric", "flip")
"""How training faces are jittered (``convert.dataset.augmentation``): ``full`` (flip, small
rotation, zoom, shift, contrast, brightness, erasing), ``geometric`` (flip, rotation, zoom,
shift: other detectors' crops) or ``flip`` (mirror only)."""


# Bounds of the recipe's numbers (flag, lowest, highest): beyond them a run fails deep inside
# TensorFlow (batch 0, a negative seed) or cannot fit in memory (a 1000-px input).
NUMBER_RANGES = (
    ("image_size", 32, 512),
    ("batch_size", 1, 4096),
    ("head_epochs", 0, 10000),
    ("epochs", 0, 10000),
    ("head_learning_rate", 1e-9, 1.0),
    ("learning_rate", 1e-9, 1.0),
    ("weight_decay", 0.0, 1.0),
    ("lr_patience", 1, 1000),
    ("patience", 1, 1000),
    ("class_weight_power", 0.0, 2.0),
    ("seed", 0, 2**32 - 1),
    # MobileNetV2's width multiplier: below 0.1 the narrowest layers have no channels left.
    ("alpha", 0.1, 2.0),
)

# ``convert export``'s numbers (None: no upper bound). A NaN learning rate crashed the
# fine-tune natively, a NaN or negative --max-drop turned the accuracy check off or made it
# refuse every file, and a negative calibration size calibrated on nothing.
EXPORT_RANGES = (
    ("max_drop", 0.0, 100.0),
    ("calibration_size", 1, None),
    ("qat_epochs", 0, None),
    ("qat_learning_rate", 1e-9, 1.0),
    ("prior_rounds", 0, None),
)

# The widths Keras has ImageNet weights of MobileNetV2 for: any other downloads nothing and
# fails with a misleading "could not download" error.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def check_numbers(values: object, ranges: tuple[tuple[str, float, float | None], ...]) -> None:
    """Refuse a number outside its range, naming the flag and the value; NaN is outside every
    range (each comparison with it is false) and infinity outside every bounded one."""
    from convert import ConvertError

    for name, low, high in ranges:
        value = getattr(values, name)
        flag = f"--{name.replace('_', '-')}"
        if high is None and not low <= value < float("inf"):
            raise ConvertError(f"{flag} {value}: must be {low} or more")
        if high is not None and not low <= value <= high:
            raise ConvertError(f"{flag} {value}: must be in {low}..{high}")


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of a training run; the defaults are the recipe of the shipped model's
    long runs, the flags of its short last step are in models/MODEL_CARD.md."""

    backbone: str = "mobilenetv2"
    weights: str = "imagenet"
    alpha: float = 0.35
    # 96 px: the 48-px faces upscaled 2x give MobileNetV2 a 3x3 final feature map; measured on
    # 2 CPU cores it trains ~8x faster than 224 px (README, "Choosing the input size").
    image_size: int = 96
    batch_size: int = 64
    # Phase 1 trains only the new head, so its random gradients do not wreck ImageNet features.
    head_epochs: int = 2
    head_learning_rate: float = 1e-3
    # Phase 2 fine-tunes everything at a lower rate; early stopping usually ends it sooner.
    epochs: int = 30
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    # Halve the rate after 2 flat validation epochs, stop after 6, keep the best val checkpoint.
    lr_patience: int = 2
    patience: int = 6
    # "plateau" halves the rate on stalls and stops early; "cosine" decays it to zero over exactly
    # ``epochs`` with no early stop: for a fixed CPU budget (continuing a run with ``init``) the
    # whole budget is spent and the last, lowest-rate epochs are usually the best.
    schedule: str = "plateau"
    # The targets (LABELS above). The two labellings disagree on a third of the faces, so the
    # weight of the FER+ votes trades FER+ accuracy against FER2013 accuracy; checkpoints are
    # chosen on val by the same weighting of the two accuracies.
    labels: str = "mix"
    ferplus_weight: float = 0.5
    # With --teacher: the share of the teacher's predictions in the targets (distillation).
    teacher_weight: float = 0.5
    # One annotator's label is often wrong: soften the targets a little. Vote distributions are
    # soft already, but a unanimous one is one-hot again, so smoothing applies to every target.
    # The shipped model's short last step ran without it; with it the same step scored the same
    # on val and its int8 file lost far less (wider logits round worse; models/MODEL_CARD.md).
    label_smoothing: float = 0.1
    # Class weights (N / (K * n_c)) ** power, n_c the expected count of class c under the targets:
    # 1 balances fully (disgust is 1.5% of FER2013 train, 0.7% of the FER+ majority) but costs
    # overall accuracy; 0.5 lifts rare classes while keeping the majority ones. 0 in the shipped
    # model's last step: ``convert adjust`` then sets the class prior on val, after training.
    class_weight_power: float = 0.5
    # Jitter of the training faces (AUGMENTATIONS above). ``full`` for long runs from ImageNet;
    # a short final run with ``flip`` fits FER2013's own crops better (the shipped model's last
    # step; models/MODEL_CARD.md, experiments).
    augment: str = "full"
    seed: int = 1337

    def __post_init__(self) -> None:
        from convert import ConvertError

        if self.labels not in LABELS:
            raise ConvertError(f"--labels {self.labels}: expected one of {', '.join(LABELS)}")
        if self.augment not in AUGMENTATIONS:
            raise ConvertError(
                f"--augment {self.augment}: expected one of {', '.join(AUGMENTATIONS)}"
            )
        for name in ("ferplus_weight", "teacher_weight", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConvertError(f"--{name.replace('_', '-')} {value}: must be in 0..1")
        check_numbers(self, NUMBER_RANGES)
        if (
            self.backbone == "mobilenetv2"
            and self.weights == "imagenet"
            and self.alpha not in IMAGENET_ALPHAS
        ):
            raise ConvertError(
                f"--alpha {self.alpha}: ImageNet weights of MobileNetV2 exist only for alpha "
                f"{', '.join(map(str, IMAGENET_ALPHAS))}; pick one, or pass --weights none"
            )
        if self.head_epochs + self.epochs < 1:
            raise ConvertError("--head-epochs and --epochs are both 0: nothing would be trained")
        if self.weights == "none" and self.epochs < 1:
            raise ConvertError(
                "--epochs 0 with --weights none: a network from scratch has no head phase "
                "(--head-epochs does not apply), so nothing would be trained"
            )

    @property
    def uses_votes(self) -> bool:
        return self.labels != "fer2013"

    @property
    def selection_weight(self) -> float:
        """Weight of FER+ accuracy (the rest: FER2013's) in the val score that picks checkpoints."""
        return {"fer2013": 0.0, "ferplus": 1.0}.get(self.labels, self.ferplus_weight)

    @classmethod
    def from_record(cls, record: dict) -> Recipe:
        """The recipe a training log recorded; keys of other versions are ignored, keys missing
        from older logs take the defaults of a FER2013-only run, which is what made them."""
        known = {f.name: f for f in fields(cls)}
        values = {"labels": "fer2013"} | {k: v for k, v in record.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class QatRecipe:
    """The quantization-aware fine-tune's numbers (``convert export --qat-epochs``)."""

    epochs: int = 3
    # 1/20 of the last training phase's peak rate: the weights only need to move a little.
    learning_rate: float = 1e-5
    # tfmot tracks each activation's range with a moving average of decay 0.999 that starts at
    # [-6, 6], which still clips the 0..255 input after an epoch. A first pass at decay 0.9
    # with a zero rate learns the ranges; fine-tuning then tracks them at 0.99.
    calibration_batches: int = 100
    calibration_decay: float = 0.9
    decay: float = 0.99
    # Rounds of class-prior matching of each int8 candidate (0: none): the file's logits are
    # shifted until its mean prediction on training faces is the float model's, each round
    # measured on the file converted with the shift so far. One round left about a third of
    # the gap on #26's file (computed on val); three gave #28 its pass (models/MODEL_CARD.md,
    # "int8"). A round whose largest shift is below the tolerance (1% in any class's odds)
    # ends it; 4,000 faces give each class's share to a few tenths of a point.
    prior_rounds: int = 3
    prior_tolerance: float = 0.01
    prior_faces: int = 4000
