"""Undelivered events between runs: a stop or reload during a broker outage keeps them here and
the next start sends them first.

The file stays until the broker has taken every event it held (a crash meanwhile sends them
again: at least once, deduplicated by ``event_id``), is replaced whole (written aside, renamed),
and is readable by the daemon's user only. Lines of another device id sharing the file are
kept untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from edge.cli import unwritable
from edge.config import ConfigError

log = logging.getLogger(__name__)


# An event's line is under 1 KiB: a spool has events within its first MiB.
SNIFF_BYTES = 1 << 20


def _is_event(line: bytes) -> bool:
    try:
        item = json.loads(line)
    except ValueError:
        return False
    return isinstance(item, dict) and "topic" in item and "payload" in item


class Spool:
    def __init__(self, path: Path, base: str) -> None:
        self.path, self.base = path, base
        # <prefix>/<device_id>/<camera>/event, camera a name (no wildcards, no levels). This
        # device's events under an earlier topic_prefix are ours too: the file is this device's
        # (named for its id), and nobody may listen under the old prefix any more.
        device_id = base.rpartition("/")[2]
        self._ours = re.compile(
            r"(?:[^#+\s]+/)?" + re.escape(device_id) + r"/([A-Za-z0-9_-]+)/event"
        )
        self._any_event = re.compile(r"[^#+\s]+/[A-Za-z0-9_-]+/event")
        self._others: list[str] = []

    def check(self) -> None:
        """``problem`` as the configuration error of an ``mqtt.spool_file``."""
        if why := self.problem():
            raise ConfigError(
                f"mqtt.spool_file {self.path}: {why}; give a file of its own that can be "
                "written (or set mqtt.spool: false)"
            )

    def problem(self) -> str | None:
        """Why the spool cannot be kept there, or None; at start-up, not at the stop that
        needs it. The nearest existing folder on the way must be a writable folder, and a
        file there a spool: it is replaced whole and removed once delivered, so a
        ``spool_file`` naming the configuration, the model or a TLS key by a typo destroyed
        it (and the next start failed); a pipe or ``/dev/zero`` blocked the start or filled
        the memory."""
        try:
            if self.path.is_dir():
                return "is a folder, not a file name"
            if why := self._not_a_spool():
                return why
        except OSError as error:  # a folder on the way that the daemon's user cannot search
            return f"cannot be reached ({error.strerror or error})"
        if why := unwritable(self.path):
            return f"cannot be written ({why})"
        return None

    def _not_a_spool(self) -> str | None:
        """Why the file there is not a spool this daemon wrote, or None: none, one with an
        event among its first lines (a damaged line is skipped as ``load`` does), or one with
        no text at all (the zeros a power cut can leave)."""
        if not (self.path.exists() or self.path.is_symlink()):
            return None
        if not self.path.is_file():
            return "not a regular file (a device, a pipe or a broken link)"
        try:
            with self.path.open("rb") as file:
                head = file.read(SNIFF_BYTES)
        except OSError as error:
            return f"cannot be read ({error.strerror or error})"
        if not head.strip(b"\0 \t\r\n") or any(map(_is_event, head.splitlines())):
            return None
        return "holds something else than undelivered events, and would be replaced"

    def load(self) -> list[tuple[str, bytes]]:
        """This device's events from the last run, in order; the file stays until they are
        delivered (``save``)."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        except OSError as error:
            log.error("cannot read the spool %s: %s", self.path, error.strerror or error)
            return []
        events, bad, moved = [], 0, 0
        for line in text.splitlines():
            try:
                item = json.loads(line)
                topic, payload = item["topic"], item["payload"].encode()
            except (ValueError, TypeError, KeyError, AttributeError):
                # Not JSON, not an event, or text that is no UTF-8 ("\ud800"): one damaged
                # line must not stop every start.
                bad += 1
                continue
            if not isinstance(topic, str):
                bad += 1
            elif ours := self._ours.fullmatch(topic):
                current = f"{self.base}/{ours.group(1)}/event"
                moved += current != topic
                events.append((current, payload))
            elif self._any_event.fullmatch(topic):
                self._others.append(line)  # another device's (or topic prefix's): left alone
            else:
                bad += 1  # not an event topic at all (a wildcard would stop the publisher)
        log.info(
            "sending %d undelivered events of the last run (from %s)%s%s%s",
            len(events),
            self.path,
            f", {moved} of them under the current topic prefix, not their old one" if moved else "",
            f"; {bad} unreadable lines skipped" if bad else "",
            f"; {len(self._others)} lines of other devices left in it" if self._others else "",
        )
        return events

    def save(self, events: list[tuple[str, bytes]]) -> str | None:
        """The spool becomes ``events`` (plus other devices' lines); no file when both are
        empty. Returns why it could not be written, or None."""
        lines = [json.dumps({"topic": t, "payload": p.decode()}) for t, p in events]
        lines += self._others
        try:
            if not lines:
                self.path.unlink(missing_ok=True)
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            try:
                fd = _create_anew(partial)
                with os.fdopen(fd, "w") as out:
                    out.write("\n".join(lines) + "\n")
                os.replace(partial, self.path)
            finally:
                partial.unlink(missing_ok=True)  # a full disk: no half file left filling it
        except OSError as error:
            return str(error.strerror or error)
        return None


def _create_anew(path: Path) -> int:
    """``path`` as a new file of the daemon's user only, for writing. What is there already
    goes first (a link goes, not what it points at), and the open neither follows a link nor
    takes a file that reappeared: opened as it was, a link planted at ``<spool>.partial`` had
    the daemon overwrite its target with the events, and the spool become that link."""
    path.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
