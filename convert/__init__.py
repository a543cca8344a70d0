"""Training and conversion toolchain for the edge emotion model.

Steps, each a module: ``data`` (load FER2013 and its FER+ votes), ``labels`` (both labellings,
training targets), ``model`` (build), ``train`` (fit; ``dataset``: augment and batch; ``distill``:
teachers), ``adjust`` (logit adjustment), ``export`` (TFLite + metadata + self-check; ``qat``),
``evaluate`` (honest report).
"""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Label ids 0..6 in the order of the original ``fer2013.csv``, which is not alphabetical."""

FACE_SIZE = 48
"""FER2013 faces are 48x48 grayscale; every model this toolchain builds takes exactly that."""


class ConvertError(Exception):
    """A problem with the user's input (path, file, option); shown without a traceback."""
