"""Edge emotion daemon: camera frames -> faces -> emotions -> tracks -> events on MQTT/metrics.

The runtime never imports TensorFlow: the model runs on the LiteRT interpreter.
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "emotion-int8.tflite"
"""The model shipped with the project, used when the configuration names none."""
