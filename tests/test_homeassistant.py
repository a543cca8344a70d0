"""Home Assistant picks the cameras up by itself: retained discovery configs on the real broker."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
from services import BrokenCamera, Subscriber
from test_daemon import CLIP, EMOTIONS, broker, daemons  # noqa: F401 (fixtures)


def configs(messages: list[mqtt.MQTTMessage]) -> dict[str, dict]:
    return {
        m.topic: json.loads(m.payload)
        for m in messages
        if m.topic.startswith("homeassistant/") and m.payload
    }


def test_discovery_announces_sensors_whose_state_topics_carry_values(broker, daemons):  # noqa: F811
    daemon = daemons(
        {
            "device_id": "Hall-1",
            "cameras": [
                {"name": "door", "source": str(CLIP), "loop": True, "fps": 5},
                {"name": "desk", "source": str(CLIP), "loop": True, "fps": 5},
            ],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "homeassistant": {"enabled": True}},
        }
    )
    announced = Subscriber(broker.port, "homeassistant/sensor/#", client_id="first-look")
    announced.wait_for(lambda ms: len(configs(ms)) == 4, timeout=30)
    announced.close()
    # A Home Assistant starting later: retained configs reach a subscriber that was not there.
    ha = Subscriber(broker.port, "homeassistant/sensor/#", client_id="home-assistant")
    found = configs(ha.wait_for(lambda ms: len(configs(ms)) == 4, timeout=15))
    assert all(m.retain for m in ha.messages)
    assert set(found) == {
        f"homeassistant/sensor/Hall-1/{camera}_{sensor}/config"
        for camera in ("door", "desk")
        for sensor in ("emotion", "faces")
    }
    devices = {json.dumps(c["device"], sort_keys=True) for c in found.values()}
    assert len(devices) == 1 and "edge-emotion_Hall-1" in devices.pop()
    assert len({c["unique_id"] for c in found.values()}) == 4
    for topic, config in found.items():
        camera = topic.split("/")[3].rsplit("_", 1)[0]
        assert config["availability_mode"] == "all"
        assert [a["topic"] for a in config["availability"]] == [
            "edge-emotion/Hall-1/status",
            f"edge-emotion/Hall-1/{camera}/state",
        ]
        # Entity ids are lower case with underscores, whatever the device and camera names.
        object_id = topic.split("/")[3]
        assert config["default_entity_id"] == f"sensor.hall_1_{object_id}"

    # The state topics the configs name carry what the value templates read.
    state_topics = {c["state_topic"] for c in found.values()}
    assert state_topics == {"edge-emotion/Hall-1/door/state", "edge-emotion/Hall-1/desk/state"}
    states = Subscriber(broker.port, "edge-emotion/Hall-1/+/state", client_id="ha-states")

    def seen_faces(ms: list[mqtt.MQTTMessage]) -> set[str]:
        return {m.topic for m in ms if json.loads(m.payload)["faces"] >= 1}

    messages = states.wait_for(lambda ms: seen_faces(ms) == state_topics, timeout=30)
    for m in messages:
        state = json.loads(m.payload)
        assert m.topic == f"edge-emotion/Hall-1/{state['camera']}/state"
        assert isinstance(state["faces"], int) and state["faces"] >= 0
        assert state["dominant_emotion"] in EMOTIONS | {"none"}
        assert (state["faces"] == 0) == (state["dominant_emotion"] == "none")
        assert state["camera_up"] is True or state["faces"] == 0
    status = Subscriber(broker.port, "edge-emotion/Hall-1/status", client_id="ha-status")
    status.wait_for(lambda ms: ms and ms[-1].payload == b"online", timeout=10)

    # Home Assistant restarts: it says "online" and the daemon announces everything again.
    before = len(ha.messages)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-birth")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
    again = ha.wait_for(lambda ms: len(configs(ms[before:])) == 4, timeout=10)
    assert configs(again[before:]) == found
    publisher.loop_stop()
    publisher.disconnect()

    assert daemon.stop() == 0, daemon.log()
    # Stopped: offline, which every sensor uses as its availability.
    status.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=5)
    for sub in (ha, states, status):
        sub.close()


def test_without_discovery_nothing_is_announced(broker, daemons):  # noqa: F811
    daemon = daemons(
        {
            "device_id": "hall",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 5}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
    )
    states = Subscriber(broker.port, "#", client_id="everything")
    states.wait_for(
        lambda ms: any(m.topic.endswith("/state") and b'"faces":1' in m.payload for m in ms),
        timeout=30,
    )
    assert daemon.stop() == 0, daemon.log()
    states.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=5)
    states.close()
    assert not [m.topic for m in states.messages if m.topic.startswith("homeassistant/")]


def test_a_broker_that_lost_its_retained_messages_gets_every_camera_state_again(
    broker,  # noqa: F811
    daemons,  # noqa: F811
):
    daemon = daemons(
        {
            "device_id": "hall",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 5}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
        }
    )
    first = Subscriber(broker.port, "edge-emotion/hall/door/state", client_id="before")
    first.wait_for(lambda ms: any(json.loads(m.payload)["faces"] == 1 for m in ms), timeout=30)
    first.close()
    broker.stop()
    (broker.workdir / "mosquitto.db").unlink()  # a new broker node: no retained messages
    broker.start()
    daemon.wait_metric("edge_emotion_mqtt_connected", lambda v: v == 1, timeout=15)
    # The camera's state did not change, yet a late subscriber finds it retained again.
    late = Subscriber(broker.port, "edge-emotion/hall/door/state", client_id="after")
    messages = late.wait_for(lambda ms: len(ms) >= 1, timeout=10)
    late.close()
    assert messages[0].retain and json.loads(messages[0].payload)["camera"] == "door"
    assert daemon.stop() == 0, daemon.log()


def test_a_client_flooding_home_assistant_online_cannot_evict_events(broker, daemons):  # noqa: F811
    daemon = daemons(
        {
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 10}],
            "tracking": {"heartbeat_s": 0.1},  # an event per analysed frame
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "queue_size": 50,
                "homeassistant": {"enabled": True},
            },
        }
    )
    daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 5, timeout=30)
    flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
    flood.connect("127.0.0.1", broker.port)
    flood.loop_start()
    for _ in range(2000):
        flood.publish("homeassistant/status", "online", qos=0)
    flood.publish("homeassistant/status", "online", qos=1).wait_for_publish(10)
    daemon.wait_metric(
        "edge_emotion_homeassistant_announcements_coalesced_total", lambda v: v >= 100, timeout=30
    )
    published = daemon.metrics()["edge_emotion_events_published_total"]
    daemon.wait_metric(
        "edge_emotion_events_published_total", lambda v: v >= published + 20, timeout=30
    )
    flood.loop_stop()
    flood.disconnect()
    assert daemon.metrics()["edge_emotion_events_dropped_total"] == 0
    assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("arrives more often than every") == 1
    assert log.count("announcing the sensors again") <= 2


def test_a_camera_removed_from_the_configuration_leaves_no_sensor_behind(broker, daemons):  # noqa: F811
    """Renamed or removed, its retained state and discovery configs would otherwise show Home
    Assistant a camera that no longer exists, 'available' with its last state, forever."""
    mqtt_config = {"host": "127.0.0.1", "port": broker.port, "homeassistant": {"enabled": True}}
    camera = {"source": str(CLIP), "loop": True, "fps": 5}
    two = [{"name": "door", **camera}, {"name": "desk", **camera}]
    first = daemons({"device_id": "hall", "cameras": two, "mqtt": mqtt_config})
    desk = {
        "edge-emotion/hall/desk/state",
        "homeassistant/sensor/hall/desk_emotion/config",
        "homeassistant/sensor/hall/desk_faces/config",
    }
    seen = Subscriber(broker.port, "#", client_id="watcher")
    seen.wait_for(lambda ms: desk <= {m.topic for m in ms if m.payload}, timeout=30)
    assert first.stop() == 0, first.log()

    second = daemons({"device_id": "hall", "cameras": two[:1], "mqtt": mqtt_config})
    cleared = seen.wait_for(lambda ms: desk <= {m.topic for m in ms if not m.payload}, timeout=30)
    seen.close()
    assert not [m.topic for m in cleared if "door" in m.topic and not m.payload]  # kept
    late = Subscriber(broker.port, "#", client_id="late")
    door = {"homeassistant/sensor/hall/door_emotion/config", "edge-emotion/hall/door/state"}
    kept = late.wait_for(lambda ms: door <= {m.topic for m in ms}, timeout=15)
    late.close()
    assert not desk & {m.topic for m in kept}
    assert "camera 'desk' is no longer configured" in second.log()
    assert second.stop() == 0, second.log()


def test_a_retained_home_assistant_birth_message_is_not_a_restart(broker, daemons):  # noqa: F811
    """Home Assistant can retain its "online": it comes at every subscribe, right after the
    connect announced the sensors. It must not count as a flood nor announce them twice."""
    birth = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-assistant")
    birth.connect("127.0.0.1", broker.port)
    birth.loop_start()
    birth.publish("homeassistant/status", "online", qos=1, retain=True).wait_for_publish(10)
    birth.loop_stop()
    birth.disconnect()
    sub = Subscriber(broker.port, "homeassistant/sensor/#", client_id="configs")
    sub.wait_subscribed()
    daemon = daemons(
        {
            "device_id": "hall",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 10}],
            "tracking": {"heartbeat_s": 0.1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "homeassistant": {"enabled": True}},
        }
    )
    # Past the 5 s in which a second announcement would have come.
    daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 60, timeout=60)
    assert daemon.metrics()["edge_emotion_homeassistant_announcements_coalesced_total"] == 0
    assert daemon.stop() == 0
    sub.close()
    announced = [m.topic for m in sub.messages if m.payload]
    assert len(announced) == len(set(announced)) == 2, announced  # emotion and faces, once each
    assert "arrives more often than every" not in daemon.log()


def test_a_camera_that_is_down_is_unavailable_not_an_empty_room(broker, daemons):  # noqa: F811
    """A dark camera and an empty room both have 0 faces: the state says whether the camera is
    up, and Home Assistant's sensors take it as their availability, with the daemon's status."""
    dark = BrokenCamera()  # accepts the connection, never answers
    daemon = daemons(
        {
            "device_id": "hall",
            "cameras": [
                {"name": "door", "source": str(CLIP), "loop": True, "fps": 5},
                {"name": "gate", "source": dark.url(), "open_timeout_s": 2},
            ],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "homeassistant": {"enabled": True}},
        }
    )
    states = Subscriber(broker.port, "edge-emotion/hall/+/state", client_id="states")

    def latest(ms: list[mqtt.MQTTMessage]) -> dict[str, dict]:
        return {m.topic.split("/")[2]: json.loads(m.payload) for m in ms}

    seen = latest(
        states.wait_for(
            lambda ms: latest(ms).get("door", {}).get("faces", 0) >= 1 and "gate" in latest(ms),
            timeout=30,
        )
    )
    assert seen["door"]["camera_up"] is True
    assert (seen["gate"]["camera_up"], seen["gate"]["faces"]) == (False, 0)
    ha = Subscriber(broker.port, "homeassistant/sensor/hall/#", client_id="home-assistant")
    found = configs(ha.wait_for(lambda ms: len(configs(ms)) == 4, timeout=15))
    gate = found["homeassistant/sensor/hall/gate_faces/config"]
    assert gate["availability"][1]["topic"] == "edge-emotion/hall/gate/state"
    assert "camera_up" in gate["availability"][1]["value_template"]
    assert daemon.stop() == 0, daemon.log()
    for sub in (states, ha):
        sub.close()
    dark.close()
