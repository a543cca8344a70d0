"""Container health check for the edge-emotion daemon (the Dockerfile's HEALTHCHECK).

Healthy when the metrics endpoint answers, every camera reports ``edge_emotion_camera_up 1``
and more frames have been analysed (``edge_emotion_frames_processed_total``) than at the
previous check. "The process answers HTTP" alone would stay healthy with every camera down or a
stuck pipeline. The previous count is kept in a small file under /tmp; the first check only needs
the cameras to be up. Exit 0 healthy, 1 unhealthy, with one line saying why.

Environment: ``HEALTHCHECK_METRICS_URL`` (default ``http://127.0.0.1:9108/metrics``: change it
together with ``metrics.port``; the check needs ``metrics.enabled``), ``HEALTHCHECK_STATE``
(default ``/tmp/edge-emotion-health``). Standard library only.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.request

URL = os.environ.get("HEALTHCHECK_METRICS_URL", "http://127.0.0.1:9108/metrics")
STATE = os.environ.get("HEALTHCHECK_STATE", "/tmp/edge-emotion-health")
SAMPLE = re.compile(r'^edge_emotion_(camera_up|frames_processed_total)\{camera="([^"]*)"\} (\S+)$')


def check(text: str, previous: float | None) -> tuple[bool, str, float]:
    """(healthy, why, frames analysed so far) from one scrape of the metrics page."""
    up: dict[str, float] = {}
    processed = 0.0
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        name, camera, value = match.groups()
        if name == "camera_up":
            up[camera] = float(value)
        else:
            processed += float(value)
    if not up:
        return False, "no camera reported by the daemon", processed
    down = sorted(camera for camera, value in up.items() if value < 1)
    if down:
        return False, f"camera down: {', '.join(down)}", processed
    # A lower count than last time means the daemon restarted: counters start again at 0.
    if previous is not None and processed == previous:
        return False, f"no frame analysed since the last check ({processed:.0f} in all)", processed
    return True, f"{len(up)} camera(s) up, {processed:.0f} frames analysed", processed


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError as error:
        print(f"unhealthy: metrics endpoint {URL}: {error}")
        return 1
    previous = None
    try:
        with open(STATE) as state:
            previous = float(state.read().strip())
    except (OSError, ValueError):
        pass
    healthy, why, processed = check(text, previous)
    try:
        with open(STATE, "w") as state:
            state.write(f"{processed}\n")
    except OSError as error:
        # Without the previous count a stalled pipeline would pass forever: say so, loudly.
        print(f"unhealthy: cannot keep state in {STATE} ({error}); give /tmp a tmpfs")
        return 1
    print(("healthy: " if healthy else "unhealthy: ") + why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
