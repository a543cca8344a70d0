"""One typed configuration tree: a YAML file plus ``EDGE_`` environment overrides.

Validated once at start-up, unknown keys rejected, so a typo stops the daemon with a message
naming the key instead of being silently ignored for months.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    FilePath,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from edge import DEFAULT_MODEL
from edge.config.camera import NAME_PATTERN, CameraConfig, mask_url, mask_urls
from edge.config.mqtt import HomeAssistantConfig, Host, MqttConfig, TlsConfig
from edge.config.section import Section, refuse_boolean

__all__ = [
    "CameraConfig",
    "ConfigError",
    "ConfigFile",
    "EdgeConfig",
    "HomeAssistantConfig",
    "MqttConfig",
    "TlsConfig",
    "load_config",
]


ENV_PREFIX = "EDGE_"
# Keys whose values are never printed, whatever the problem with them.
SECRET_KEY = re.compile(r"(?i)pass|secret|token|credential|key_file|api_?key")


def default_device_id() -> str:
    """The host name made a valid topic level and metric label (``pi.local`` -> ``pi-local``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-")
    return cleaned or "edge"


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem with its key."""


class MetricsConfig(Section):
    enabled: bool = True
    host: Host = "127.0.0.1"  # loopback by default: metrics reveal what the cameras see
    port: int = Field(9108, ge=0, le=65535)


class ViewConfig(Section):
    """The live view (edge.view): off by default; on loopback unless told otherwise, because
    anyone who can reach the port sees the cameras."""

    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(9109, ge=0, le=65535)


class ModelConfig(Section):
    path: FilePath = DEFAULT_MODEL
    threads: int = Field(1, ge=1, le=16)


class DetectorConfig(Section):
    scale_factor: float = Field(1.1, gt=1.0, le=2.0)
    # Higher: fewer false faces. A face the full scan found is then followed with at most 5
    # (edge.faces.ROI_MIN_NEIGHBORS): the scan around it sees it at fewer scales.
    min_neighbors: int = Field(5, ge=0, le=50)
    min_size: int = Field(40, ge=8, le=4096, description="smallest face, in frame pixels")
    # Frames wider than this are downscaled before detection: Haar cost grows with area.
    max_width: int = Field(640, ge=64, le=7680)
    # Full-frame scans this often (frames); in between only around the faces already found.
    # 1 scans every frame fully.
    full_scan_every: int = Field(10, ge=1, le=100)


class TrackingConfig(Section):
    iou_threshold: float = Field(0.3, gt=0, lt=1)
    lost_after_s: float = Field(1.0, gt=0, le=3600, description="a track unseen this long ends")
    smoothing: float = Field(0.3, gt=0, le=1, description="weight of the newest frame's scores")
    hysteresis: float = Field(0.1, ge=0, lt=1, description="lead needed to change emotion")
    heartbeat_s: float = Field(10.0, ge=0, le=86400, description="0 disables heartbeat events")
    # Haar's one-frame false faces would each be a start and an end (edge.track): 2 costs one
    # analysed frame of delay (0.1 s at 10 fps); 1 announces a face at its first sighting.
    confirm_frames: int = Field(
        2, ge=1, le=100, description="analysed frames a face is seen in before its start"
    )


class EdgeConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        allow_inf_nan=False,
    )

    device_id: str = Field(default_factory=default_device_id, pattern=NAME_PATTERN, max_length=64)
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

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_boolean(cls, value, info)

    @field_validator("cameras")
    @classmethod
    def _unique_camera_names(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        # Compared as Home Assistant's entity ids and dashboards see them: "Door" and "door",
        # or "a-b" and "a_b", would be one sensor there.
        seen: dict[str, str] = {}
        for camera in cameras:
            key = camera.name.lower().replace("-", "_")
            if key in seen:
                raise ValueError(
                    f"camera names must be unique (ignoring case, '-' = '_'): "
                    f"{seen[key]!r} and {camera.name!r}"
                )
            seen[key] = camera.name
        return cameras

    @model_validator(mode="after")
    def _distinct_ports(self) -> EdgeConfig:
        metrics, view = self.metrics, self.view
        if metrics.enabled and view.enabled and metrics.port == view.port != 0:
            raise ValueError(f"metrics.port and view.port are both {view.port}: give each its own")
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
        # EDGE_CAMERAS__<n>__* are merged into the file's list by load_config, not here
        # (pydantic-settings would make the list a mapping {"0": ...}).
        return _WithoutCameraVariables(settings_cls, env_settings), init_settings

    def masked(self) -> dict[str, Any]:
        """The effective configuration with passwords and URL credentials hidden."""
        data = self.model_dump(mode="json")
        for camera in data["cameras"]:
            camera["source"] = mask_url(str(camera["source"]))
        mqtt = data.get("mqtt") or {}
        if mqtt.get("password"):
            mqtt["password"] = "***"
        if (mqtt.get("tls") or {}).get("key_password"):
            mqtt["tls"]["key_password"] = "***"
        return data


class _WithoutCameraVariables(PydanticBaseSettingsSource):
    """The environment's settings less ``EDGE_CAMERAS__<n>__*`` (see ``_camera_variables``)."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._env()
        if isinstance(data.get("cameras"), dict):  # only indexed variables make a mapping
            del data["cameras"]
        return data


CAMERA_VARIABLE = re.compile(rf"(?i)^{ENV_PREFIX}CAMERAS__([0-9]+)__(.+)$")


def _camera_variables(raw: dict[str, Any]) -> dict[str, Any]:
    """``EDGE_CAMERAS__0__SOURCE=rtsp://user:pass@…`` sets camera 0's source (a password kept
    out of the file, in the unit's EnvironmentFile or a container's environment); an index
    one past the file's cameras adds one (``…__1__NAME`` and ``…__1__SOURCE``)."""
    found = sorted(
        (int(m.group(1)), m.group(2).lower().split("__"), name)
        for name in os.environ
        if (m := CAMERA_VARIABLE.match(name))
    )
    if not found:
        return raw
    if any(name.upper() == f"{ENV_PREFIX}CAMERAS" for name in os.environ):
        raise ConfigError(
            f"environment: {found[0][2]} and {ENV_PREFIX}CAMERAS both set the cameras: "
            "use one or the other"
        )
    if not isinstance(raw.get("cameras", []), list):
        return raw  # the file's own problem (`cameras: 5`), which validation names
    cameras = [dict(c) if isinstance(c, dict) else c for c in raw.get("cameras") or []]
    for index, keys, name in found:
        if index > len(cameras):
            have = f"cameras 0-{len(cameras) - 1} exist" if len(cameras) > 1 else "camera 0 exists"
            raise ConfigError(
                f"environment: {name}: there is no camera {index} to set ({have}; a new "
                f"one takes the next index, {len(cameras)})"
                if cameras
                else f"environment: {name}: there is no camera {index} (the first camera is 0)"
            )
        if index == len(cameras):
            cameras.append({})
        if not isinstance(cameras[index], dict):
            return raw  # not a mapping in the file: validation names it
        target = cameras[index]
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"environment: {name}: {key} is not a section")
        target[keys[-1]] = os.environ[name]
    return {**raw, "cameras": cameras}


