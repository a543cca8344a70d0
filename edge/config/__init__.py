"""One typed configuration tree: a YAML file plus ``EDGE_`` environment overrides.

Validated once at start-up, unknown keys rejected, so a typo stops the daemon with a message
naming the key instead of being silently ignored for months.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from edge import DEFAULT_MODEL
from edge.config.camera import NAME_PATTERN, CameraConfig, mask_url, mask_urls
from edge.config.mqtt import HomeAssistantConfig, MqttConfig, TlsConfig

__all__ = [
    "CameraConfig",
    "ConfigError",
    "EdgeConfig",
    "HomeAssistantConfig",
    "MqttConfig",
    "TlsConfig",
    "load_config",
]


# Keys whose values are never printed, whatever the problem with them.
SECRET_KEY = re.compile(r"(?i)pass|secret|token|credential|key_file|api_?key")


def default_device_id() -> str:
    """The host name made a valid topic level and metric label (``pi.local`` -> ``pi-local``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-")
    return cleaned or "edge"


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem with its key."""


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback by default: metrics reveal what the cameras see
    port: int = Field(9108, ge=0, le=65535)


class ViewConfig(BaseModel):
    """The live view (edge.view): off by default; on loopback unless told otherwise, because
    anyone who can reach the port sees the cameras."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9109, ge=0, le=65535)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: FilePath = DEFAULT_MODEL
    threads: int = Field(1, ge=1, le=16)


class DetectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    scale_factor: float = Field(1.1, gt=1.0, le=2.0)
    min_neighbors: int = Field(5, ge=0, le=50)
    min_size: int = Field(40, ge=8, description="smallest face, in frame pixels")
    # Frames wider than this are downscaled before detection: Haar cost grows with area.
    max_width: int = Field(640, ge=64)
    # Full-frame scans this often (frames); in between only around the faces already found.
    # 1 scans every frame fully.
    full_scan_every: int = Field(10, ge=1, le=100)


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    iou_threshold: float = Field(0.3, gt=0, lt=1)
    lost_after_s: float = Field(1.0, gt=0, description="a track unseen this long ends")
    smoothing: float = Field(0.3, gt=0, le=1, description="weight of the newest frame's scores")
    hysteresis: float = Field(0.1, ge=0, lt=1, description="lead needed to change emotion")
    heartbeat_s: float = Field(10.0, ge=0, description="0 disables heartbeat events")


class EdgeConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        allow_inf_nan=False,
    )

    device_id: str = Field(default_factory=default_device_id, pattern=NAME_PATTERN)
    cameras: list[CameraConfig] = Field(min_length=1)
    mqtt: MqttConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    view: ViewConfig = ViewConfig()
    model: ModelConfig = ModelConfig()
    detector: DetectorConfig = DetectorConfig()
    tracking: TrackingConfig = TrackingConfig()
    # Analysis threads, each with its own interpreter, shared by all cameras; 0: two per core.
    workers: int = Field(0, ge=0, le=64)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @model_validator(mode="after")
    def _unique_camera_names(self) -> EdgeConfig:
        names = [camera.name for camera in self.cameras]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"camera names must be unique: {', '.join(duplicates)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: EDGE_MQTT__HOST overrides the file, as operators expect.
        return env_settings, init_settings

    def masked(self) -> dict[str, Any]:
        """The effective configuration with passwords and URL credentials hidden."""
        data = self.model_dump(mode="json")
        for camera in data["cameras"]:
            camera["source"] = mask_url(str(camera["source"]))
        if data.get("mqtt") and data["mqtt"].get("password"):
            data["mqtt"]["password"] = "***"
        return data


def load_config(
    path: str | os.PathLike | None, defaults: dict[str, Any] | None = None
) -> EdgeConfig:
    """Read the YAML file (or ``defaults``), apply ``EDGE_*`` variables, validate everything."""
    raw: dict[str, Any] = dict(defaults or {})
    if path is not None:
        raw = _read_yaml(Path(path))
    where = f"{path}: " if path else ""
    try:
        return EdgeConfig(**raw)
    except ValidationError as error:
        raise ConfigError(where + "invalid configuration:\n" + describe(error)) from None
    except SettingsError as error:  # an EDGE_* variable that is not valid JSON where JSON goes
        field = str(error).split('"')[1] if '"' in str(error) else "?"
        raise ConfigError(
            f"environment: EDGE_{field.upper()} is not valid JSON (lists and sections given "
            "in one variable must be JSON)"
        ) from None
    except OSError as error:  # a file the configuration names exists but this user cannot read
        raise ConfigError(
            f"{where}cannot read {error.filename}: {error.strerror} "
            "(is it readable by the daemon's user?)"
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the configuration as UTF-8)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: a binary file, not a YAML configuration")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {mask_urls(str(error))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def describe(error: ValidationError) -> str:
    """One line per problem: ``cameras.0.fps: Input should be greater than 0 (got -1)``."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        value = problem.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        if problem["type"] == "extra_forbidden" or SECRET_KEY.search(key):
            # An unknown key is often a misspelt secret (mqtt.pasword): never echo its value.
            message = "unknown key" if problem["type"] == "extra_forbidden" else message
            shown = ""
        lines.append(mask_urls(f"  {key}: {message}{shown}"))
    return "\n".join(lines)
