"""The two labellings of FER2013 faces, and the training targets made from them.

FER2013 gives each face one annotator's label. FER+ (Barsoum et al. 2016, MIT) had ten crowd
workers vote on every face, over FER2013's seven emotions plus ``contempt``, ``unknown`` (the
worker could not tell) and ``NF`` (not a face). The two agree on only ~65% of the faces; both
are scored (``convert evaluate``) and either, or a mix, can be learned (``convert train``).

How the three extra columns are handled, and why:

- **Scoring** (the FER+ label of a face): the single top vote over all ten columns. A face whose
  top vote is contempt, unknown or NF, or is tied, has no FER+ label and is left out of the FER+
  score (the count is reported): a seven-class model cannot be right or wrong about it.
- **Training** (the FER+ target of a face): the votes for the seven emotions, normalised. Votes
  for contempt (an eighth emotion, split between FER2013's angry, disgust, fear, sad and neutral),
  unknown and NF say nothing about which of the seven it is, so they are dropped, not moved to
  another class. A face without any of the seven (4 in train) has no target.
- A face with no FER+ row at all (159 in train and val: FER+ dropped them as not faces) has no
  FER+ label or target. Training on votes leaves these faces out; FER2013-label scoring keeps them.
"""

from __future__ import annotations

import numpy as np

from convert import EMOTIONS

VOTE_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
"""The vote columns of FER+ (``fer2013new.csv``), in its order."""

# FER+ column -> FER2013 label id, for the seven shared emotions (the first seven columns).
_TO_EMOTION = np.array(
    [EMOTIONS.index(e) for e in ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear")]
)
NO_LABEL = -1


def emotion_votes(votes: np.ndarray) -> np.ndarray:
    """(N, 10) FER+ vote counts -> (N, 7) in FER2013's label order, extra columns dropped."""
    out = np.zeros((len(votes), len(EMOTIONS)), np.float32)
    out[:, _TO_EMOTION] = votes[:, :7]
    return out


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """The FER+ label of each face (a FER2013 label id), or ``NO_LABEL`` where the single top vote
    over all ten columns is contempt, unknown or NF, is tied, or there are no votes."""
    votes = np.asarray(votes, np.float32)
    top = votes.argmax(axis=1)
    best = votes.max(axis=1)
    tied = (votes == best[:, None]).sum(axis=1) > 1
    labels = np.full(len(votes), NO_LABEL, np.int64)
    ok = (top < 7) & ~tied & (best > 0)
    labels[ok] = _TO_EMOTION[top[ok]]
    return labels


def ferplus_distribution(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, 7), has_target (N,)): the seven emotions' share of each face's votes."""
    counts = emotion_votes(votes)
    total = counts.sum(axis=1)
    has = total > 0
    targets = np.zeros_like(counts)
    targets[has] = counts[has] / total[has, None]
    return targets, has


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(EMOTIONS), dtype=np.float32)[labels]


def training_targets(
    labels: np.ndarray, votes: np.ndarray | None, kind: str, ferplus_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, 7), usable (N,)) for ``kind`` fer2013 | ferplus | mix (``convert.recipe``).

    ``usable`` is False for faces without a FER+ target when votes are learned (see above).
    """
    fer2013 = one_hot(labels)
    if kind == "fer2013":
        return fer2013, np.ones(len(labels), bool)
    if votes is None:
        raise ValueError("votes are needed for FER+ targets")
    ferplus, has = ferplus_distribution(votes)
    weight = 1.0 if kind == "ferplus" else ferplus_weight
    return weight * ferplus + (1 - weight) * fer2013, has


def expected_counts(targets: np.ndarray) -> np.ndarray:
    """How many faces of each class the targets amount to (soft targets count fractionally)."""
    return targets.sum(axis=0)


def labellings(labels: np.ndarray, votes: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each face's label under every labelling at hand: ``fer2013`` always, ``ferplus`` with
    votes (``NO_LABEL`` where a face has none)."""
    found = {"fer2013": labels}
    if votes is not None:
        majority = ferplus_majority(votes)
        if (majority != NO_LABEL).any():  # no face with a single top vote: nothing to score
            found["ferplus"] = majority
    return found


def accuracies(truth: dict[str, np.ndarray], predicted: np.ndarray) -> dict[str, float]:
    """Accuracy under each labelling, over the faces that labelling has a label for."""
    found = {}
    for name, labels in truth.items():
        scored = labels != NO_LABEL
        found[name] = float((predicted[scored] == labels[scored]).mean()) if scored.any() else 0.0
    return found


def selection_score(accuracy: dict[str, float], ferplus_weight: float) -> float:
    """The val score that picks checkpoints and int8 candidates: the recipe's weighting of the
    two accuracies (FER2013's alone where no votes are at hand)."""
    if "ferplus" not in accuracy:
        return accuracy["fer2013"]
    return ferplus_weight * accuracy["ferplus"] + (1 - ferplus_weight) * accuracy["fer2013"]