def load_config(
    path: str | os.PathLike | None,
    defaults: dict[str, Any] | None = None,
    content: bytes | None = None,
) -> EdgeConfig:
    """Read the YAML file (or ``defaults``), apply ``EDGE_*`` variables, validate everything.
    ``content``: the file's bytes as read before (``_read_config_file``), named by ``path``."""
    raw: dict[str, Any] = dict(defaults or {})
    if path is not None:
        path = Path(path)
        raw = _parse_yaml(path, _read_config_file(path) if content is None else content)
    where = f"{path}: " if path else ""
    _refuse_unknown_variables()
    raw = _camera_variables(raw)
    try:
        return EdgeConfig(**raw)
    except ValidationError as error:
        raise ConfigError(
            _source_of(error, path) + "invalid configuration: " + describe(error)
        ) from None
    except SettingsError as error:  # an EDGE_* variable that is not valid JSON where JSON goes
        field = str(error).split('"')[1] if '"' in str(error) else "?"
        raise ConfigError(
            f"environment: EDGE_{field.upper()} is not valid JSON (lists and sections given "
            "in one variable must be JSON)"
        ) from None
    except RecursionError:  # EDGE_CAMERAS='[[[[…' (the file's own nesting is refused as read)
        raise ConfigError("environment: a variable's JSON is nested too deeply") from None
    except OSError as error:  # a file the configuration names exists but this user cannot read
        hint = " (is it readable by the daemon's user?)" if error.errno in DENIED else ""
        raise ConfigError(f"{where}cannot read {error.filename}: {error.strerror}{hint}") from None


