"""MQTT publisher (paho-mqtt 2.x): QoS 1, persistent session, queued while the broker is away.

Unlike daemons that drop events while disconnected, events published during an outage wait in
paho's bounded in-memory queue and go out, in order, after the reconnect; events refused because
the queue is full are counted. ``<prefix>/<device_id>/status`` is ``online`` (retained) while
connected and ``offline`` on clean shutdown or, through the last will, when the daemon dies.
Each camera's current state (faces, dominant emotion) is the retained ``<camera>/state``; with
Home Assistant discovery on, the sensors reading it are announced at every connect and whenever
Home Assistant says it is back ``online``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.comms import PublisherStats
from edge.comms.homeassistant import camera_of, discovery_messages, sensor_topics, state_topic
from edge.comms.spool import Spool
from edge.config import ConfigError, MqttConfig, TlsConfig
from edge.events import CameraState, Event

log = logging.getLogger(__name__)

EARLY_ACK_TTL_S = 10.0
# Finding another daemon's instance at two connects within this window means a twin.
TWIN_WINDOW_S = 120.0
# Home Assistant takes longer than this to restart; a client sending "online" faster is
# answered at this rate (the announcements are idempotent, retained configs).
ANNOUNCE_MIN_INTERVAL_S = 5.0
# Room in paho's outgoing queue above mqtt.queue_size for messages other than events (status,
# instance, discovery configs: a few per camera per connect), which must never be refused
# because events filled the queue during an outage.
CONTROL_RESERVE = 1000
MESSAGE_IDS = 65535  # MQTT's packet identifiers, 1..65535
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5's session expiry interval meaning "never"


class MqttPublisher:
    def __init__(self, config: MqttConfig, device_id: str, cameras: Sequence[str] = ()) -> None:
        self.config = config
        self.device_id, self.cameras = device_id, tuple(cameras)
        self.stats = PublisherStats()
        self.base = f"{config.topic_prefix}/{device_id}"
        self.status_topic = f"{self.base}/status"
        # Who this process is, for telling a twin with the same device id from a restart.
        self.instance_topic = f"{self.base}/instance"
        # The boot id tells this machine's earlier processes (this one before a reload, or
        # one killed before a broker crash restored its retained instance) from a twin.
        self.boot = _boot_id()
        self.instance = (
            f"{socket.gethostname()} pid {os.getpid()} boot {self.boot} {uuid.uuid4().hex[:8]}"
        )
        self.client_id = config.client_id or f"edge-emotion-{device_id}"
        self._foreign: list[float] = []
        self._twin_warned = False
        # Events handed to paho and not yet acknowledged, in order: message id -> topic, payload
        self._pending: dict[int, tuple[str, bytes]] = {}
        self.spool = _usable_spool(config, device_id, self.base)
        self._spooled: set[int] = set()  # message ids of the spool's events not yet delivered
        # The spool's events not yet handed to paho: a spool may hold more than the queue
        # (queue_size lowered since, events of several runs), and none of them may be lost.
        self._backlog: deque[tuple[str, bytes]] = deque()
        # Acknowledgements that came before publish() returned: id -> (when, refusal or None)
        self._acked_early: dict[int, tuple[float, str | None]] = {}
        self._controls: dict[int, str] = {}  # status/instance/discovery ids in flight -> topic
        self._refusal_warned: set[str] = set()
        self._lock = threading.Lock()
        self._closing = False  # our own disconnect at shutdown is not an outage to warn about
        self._connect_warned = False  # one warning per outage for failed connection attempts
        # A session just lost, said so: paho reports a keepalive timeout twice, and the
        # second must not read as a port that never accepted a session.
        self._lost = False
        self._states: dict[str, CameraState] = {}  # latest per camera, republished on connect
        self._state_in_flight: dict[int, str] = {}  # message id -> camera
        # States in flight at a drop, which paho sends again after the connect: their
        # acknowledgements are ours, and the camera's newer state waits for it (message id ->
        # camera), or the old one, sent after it, would be the one the broker retains.
        self._states_resent: dict[int, str] = {}
        self._state_waiting: set[str] = set()  # cameras with a newer state than the one sent
        self._cleared: set[str] = set()  # removed cameras whose retained topics were cleared
        self._last_announce = float("-inf")  # monotonic time of the last discovery announcement
        self._announce_timer: threading.Timer | None = None
        self._flood_warned = False
        self._full_warned = False  # one warning each time the event queue fills
        self._drained = threading.Condition(self._lock)
        # One TLS context for paho and for _diagnose, so the diagnosis tests what paho uses.
        self._tls = tls_context(config.tls) if config.tls else None
        self.client = self._client(config, device_id)

    def _client(self, config: MqttConfig, device_id: str) -> mqtt.Client:
        # The broker keeps our session (in-flight QoS 1) across drops: clean_session=False in
        # 3.1.1; in 5 (where paho takes no clean_session), clean_start=False at each connect
        # and a session that does not expire (start).
        v5 = config.protocol == "5"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        # paho's own limit has room above the events' for what must always get through after
        # an outage that filled the queue: status "online", instance, discovery configs.
        client.max_queued_messages_set(config.queue_size + CONTROL_RESERVE)
        client.reconnect_delay_set(1, int(config.reconnect_max_s))
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if config.username:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if self._tls is not None:
            client.tls_set_context(self._tls)  # also takes check_hostname (tls.insecure) from it
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self._on_pre_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        if self.spool is not None:
            with self._lock:  # the last run's, first: they are older
                self._backlog.extend(self.spool.load())
                self._count_queued()
            self._feed_backlog()
            if not self._spooled:
                self.spool.save([])
        if self.config.protocol == "5":
            session = Properties(PacketTypes.CONNECT)
            session.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            self.client.connect_async(
                self.config.host,
                self.config.port,
                self.config.keepalive_s,
                clean_start=False,
                properties=session,
            )
        else:
            self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()

    def publish(self, event: Event) -> None:
        self._send_event(f"{self.base}/{event.camera}/event", event.payload())

    def _feed_backlog(self) -> None:
        """Hand the last run's events to paho as the queue has room (at start, then as the
        broker acknowledges): already accepted, they are never refused, only held back."""
        while True:
            with self._lock:
                if not self._backlog or len(self._pending) >= self.config.queue_size:
                    return
                topic, payload = self._backlog.popleft()
            mid = self._hand_over(topic, payload)
            if mid is not None:
                with self._lock:
                    self._spooled.add(mid)

    def _send_event(self, topic: str, payload: bytes) -> int | None:
        """Queue one event; returns its message id while it waits for the broker."""
        if self.config.qos > 0 and not self._room_for_event():
            return None
        return self._hand_over(topic, payload)

    def _hand_over(self, topic: str, payload: bytes) -> int | None:
        # Never call paho while holding our lock: paho holds its own locks while it runs
        # on_publish, which takes ours; the opposite order would deadlock.
        info = publish(self.client, topic, payload, self.config.qos)
        with self._lock:
            if self.config.qos == 0:  # never queued by paho: sent now or lost
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    self.stats.published += 1
                else:
                    self.stats.dropped += 1
                return None
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # the reserve itself is full: not expected
                self._drop_event()
                return None
            early = self._early_ack(info.mid)
            if early is not None:  # the broker answered before we got here
                _, refusal = early
                if refusal is None:
                    self.stats.published += 1
                else:
                    self._refused(topic, refusal, event=True)
                return None
            self._controls.pop(info.mid, None)  # paho reuses an id only once it is done
            self._pending[info.mid] = (topic, payload)
            self._count_queued()
            return info.mid

    def _count_queued(self) -> None:
        """Events waiting (called with our lock held): handed to paho and not acknowledged,
        and the last run's not handed over yet, which are just as undelivered."""
        self.stats.queued = len(self._pending) + len(self._backlog)

    def _early_ack(self, mid: int) -> tuple[float, str | None] | None:
        """The acknowledgement that came for ``mid`` before publish() returned (called with our
        lock held). Only a fresh one: an old one was for an earlier message with that id, and
        taking it counted an event queued during an outage as delivered, never spooled."""
        early = self._acked_early.pop(mid, None)
        if early is None or time.monotonic() - early[0] > EARLY_ACK_TTL_S:
            return None
        return early

    def _keep(self, events: list[tuple[str, bytes]]) -> None:
        """At shutdown: what the broker has not taken goes to the spool for the next start."""
        if self.spool is None:
            if events:
                log.warning("shutting down with %d undelivered events (no spool)", len(events))
            return
        problem = self.spool.save(events)
        if problem:
            log.error(
                "shutting down with %d undelivered events, lost: cannot write the spool %s: %s",
                len(events),
                self.spool.path,
                problem,
            )
        elif events:
            log.warning(
                "shutting down with %d undelivered events: kept in %s, sent at the next start",
                len(events),
                self.spool.path,
            )

    def _room_for_event(self) -> bool:
        """Events may fill ``queue_size`` and no more (the rest of paho's queue is the control
        messages' reserve); when full, a new event is refused and counted, the queued ones kept.
        """
        with self._lock:
            if len(self._pending) < self.config.queue_size:
                # Warned again only once the queue has drained to half: a broker that keeps
                # up just short of the event rate would otherwise get a warning every second.
                if len(self._pending) <= self.config.queue_size // 2:
                    self._full_warned = False
                return True
            self._drop_event()
            return False

    def _drop_event(self) -> None:
        """Count a refused event; say so once per time the queue fills, not once per event."""
        self.stats.dropped += 1
        if not self._full_warned:
            self._full_warned = True
            log.warning(
                "MQTT queue full (%d events): new events are dropped (counted in "
                "events_dropped_total) until the broker takes some",
                self.config.queue_size,
            )

    def publish_state(self, state: CameraState) -> None:
        """Retained, QoS 1, outside the event queue and at most one in flight per camera: a
        newer state waits for the one in flight and replaces any other waiting, so states
        never push events out of the queue nor pile up; while the broker is away they are only
        kept, and every camera's latest is published at each connect, so an outage loses none.
        (QoS 0 states took message ids without any check, and after the ids went round, the
        send of one counted a queued event with the same id as delivered.)"""
        with self._lock:
            self._states[state.camera] = state
            if not self.stats.connected or self._state_busy(state.camera):
                self._state_waiting.add(state.camera)
                return
        self._send_state(self.client, state.camera)

    def _state_busy(self, camera: str) -> bool:
        """A state of ``camera`` is on its way (called with our lock held): a newer one waits."""
        return camera in self._state_in_flight.values() or camera in self._states_resent.values()

    def _send_state(self, client: mqtt.Client, camera: str) -> None:
        with self._lock:
            state = self._states[camera]
            self._state_waiting.discard(camera)
        topic = state_topic(self.base, camera)
        self._send_retained(client, topic, state.payload(), self._state_in_flight, camera)

    def _control(
        self, client: mqtt.Client, topic: str, payload: bytes | str
    ) -> mqtt.MQTTMessageInfo:
        """Status, instance or a discovery config."""
        return self._send_retained(client, topic, payload, self._controls, topic)

    def _send_retained(
        self,
        client: mqtt.Client,
        topic: str,
        payload: bytes | str,
        in_flight: dict[int, str],
        name: str,
    ) -> mqtt.MQTTMessageInfo:
        """A retained QoS 1 message that is not an event, held in ``in_flight`` under ``name``
        until acknowledged (in the same lock as the check for an early acknowledgement, so
        none is missed): its refusal is said, and its acknowledgement is not taken for an
        event's. One that paho will not queue (its reserve full: not expected) is said."""
        info = publish(client, topic, payload, qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("MQTT could not queue %s: %s", topic, mqtt.error_string(info.rc))
            return info
        with self._lock:
            early = self._early_ack(info.mid)
            if early is None:
                in_flight[info.mid] = name
            elif early[1] is not None:
                self._refused(topic, early[1], event=False)
        return info

    def announce(self) -> None:
        """Home Assistant discovery configs, retained; idempotent, so re-announcing is safe."""
        ha = self.config.homeassistant
        for topic, payload in discovery_messages(ha, self.base, self.device_id, self.cameras):
            self._control(self.client, topic, payload)

    def close(self, timeout: float) -> None:
        # From here, a failed connect or a drop is the shutdown's business: no "retrying" or
        # "queued meanwhile" lines after the line that says what was kept.
        self._closing = True
        deadline = time.monotonic() + timeout
        with self._drained:
            while (
                (self._pending or self._state_in_flight or self._states_resent)
                and self.stats.connected
                and time.monotonic() < deadline
            ):
                self._drained.wait(deadline - time.monotonic())
            # Oldest first: the last run's events (handed over, then held back), then this run's.
            undelivered = [event for mid, event in self._pending.items() if mid in self._spooled]
            undelivered += self._backlog
            undelivered += [e for mid, e in self._pending.items() if mid not in self._spooled]
            self._spooled.clear()  # from now on the spool is what _keep writes
            self._backlog.clear()
            self.stats.queued = len(undelivered)
        self._keep(undelivered)
        said_offline = True
        if self.stats.connected:
            info = self._control(self.client, self.status_topic, "offline")
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                said_offline = info.is_published()
            except (RuntimeError, ValueError):  # not queued, or the connection went meanwhile
                said_offline = False
        with self._lock:
            if self._announce_timer is not None:
                self._announce_timer.cancel()
        if said_offline:
            self.client.disconnect()
            self.client.loop_stop()
        else:
            self._leave_to_the_will()

    def _leave_to_the_will(self) -> None:
        """Go without a DISCONNECT, so that the broker publishes our last will, "offline".
        "offline" itself was not acknowledged: with 20 messages unacknowledged (paho's window)
        it was only queued, never sent, and a clean DISCONNECT made the broker discard the
        will: the retained status stayed "online" for ever. The connection is cut first, so
        the DISCONNECT that ends paho's loop (which otherwise waits for every acknowledgement)
        never reaches the broker."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown, also under TLS: SSLSocket.shutdown drops the TLS
            # state that paho's reader thread may be inside of.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            # Every retry, at most one per reconnect_max_s: a refusal needs the operator (wrong
            # credentials, ACL), and the journal should show that it still happens.
            old_broker = self.config.protocol == "5" and "protocol version" in str(reason).lower()
            log.error(
                "MQTT broker %s:%d refused the connection: %s%s; %s, retrying with backoff",
                self.config.host,
                self.config.port,
                reason,
                " (a broker without MQTT 5: set mqtt.protocol: 3.1.1)" if old_broker else "",
                self._meanwhile(),
            )
            # paho then reports the same refusal as a disconnect: not another problem to name.
            self._connect_warned = True
            return
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        self.stats.connected, self._connect_warned, self._lost = True, False, False
        # Subscribe before publishing our own: the broker then hands us the instance that
        # connected last under this device id, retained, before ours replaces it.
        client.subscribe(self.instance_topic, qos=1)
        self._control(client, self.instance_topic, self.instance)
        self._control(client, self.status_topic, "online")
        with self._lock:
            # States in flight at the drop are resent by paho, after this: a camera's newer
            # state waits for that acknowledgement (_state_acknowledged), which is not taken
            # for an event's either.
            self._states_resent.update(self._state_in_flight)
            self._state_in_flight.clear()
            cameras = [camera for camera in self._states if not self._state_busy(camera)]
            self._state_waiting.update(set(self._states) - set(cameras))
        for camera in cameras:
            self._send_state(client, camera)
        # Retained topics of cameras no longer configured (renamed or removed): found here,
        # cleared in _on_message, or Home Assistant shows their last state as current forever.
        client.subscribe(state_topic(self.base, "+"), qos=1)
        if self.config.homeassistant.enabled:
            client.subscribe(self.config.homeassistant.status_topic, qos=1)
            client.subscribe(sensor_topics(self.config.homeassistant, self.device_id), qos=1)
            with self._lock:
                self._last_announce = time.monotonic()
            self.announce()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.instance_topic:
            self._check_instance(message.payload.decode(errors="replace"))
            return
        ha = self.config.homeassistant
        if ha.enabled and message.topic == ha.status_topic:
            # A retained "online" (Home Assistant's birth message may be set to retain) comes at
            # every subscribe, just after the connect announced anyway: only a live one means
            # that Home Assistant has started.
            if message.payload == b"online" and not message.retain:
                self._announce_soon()
            return
        if message.retain and message.payload:  # what the broker kept, not our live publishes
            self._clear_if_removed(client, message.topic)

    def _clear_if_removed(self, client: mqtt.Client, topic: str) -> None:
        """An empty retained message deletes the retained one (and, for a discovery config, the
        Home Assistant entity): what a camera left behind that the configuration has dropped."""
        camera = camera_of(topic, self.base, self.config.homeassistant, self.device_id)
        if camera is None or camera in self.cameras:
            return
        self._control(client, topic, b"")
        if camera not in self._cleared:
            self._cleared.add(camera)
            log.info(
                "camera %r is no longer configured: clearing its retained state and sensors", camera
            )

    def _check_instance(self, other: str) -> None:
        """Two daemons with one device id (cloned SD cards: the host name is the default) share
        a client id, so each connect takes the broker session from the other, endlessly, and
        paho reports only "Unspecified error". Each connect finds the instance that connected
        last; finding another one again and again means a twin (once is a restart of ours)."""
        if other == self.instance or self._predecessor(other):
            return
        now = time.monotonic()
        self._foreign = [t for t in self._foreign if now - t < TWIN_WINDOW_S] + [now]
        if len(self._foreign) >= 2 and not self._twin_warned:
            self._twin_warned = True
            log.error(
                "another daemon (%s) uses device_id %r and MQTT client id %r: the two take the "
                "broker session from each other. Give every device its own device_id "
                "(device_id in the configuration or EDGE_DEVICE_ID; the default is the host "
                "name, which cloned images share)",
                other,
                self.device_id,
                self.client_id,
            )

    def _predecessor(self, other: str) -> bool:
        """An instance of this machine, this boot, whose process is gone (or is this one,
        before a reload): a broker that lost our newer instance in a crash brings it back."""
        parts = other.split()
        if len(parts) != 6 or parts[1] != "pid" or parts[3] != "boot" or not parts[2].isdigit():
            return False
        if parts[0] != socket.gethostname() or parts[4] != self.boot or self.boot == "-":
            return False
        pid = int(parts[2])
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False

    def _announce_soon(self) -> None:
        """Announce again now, or once when the rate limit allows, however many "online"
        messages arrive meanwhile: any client on the broker can send them, and answering each
        one filled the outgoing queue with configs and pushed events out of it (issue 12)."""
        with self._lock:
            wait = self._last_announce + ANNOUNCE_MIN_INTERVAL_S - time.monotonic()
            if self._announce_timer is not None or wait > 0:
                self.stats.announcements_coalesced += 1
                if not self._flood_warned:
                    self._flood_warned = True
                    log.warning(
                        "Home Assistant status 'online' arrives more often than every %.0f s "
                        "(another client?): announcing at most that often",
                        ANNOUNCE_MIN_INTERVAL_S,
                    )
                if self._announce_timer is None:
                    self._announce_timer = threading.Timer(wait, self._announce_due)
                    self._announce_timer.daemon = True
                    self._announce_timer.start()
                return
            self._last_announce = time.monotonic()
        log.info("Home Assistant is online: announcing the sensors again")
        self.announce()

    def _announce_due(self) -> None:
        with self._lock:
            self._announce_timer = None
            self._last_announce = time.monotonic()
        self.announce()

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        self._lost = False  # a new attempt: what ends it is its own story

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """paho retries silently: say once per outage why, or a typo in a CA path stays hidden."""
        if self._connect_warned or self._closing:
            return
        self._connect_warned = True
        why = self._diagnose()  # up to 5 s, during which a stop may have begun
        if self._closing:
            return
        log.warning(
            "MQTT cannot connect to %s:%d: %s; %s, retrying with backoff",
            self.config.host,
            self.config.port,
            why,
            self._meanwhile(),
        )

    def _meanwhile(self) -> str:
        """What happens to events while the broker is away, for the log lines that say so."""
        if self.config.qos == 0:
            return "events are dropped meanwhile (qos 0 is never queued)"
        return f"events are queued meanwhile (up to {self.config.queue_size})"

    def _diagnose(self) -> str:
        """The reason paho does not report: one plain TCP (and TLS) connection attempt."""
        host, port = self.config.host, self.config.port
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                if self._tls is None:
                    return "the TCP connection works; the broker closed the MQTT session"
                with self._tls.wrap_socket(sock, server_hostname=host):
                    return "TCP and TLS work; the broker closed the MQTT session"
        except OSError as error:  # refused, unreachable, timeout, ssl.SSLError...
            return str(error) or type(error).__name__

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if self._closing:
            log.info("MQTT disconnected")
        elif self.stats.connected:
            # paho's "Unspecified error" is a connection that ended without the broker's word.
            why = "connection lost" if str(reason) == "Unspecified error" else reason
            log.warning("MQTT disconnected (%s); %s", why, self._meanwhile())
            self._lost = True
        elif not (self._connect_warned or self._lost):
            # The TCP connection worked and closed before the broker accepted the session:
            # neither a failed connect nor a lost one, and paho says nothing about it.
            self._connect_warned = True
            what = (
                f"did not answer the connect request within keepalive_s "
                f"({self.config.keepalive_s} s)"
                if "keep alive" in str(reason).lower()  # paho's own wait ran out, not the broker
                else f"closed the connection before accepting a session ({reason})"
            )
            log.warning(
                "MQTT %s:%d %s: is it an MQTT port%s? %s, retrying with backoff",
                self.config.host,
                self.config.port,
                what,
                "" if self._tls else ", and not one that needs TLS (mqtt.tls)",
                self._meanwhile(),
            )
        self.stats.connected = False
        with self._drained:
            self._drained.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        # MQTT 5 only: the broker took the message and did not pass it on (its ACL, a quota).
        refusal = str(reason) if getattr(reason, "is_failure", False) else None
        if self._state_acknowledged(mid, refusal):
            return
        with self._drained:
            control = self._controls.pop(mid, None)
            if control is not None:
                if refusal is not None:
                    self._refused(control, refusal, event=False)
                return
            if mid in self._pending:
                topic, _ = self._pending.pop(mid)
                if mid in self._spooled:
                    self._spooled.discard(mid)
                    if not self._spooled and not self._backlog and self.spool is not None:
                        self.spool.save([])  # every event of the last run is delivered
                if refusal is None:
                    self.stats.published += 1
                    self._refusal_warned.discard(topic)
                else:
                    self._refused(topic, refusal, event=True)
                self._count_queued()
                self._drained.notify_all()
                backlog = bool(self._backlog)
            else:
                # Not registered (yet): an event whose publish() has not returned. Remember it
                # briefly; forget old ones so a reused id is not mistaken.
                now = time.monotonic()
                self._acked_early[mid] = (now, refusal)
                for old in [
                    m for m, (t, _) in self._acked_early.items() if now - t > EARLY_ACK_TTL_S
                ]:
                    del self._acked_early[old]
                return
        if backlog:
            self._feed_backlog()  # outside our lock, as every call into paho

    def _state_acknowledged(self, mid: int, refusal: str | None) -> bool:
        """Whether ``mid`` was a camera state; the camera's newer state, if one waits, goes out."""
        with self._drained:
            camera = self._state_in_flight.pop(mid, None) or self._states_resent.pop(mid, None)
            if camera is None:
                return False
            if refusal is not None:
                self._refused(state_topic(self.base, camera), refusal, event=False)
            self._drained.notify_all()
            newer = (
                camera in self._state_waiting
                and self.stats.connected
                and not self._state_busy(camera)
            )
        if newer:
            self._send_state(self.client, camera)  # outside our lock, as every call into paho
        return True

    def _refused(self, topic: str, reason: str, event: bool) -> None:
        """The broker refused a message (called with our lock held): an event is counted as
        dropped, never as delivered; said once per topic until one gets through again."""
        if event:
            self.stats.dropped += 1
        if topic in self._refusal_warned:
            return
        self._refusal_warned.add(topic)
        if reason == "Not authorized":
            user = f"user {self.config.username!r}" if self.config.username else "this client"
            why = f"the broker's ACL must let {user} publish there"
        else:
            why = "a broker limit: message_size_limit, quotas"
        consequence = (
            "refused events are dropped, counted in events_dropped_total"
            if event
            else "sent again at the next connect"
        )
        log.error(
            "MQTT broker %s:%d refused the message on %s: %s (%s); %s",
            self.config.host,
            self.config.port,
            topic,
            reason,
            why,
            consequence,
        )


def publish(
    client: mqtt.Client, topic: str, payload: bytes | str, qos: int, retain: bool = False
) -> mqtt.MQTTMessageInfo:
    """``client.publish``, past paho's message-id clash. paho numbers every message 1..65535 in
    turn (QoS 0 ones too) and refuses a number still held by a queued message as if its
    queue were full: after an outage long enough to go round, the status "online", discovery
    configs and events were refused while the queue had room (the retained status stayed
    "offline"). The next number is tried then, as many as there are."""
    info = client.publish(topic, payload, qos=qos, retain=retain)
    for _ in range(MESSAGE_IDS):
        if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE or not _id_clash(client, info.mid):
            break
        info = client.publish(topic, payload, qos=qos, retain=retain)
    return info


def _id_clash(client: mqtt.Client, mid: int) -> bool:
    """Whether paho refused ``mid`` because a queued message holds it (its queue has room)."""
    queued = getattr(client, "_out_messages", None)  # paho 2.x; without it, assume a clash
    limit = getattr(client, "_max_queued_messages", 0)
    return queued is None or not limit or len(queued) < limit


def accept_any_refusal_on_puback() -> None:
    """Let paho read every failure reason a broker puts on a PUBACK. mosquitto answers a message
    over its ``message_size_limit`` with 0x95 "Packet too large", which MQTT 5 allows only on
    CONNACK and DISCONNECT; paho took the PUBACK for a malformed packet and dropped the
    connection, and as the refused message is resent first at each reconnect, no event got
    through again (under 3.1.1 the broker drops it without a word). Read as a refusal, the
    message is counted and named like any other, and the rest flows."""
    from paho.mqtt.reasoncodes import ReasonCode

    for code, names in ReasonCode.names.items():
        if code >= 0x80 and not any(PacketTypes.PUBACK in kinds for kinds in names.values()):
            for kinds in names.values():
                kinds.append(PacketTypes.PUBACK)


accept_any_refusal_on_puback()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8] or "-"
    except OSError:
        return "-"


