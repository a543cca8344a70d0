"""The Grafana dashboard shipped in contrib/ only queries metrics a running daemon exports."""

from __future__ import annotations

import json
import re
import urllib.request

from conftest import ROOT
from test_daemon import CLIP, broker, daemons  # noqa: F401 (fixtures)

DASHBOARD = ROOT / "contrib" / "grafana" / "edge-emotion-dashboard.json"
METRIC = re.compile(r"\b((?:edge_emotion|process)_[a-z_]+)")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
SELECTED = re.compile(r'([a-zA-Z_]\w*)=~?"')  # label matchers inside {...}
LEGEND = re.compile(r"\{\{(\w+)\}\}")
LABEL_VALUES = re.compile(r"label_values\(.*,\s*(\w+)\)")
ADDED_BY_PROMETHEUS = {"instance", "job"}


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs + variables


def queries_and_legends(dashboard: dict) -> list[tuple[str, str]]:
    pairs = [
        (t["expr"], t.get("legendFormat", ""))
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]
    return pairs + [(q, "") for q in queries(dashboard)[len(pairs) :]]


def exposition(port: int) -> dict[str, set[str]]:
    """Metric sample name -> label names seen on it, from the daemon's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', line))
            samples.setdefault(name, set()).update(labels)
    return samples


def test_every_metric_and_label_the_dashboard_queries_is_exported(broker, daemons):  # noqa: F811
    dashboard = json.loads(DASHBOARD.read_text())
    daemon = daemons(
        {
            "device_id": "hall",
            "cameras": [{"name": "door", "source": str(CLIP), "loop": True, "fps": 10}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
    )
    daemon.wait_metric("edge_emotion_events_published_total", lambda v: v >= 1, timeout=30)
    exported = exposition(daemon.metrics_port)

    wanted = {name for q in queries(dashboard) for name in METRIC.findall(q)}
    assert len(wanted) >= 12, wanted
    missing = sorted(wanted - set(exported))
    assert not missing, f"dashboard queries metrics the daemon does not export: {missing}"
    for query, legend in queries_and_legends(dashboard):
        names = METRIC.findall(query)
        used = {*SELECTED.findall(query), *LEGEND.findall(legend), *LABEL_VALUES.findall(query)}
        for group in GROUPING.findall(query):
            used |= {label.strip() for label in group.split(",")}
        used -= ADDED_BY_PROMETHEUS | {"le"}
        for name in names:
            assert used <= exported[name], f"{query}: {name} lacks labels {used - exported[name]}"
    assert daemon.stop() == 0, daemon.log()