class ConfigFile:
    """The configuration file, read again at each reload. The process a reload restarts runs
    with the bytes that passed every check of that reload (``checked``), not with the file as
    it is by then: saved again during the restart with a typo, it ended the service (exit 2,
    which systemd does not restart). The file as saved is for the next reload, checked first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checked: bytes | None = None  # of the last reload whose every check passed
        self._candidate: bytes | None = None

    def load(self, content: bytes | None = None) -> EdgeConfig:
        return load_config(self.path, content=content)

    def reread(self) -> EdgeConfig:
        """The file as it is now, valid; the daemon's own checks (model, ports) follow."""
        content = _read_config_file(self.path)
        config = load_config(self.path, content=content)
        self._candidate = content
        return config

    def accept(self) -> None:
        """Every check passed: a restart now runs with what ``reread`` read."""
        self.checked = self._candidate


def _refuse_unknown_variables() -> None:
    """An ``EDGE_*`` variable that names no setting (``EDGE_MQTT_HOST`` for ``EDGE_MQTT__HOST``)
    would be ignored by pydantic-settings, and the daemon would run without what it says."""
    fields = EdgeConfig.model_fields
    known = {name.upper() for name in fields}
    sections = {name.upper() for name, field in fields.items() if _is_section(field.annotation)}
    for variable in sorted(os.environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX):
            continue
        first, *deeper = name[len(ENV_PREFIX) :].split("__")
        if first not in known:
            raise ConfigError(
                f"environment: {variable} is not a setting (EDGE_ + a key, with __ between "
                "levels: EDGE_MQTT__HOST; top-level keys: "
                f"{', '.join(sorted(EdgeConfig.model_fields))})"
            )
        # Below a list or a value pydantic-settings ignores the variable without a word.
        if deeper and first == "CAMERAS" and not CAMERA_VARIABLE.match(variable):
            raise ConfigError(
                f"environment: {variable} is not a camera setting (EDGE_CAMERAS__<index>__<key>, "
                "the index from 0: EDGE_CAMERAS__0__SOURCE)"
            )
        if deeper and first not in sections | {"CAMERAS"}:
            raise ConfigError(
                f"environment: {variable} is not a setting: {first.lower()} is a value, not a "
                f"section (EDGE_{first}=…)"
            )


def _is_section(annotation: Any) -> bool:
    """A settings section (``MqttConfig``, also ``MqttConfig | None``), not a value."""
    found = [annotation, *typing.get_args(annotation)]
    return any(isinstance(t, type) and issubclass(t, BaseModel) for t in found)


def _source_of(error: ValidationError, path: str | os.PathLike | None) -> str:
    """Where the problems are: an operator told to look in the file for a value that came from
    the unit's environment would look in the wrong place."""
    from_variables = [_variable_of(problem) is not None for problem in error.errors()]
    if all(from_variables):
        return "environment: "
    if path is None:
        return ""
    return f"{path} and environment: " if any(from_variables) else f"{path}: "


def _variable_of(problem: dict) -> str | None:
    """A missing key is named by its section's variables (``cameras.1.name`` missing in a camera
    that ``EDGE_CAMERAS__1__SOURCE`` added)."""
    loc = problem["loc"]
    return _variable_for(loc[:-1] if problem["type"] == "missing" and len(loc) > 1 else loc)


def _variable_for(loc: tuple) -> str | None:
    """The ``EDGE_*`` variable a problem's value came from, if one is set: the one named by the
    problem's key or a level above it, else one below it (``EDGE_CAMERAS__0__FPS`` makes
    ``cameras`` a mapping, not a list)."""
    parts = [str(part).upper() for part in loc]
    present = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    for depth in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:depth])
        if name in present and _sets(os.environ[present[name]], parts[depth:]):
            return present[name]
    below = ENV_PREFIX + "__".join(parts) + "__"
    return next((present[n] for n in sorted(present) if parts and n.startswith(below)), None)


