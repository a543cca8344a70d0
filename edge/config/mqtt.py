"""MQTT configuration: broker, topics, delivery guarantees, credentials."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    FilePath,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.config.section import Section

# A host name, IPv4 or IPv6 address (bracketed or not).
HOST = re.compile(r"^[^\s/@:\[\]\x00-\x1f\x7f]+$|^\[[0-9A-Fa-f:.]+\]$|^[0-9A-Fa-f:.]+$")


def host_only(value: str) -> str:
    """A URL where a host goes (``mqtt://user:pass@host``) would put credentials where every
    log line about the connection shows them; the message never quotes the value. ``[::1]``
    is URL notation: sockets want ``::1``."""
    if not HOST.match(value):
        raise ValueError(
            "expected a host name or IP address only (the port has its own key; credentials "
            "do not go here)"
        )
    try:
        value.encode("idna")  # what the resolver does with it: it fails on "a..b" in a thread
    except UnicodeError:
        raise ValueError(
            "not a valid host name (an empty part between dots, or a part over 63 characters)"
        ) from None
    return value.removeprefix("[").removesuffix("]")


def broker_text(value: str) -> str:
    """A text MQTT carries as a UTF-8 string (topics, client id, user name) without the code
    points brokers refuse as malformed (MQTT 5 1.5.4; mosquitto checks them): C0 and C1
    control characters, surrogates and Unicode noncharacters. Accepted here, each failed
    every connection, said as "closed the connection" for ever. The value is not quoted."""
    for character in value:
        point = ord(character)
        if (
            point < 0x20
            or 0x7F <= point <= 0x9F
            or 0xD800 <= point <= 0xDFFF
            or 0xFDD0 <= point <= 0xFDEF
            or point & 0xFFFE == 0xFFFE
        ):
            raise ValueError(
                f"holds U+{point:04X}, a control character or Unicode noncharacter, which MQTT "
                "brokers refuse"
            )
    return value


BrokerText = Annotated[str, AfterValidator(broker_text)]


def no_qos_2(value: int) -> int:
    """QoS 2 is refused, not offered: after a broker restart (kill, power loss) paho resends
    its unfinished QoS 2 exchanges and mosquitto, which lost them, drops the connection
    ("Reused message ID"), again at every reconnect, so no event is delivered again. QoS 1
    with ``event_id`` gives what QoS 2 promised: each event once, deduplicated by its id."""
    if value == 2:
        raise ValueError(
            "2 is not supported (after a broker restart, unfinished QoS 2 exchanges make the "
            "connection fail at every reconnect): use 1 and deduplicate on event_id"
        )
    if value > 2:
        raise ValueError("expected 0 (at most once) or 1 (at least once)")
    return value


Host = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(host_only)]
# Topic levels without wildcards or blanks; not starting with "$" (reserved for the broker's
# own topics, such as $SYS: a client cannot publish there).
# No control characters either: the broker refuses a topic with NUL as malformed UTF-8 and drops
# the connection, at every reconnect.
TOPIC_LEVEL = r"^[^/#+\s$\x00-\x1f\x7f][^/#+\s\x00-\x1f\x7f]*(/[^/#+\s\x00-\x1f\x7f]+)*$"


class TlsConfig(Section):
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # For an encrypted key_file (PEM "ENCRYPTED PRIVATE KEY"); EDGE_MQTT__TLS__KEY_PASSWORD
    # keeps it out of the file.
    key_password: SecretStr | None = None
    insecure: bool = Field(False, description="skip host name verification (testing only)")

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> TlsConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is the private key of cert_file: give cert_file too")
        if self.key_password and not self.cert_file:
            raise ValueError("key_password unlocks the key of cert_file: give cert_file too")
        return self


class HomeAssistantConfig(Section):
    """MQTT discovery: Home Assistant creates the sensors itself from retained config messages."""

    enabled: bool = False
    discovery_prefix: BrokerText = Field("homeassistant", pattern=TOPIC_LEVEL)
    # Home Assistant publishes "online" here when it starts: we announce the sensors again.
    status_topic: BrokerText = Field("homeassistant/status", pattern=TOPIC_LEVEL)
    device_name: str | None = Field(None, description="default: Emotion sensor <device_id>")


class MqttConfig(Section):
    host: Host
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: BrokerText = Field("edge-emotion", pattern=TOPIC_LEVEL, max_length=128)
    qos: Annotated[int, Field(ge=0), AfterValidator(no_qos_2)] = 1
    client_id: (
        Annotated[str, Field(min_length=1, max_length=128), AfterValidator(broker_text)] | None
    ) = Field(None, description="default: edge-emotion-<device_id>")
    username: BrokerText | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    # MQTT 5 tells the client when the broker refuses a message (its ACL): 3.1.1 acknowledges
    # it and drops it, so refused events were counted as delivered. "3.1.1" for old brokers.
    protocol: Literal["5", "3.1.1"] = "5"
    # Events kept in memory while the broker is away; when full, new events are refused (counted).
    queue_size: int = Field(10000, ge=1, le=60000)  # MQTT message ids wrap at 65535
    reconnect_max_s: float = Field(30.0, ge=1, le=600)
    # Events still undelivered when the daemon stops (SIGTERM, a reload, the broker away) are
    # written to the spool and sent at the next start (qos 1). Default file: in
    # $STATE_DIRECTORY (systemd's StateDirectory=), else $XDG_STATE_HOME or ~/.local/state,
    # under edge-emotion/, one per device_id.
    spool: bool = True
    spool_file: Path | None = None
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()

    @field_validator("password")
    @classmethod
    def _password_needs_username(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        """The client sends credentials only with a user name: a password alone was accepted
        and never sent, and the broker's refusal read as a wrong password. A field validator,
        so the error names the key (and its EDGE_ variable); the value is never quoted. A
        username that failed its own check is not in ``info.data``: reported there, not here."""
        no_username = "username" in info.data and not info.data["username"]
        if value and value.get_secret_value() and no_username:
            raise ValueError(
                "given without mqtt.username, so it would never be sent (the broker takes a "
                "password only with a user name): set mqtt.username too"
            )
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # YAML reads `protocol: 5` as a number and `5.0` as a float.
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 5:
            return "5"
        return value
