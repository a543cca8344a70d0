"""Edge emotion daemon: camera frames -> faces -> emotions -> tracks -> events on MQTT/metrics.

The runtime never imports TensorFlow: the model runs on the LiteRT interpreter.
"""

import sys
from pathlib import Path

MODEL_FILE = "emotion-int8.tflite"


def _default_model() -> Path:
    """A checkout's ``models/`` (development, editable installs) comes first; a wheel installs
    its copy under ``<prefix>/share/edge-emotion/models/`` (pyproject's data-files)."""
    checkout = Path(__file__).resolve().parent.parent / "models" / MODEL_FILE
    installed = Path(sys.prefix) / "share" / "edge-emotion" / "models" / MODEL_FILE
    return installed if installed.is_file() and not checkout.is_file() else checkout


DEFAULT_MODEL = _default_model()
"""The model shipped with the project, used when the configuration names none."""
