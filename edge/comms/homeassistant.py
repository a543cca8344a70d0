"""Home Assistant MQTT discovery: two sensors per camera, announced as retained config messages.

``<discovery_prefix>/sensor/<device_id>/<camera>_emotion/config`` (the dominant emotion) and
``…/<camera>_faces/config`` (how many faces are tracked) both read the camera's retained
``<prefix>/<device_id>/<camera>/state`` message and share one device block. They are available
while the daemon is online (its status topic) and their camera is up (the state's
``camera_up``), so Home Assistant shows a dark camera as unavailable, not as an empty room.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from edge.config import HomeAssistantConfig

# A state without the field (published by an older version, retained) counts as up.
CAMERA_UP = "{{ 'online' if value_json.camera_up | default(true) else 'offline' }}"
SENSORS = {
    # object suffix: (name, value template, extra fields)
    "emotion": ("emotion", "{{ value_json.dominant_emotion }}", {"icon": "mdi:emoticon-outline"}),
    "faces": (
        "faces",
        "{{ value_json.faces }}",
        {
            "icon": "mdi:account-multiple",
            "state_class": "measurement",
            "unit_of_measurement": "faces",
        },
    ),
}


def state_topic(base: str, camera: str) -> str:
    """``<prefix>/<device_id>/<camera>/state``: the one place the state topic is spelled."""
    return f"{base}/{camera}/state"


def sensor_topics(config: HomeAssistantConfig, device_id: str) -> str:
    """The subscription that finds every sensor config this device has announced."""
    return f"{config.discovery_prefix}/sensor/{device_id}/+/config"


def camera_of(topic: str, base: str, config: HomeAssistantConfig, device_id: str) -> str | None:
    """The camera a state topic or one of this device's sensor configs belongs to, else None."""
    if topic.startswith(base + "/") and topic.endswith("/state"):
        camera = topic[len(base) + 1 : -len("/state")]
        return camera if "/" not in camera else None
    prefix = f"{config.discovery_prefix}/sensor/{device_id}/"
    if not (topic.startswith(prefix) and topic.endswith("/config")):
        return None
    object_id = topic[len(prefix) : -len("/config")]
    for suffix in SENSORS:
        if object_id.endswith(f"_{suffix}"):
            return object_id[: -len(suffix) - 1]
    return None


def discovery_messages(
    config: HomeAssistantConfig, base: str, device_id: str, cameras: Sequence[str]
) -> list[tuple[str, bytes]]:
    """(topic, payload) of every sensor config; payloads are published retained."""
    device = {
        "identifiers": [f"edge-emotion_{device_id}"],
        "name": config.device_name or f"Emotion sensor {device_id}",
        "manufacturer": "edge-emotion",
        "model": "face emotion recognition daemon",
        "sw_version": _version(),
    }
    messages = []
    for camera in cameras:
        for suffix, (name, template, extra) in SENSORS.items():
            object_id = f"{camera}_{suffix}"
            payload = {
                "name": f"{camera} {name}",
                "unique_id": f"edge-emotion_{device_id}_{object_id}",
                # HA 2025.10 replaced object_id by default_entity_id (object_id ends in 2026.4).
                "default_entity_id": f"sensor.{slug(device_id)}_{slug(object_id)}",
                "state_topic": state_topic(base, camera),
                "value_template": template,
                # Unavailable when the daemon is offline, or when its camera is down (an
                # empty room and a dark camera both have 0 faces).
                "availability": [
                    {"topic": f"{base}/status"},
                    {"topic": state_topic(base, camera), "value_template": CAMERA_UP},
                ],
                "availability_mode": "all",
                "device": device,
                **extra,
            }
            topic = f"{config.discovery_prefix}/sensor/{device_id}/{object_id}/config"
            messages.append((topic, json.dumps(payload, separators=(",", ":")).encode()))
    return messages


def slug(name: str) -> str:
    """Entity ids are lower case with underscores; device and camera names may not be."""
    return name.lower().replace("-", "_")


def _version() -> str:
    try:
        return version("edge-emotion")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"