def _sets(value: str, keys: list[str]) -> bool:
    """Whether a variable's value holds ``keys``: ``EDGE_MQTT='{"username": …}'`` is merged
    into the file's ``mqtt`` section, and a bad ``mqtt.port`` from the file is not its fault."""
    for key in keys:
        try:
            value = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            return True  # not JSON: the variable's own problem, at its own key
        if not isinstance(value, dict):
            return True
        found = [v for k, v in value.items() if str(k).upper() == key]
        if not found:
            return False
        value = found[0]
    return True


# A configuration is a few KiB; reading stops past this, so ``--config /dev/zero`` (or a
# video named by mistake) is refused at once instead of filling the memory. Pipes still work
# (``--config <(render-config)``).
MAX_CONFIG_BYTES = 1 << 20


def _read_config_file(path: Path) -> bytes:
    """The configuration file's bytes; a problem reading it is a ConfigError naming it.

    Opened without waiting: a named pipe no program writes to blocked the open for ever, with
    the stop signals blocked (``edge run``), so not even SIGTERM ended it. Read, a pipe with
    no writer ends at once, and is said to be one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: is a directory, not a configuration file")
        os.set_blocking(fd, True)
        content = _read_up_to(fd, MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(content) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a configuration file"
        )
    if not content and stat.S_ISFIFO(mode):
        raise ConfigError(f"{path}: a pipe with nothing to read (no program writes to it)")
    return content


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes, to the end: a pipe hands its content over in pieces."""
    parts: list[bytes] = []
    size = 0
    while size < limit and (part := os.read(fd, limit - size)):
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _parse_yaml(path: Path, content: bytes) -> dict[str, Any]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the configuration as UTF-8)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: a binary file, not a YAML configuration")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML{_where(error)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply, not a configuration") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    if odd := [key for key in data if not isinstance(key, str)]:
        kind = {bool: "true/false", int: "a number", float: "a number", type(None): "null"}
        what = kind.get(type(odd[0]), f"a {type(odd[0]).__name__}")  # a date
        raise ConfigError(f"{path}: a top-level key is {what}, not a name: quote it or remove it")
    _refuse_sections_twice(path, data)
    # One spelling from here on: the EDGE_CAMERAS__N__ variables found no "CAMERAS:".
    return {key.lower(): value for key, value in data.items()}


def _refuse_sections_twice(path: Path, data: dict) -> None:
    """Top-level keys are read without regard to case (as the EDGE_* variables are): ``MQTT:``
    and ``mqtt:`` in one file are one section given twice, and one of them would be dropped."""
    seen: dict[str, str] = {}
    for key in data:
        folded = str(key).casefold()
        if folded in seen:
            raise ConfigError(
                f"{path}: {_key_part(seen[folded])} and {_key_part(str(key))} are the same "
                "section (keys ignore case at the top level): give it once"
            )
        seen[folded] = str(key)


# Aliases (``*defaults``) are for sharing a camera's settings, a few times; thousands of them
# make a small file expand into a huge tree whose every problem would be listed.
MAX_ALIASES = 100


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping: YAML keeps the last silently,
    so a second ``mqtt:`` block would drop the first one's password without a word. It also
    refuses explicit tags (``!!int``, ``!!binary``): the configuration needs none, and their
    constructors fail with the value in the message (``password: !!int hunter2``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", event.start_mark
                )
        elif getattr(event, "tag", None) not in (None, "!"):
            raise yaml.composer.ComposerError(
                None, None, "an explicit tag (!!type or !name) is not used here", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {_key_part(str(key))} appears twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key if isinstance(key, str | int | float | bool) else id(key_node))
        return super().construct_mapping(node, deep=deep)

    def compose_scalar_node(self, anchor: str | None) -> yaml.ScalarNode:
        # ``password: &Hunter2`` is an anchor named Hunter2 on an empty value: YAML reads null,
        # and the daemon would connect without the password it was given.
        node = super().compose_scalar_node(anchor)
        if anchor is not None and node.value == "" and node.style is None:
            raise yaml.composer.ComposerError(
                None, None, "an anchor (&) on an empty value", node.start_mark
            )
        return node