def _usable_spool(config: MqttConfig, device_id: str, base: str) -> Spool | None:
    """The spool, checked at start-up. An ``mqtt.spool_file`` that cannot be written is a
    configuration error; the default place is only where it can be (a container with a
    read-only root and no home has none): then the daemon runs without, and says so once."""
    path = spool_path(config, device_id)
    if path is None:
        return None
    spool = Spool(path, base)
    if config.spool_file is not None:
        spool.check()
    elif why := spool.problem():
        log.warning(
            "no spool: %s %s, so events still undelivered at a stop are lost; set "
            "mqtt.spool_file to a writable place of its own (or mqtt.spool: false to silence "
            "this)",
            path,
            why,
        )
        return None
    return spool


def spool_path(config: MqttConfig, device_id: str) -> Path | None:
    """Where undelivered events wait between runs: none at qos 0, which never queues."""
    if not config.spool or config.qos == 0:
        return None
    if config.spool_file is not None:
        return config.spool_file
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]  # systemd's StateDirectory=
    if state:
        return Path(state) / f"{device_id}.undelivered.jsonl"
    home = os.environ.get("XDG_STATE_HOME")
    if not home:
        try:
            home = Path.home() / ".local" / "state"
        except RuntimeError:  # no home directory to be found: set mqtt.spool_file
            return None
    return Path(home) / "edge-emotion" / f"{device_id}.undelivered.jsonl"


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (or the system CAs), present a client certificate
    when one is configured; ``insecure`` skips only the host name check. A file that is not
    what its key says is a configuration error (exit 2), named with its key."""
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"mqtt.tls.ca_file {tls.ca_file}: not usable as CA certificates: {_why(error)}"
        ) from None
    context.check_hostname = not tls.insecure
    if tls.cert_file:
        # Always a password callback: without one, OpenSSL would prompt for an encrypted key's
        # passphrase on a terminal a service does not have.
        password = tls.key_password.get_secret_value() if tls.key_password else ""
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: password)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(
                f"mqtt.tls.cert_file {tls.cert_file}"
                + (f" / key_file {tls.key_file}" if tls.key_file else "")
                + f": not a usable certificate and private key: {_why(error)}"
                + _key_hint(tls)
            ) from None
    return context


def _key_hint(tls: TlsConfig) -> str:
    """OpenSSL says only "PEM lib" when an encrypted key cannot be unlocked: say what to do."""
    key = tls.key_file or tls.cert_file
    try:
        encrypted = b"ENCRYPTED" in Path(key).read_bytes()[:4096]
    except OSError:
        return ""
    if not encrypted:
        return ""
    if tls.key_password is None:
        return " (the key is encrypted: give its passphrase as mqtt.tls.key_password)"
    return " (the key is encrypted and mqtt.tls.key_password does not unlock it)"


def _why(error: Exception) -> str:
    return getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
