"""Many devices, one broker: consumers in a shared-subscription group split the events."""

from __future__ import annotations

import json
import threading

from services import Subscriber, shutdown_summary
from test_daemon import CLIP, broker, daemons  # noqa: F401 (fixtures)

GROUP_FILTER = "$share/analytics/edge-emotion/+/+/event"


def delivered(log: str) -> int:
    """Events the daemon had acknowledged by the broker, from its shutdown summary."""
    acknowledged, undelivered, dropped = shutdown_summary(log)
    assert (undelivered, dropped) == (0, 0), log
    return acknowledged


def test_two_devices_and_a_shared_group_of_two_consumers_see_each_event_once(broker, daemons):  # noqa: F811
    arrived = threading.Condition()
    consumers = [
        Subscriber(broker.port, GROUP_FILTER, client_id=f"consumer-{i}", changed=arrived)
        for i in (1, 2)
    ]
    for consumer in consumers:
        consumer.wait_subscribed()  # events published before this would bypass the group
    devices = [
        daemons(
            {
                "device_id": device,
                "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 10}],
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "tracking": {"heartbeat_s": 0.2},  # a steady stream of events
            }
        )
        for device in ("porch", "garage")
    ]
    for device in devices:
        device.wait_metric("edge_emotion_events_published_total", lambda v: v >= 20, timeout=60)
    sent = 0
    for device in devices:
        assert device.stop() == 0, device.log()
        sent += delivered(device.log())

    def received() -> list[bytes]:
        return [m.payload for c in consumers for m in c.messages]

    consumers[0].wait_for(lambda _: len(received()) >= sent, timeout=10)
    payloads = received()
    for consumer in consumers:
        consumer.close()
    assert len(payloads) == sent  # nothing lost, nothing delivered twice
    assert len(set(payloads)) == sent
    events = [json.loads(p) for p in payloads]
    assert {e["device_id"] for e in events} == {"porch", "garage"}
    # The group shares the load: each consumer got a real part of it, not a copy of all.
    shares = [len(c.messages) for c in consumers]
    assert all(share >= sent // 10 for share in shares), shares
