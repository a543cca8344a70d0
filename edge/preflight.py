"""What start-up would refuse beyond the schema, checked before a start: ``edge check-config``
and a reload (SIGHUP) both run it, so neither accepts a configuration the daemon then fails to
start with (exit 2, which systemd does not restart)."""

from __future__ import annotations

from edge.comms.mqtt import spool_path, tls_context
from edge.comms.spool import Spool
from edge.config import EdgeConfig, MqttConfig
from edge.emotions import EmotionClassifier


def preflight(config: EdgeConfig) -> None:
    """Raise the ``ConfigError`` (or ``ModelError``) start-up would stop with: the model is
    loaded (file, metadata, interpreter), not just found; the TLS files are loaded as the
    client will; an ``mqtt.spool_file`` must be a spool that can be written. The ports are
    the callers' own: check-config only resolves them (the running service may hold them),
    a reload binds the ones it moves to."""
    EmotionClassifier(config.model.path)
    if config.mqtt is not None:
        _check_mqtt(config.mqtt, config.device_id)


def _check_mqtt(mqtt: MqttConfig, device_id: str) -> None:
    """The publisher's own start-up checks (``MqttPublisher``): its TLS context, and the spool
    file it was told to use. A default spool place that cannot be used is no error there
    (the daemon runs without, and says so), so none here either."""
    if mqtt.tls:  # certificates, key and its passphrase, as run uses them
        tls_context(mqtt.tls)
    path = spool_path(mqtt, device_id)
    if mqtt.spool_file is not None and path is not None:
        Spool(path, f"{mqtt.topic_prefix}/{device_id}").check()