# What YAML quotes of the text that may be shown: its token names (<scalar>) and single
# punctuation characters (a tab, ':'); an alias, a tag or a letter may be part of a password
# (``password: *Hunter2`` is an alias to YAML).
_QUOTED = re.compile(r"'([^']*)'")
# Plain values that start with one of these are YAML syntax, not text.
_SYNTAX_HINT = " (quote a value that starts with * & ! | > % @ or `)"


def _where(error: yaml.YAMLError) -> str:
    """Line, column and the parser's problem: never the offending text, which may be a
    password (``password: "hunter2`` with its quote unclosed)."""
    mark = getattr(error, "problem_mark", None)
    problem = _QUOTED.sub(_quoted_if_harmless, getattr(error, "problem", None) or "cannot parse")
    if any(w in problem for w in ("alias", "tag", "anchor", "indicator", "found character")):
        problem += _SYNTAX_HINT
    if mark is None:
        return f": {mask_urls(problem)}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {mask_urls(problem)}"


def _quoted_if_harmless(match: re.Match) -> str:
    text = match.group(1)
    harmless = re.fullmatch(r"<[a-z ]+>", text) or (len(text) <= 2 and not text.isalnum())
    return match.group(0) if harmless else "'…'"


# Quoted after a problem only if it cannot hold a credential: no user:pass@, no key=value,
# no JSON (EDGE_MQTT with broken JSON holds the password).
HIDDEN_IN = ("@", "://", "=", "{", "[", '"')


# A journal line stays readable; the first problems are the ones to fix first anyway.
MAX_PROBLEMS = 20


def describe(error: ValidationError) -> str:
    """Every problem, ``; ``-separated on one line (a start-up failure is one journal line):
    ``cameras.0.fps: Input should be greater than 0 (got -1); mqtt.qos: ...``."""
    parts = []
    problems = error.errors()
    for problem in problems[:MAX_PROBLEMS]:
        key = ".".join(_key_part(str(part)) for part in problem["loc"]) or "(top level)"
        message = (
            "unknown key"
            if problem["type"] == "extra_forbidden"
            else problem["msg"].removeprefix("Value error, ")  # pydantic's, not the user's
        )
        if key.endswith("…") and problem["type"] == "extra_forbidden":
            message += " (a space is needed after ':' in key: value)"
        elif problem["type"] == "string_type" and isinstance(problem.get("input"), bool):
            message += " (YAML reads yes, no, on and off as true/false: quote it)"
        elif problem["type"] == "string_type" and isinstance(problem.get("input"), int | float):
            message += ' (YAML read a number: quote it, "0123")'  # password: 12345
        part = f"{key}: {message}{_shown(problem, key)}{_from_variable(problem)}"
        parts.append(mask_urls(" ".join(part.split())))  # a message's own newlines too
    if len(problems) > MAX_PROBLEMS:
        parts.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    return "; ".join(parts)


def _key_part(part: str) -> str:
    """A key as YAML read it, cut at the first ':', '=' or blank: ``{password:hunter2}`` is one
    key ``password:hunter2`` to YAML, and the rest is the value meant."""
    cut = re.split(r"[:=\s]", part, maxsplit=1)
    return cut[0] + "…" if len(cut) > 1 else part


DENIED = frozenset({errno.EACCES, errno.EPERM})

# Problems of a value given where a section goes.
SECTION_EXPECTED = frozenset({"model_type", "dict_type", "model_attributes_type"})


def _shown(problem: dict, key: str) -> str:
    """`` (got VALUE)``, or nothing where the value might be secret: an unknown key (often a
    misspelt secret: mqtt.pasword), a secret's key, or text that looks like credentials."""
    value = problem.get("input")
    if problem["type"] == "extra_forbidden" or SECRET_KEY.search(key):
        return ""
    if problem["type"] in SECTION_EXPECTED:  # EDGE_MQTT__TLS=hunter2: meant for a key below
        return ""
    if isinstance(value, bool | int | float):
        return f" (got {value!r})"
    if isinstance(value, str) and len(value) <= 120 and not any(h in value for h in HIDDEN_IN):
        return f" (got {value!r})"
    return ""


def _from_variable(problem: dict) -> str:
    variable = _variable_of(problem)
    return f" (from {variable})" if variable else ""
