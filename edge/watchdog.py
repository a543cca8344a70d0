"""systemd integration: ``READY=1`` once running, ``WATCHDOG=1`` while the pipeline is not hung.

Speaks the sd_notify datagram protocol directly (no libsystemd binding needed). Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._socket: socket.socket | None = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def watchdog_interval(self) -> float | None:
        """Half of systemd's WatchdogSec, or None when the service has no watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        return int(usec) / 2e6 if usec and usec.isdigit() else None

    def notify(self, message: str) -> None:
        if self._socket is None:
            return
        target = self.address
        if target.startswith("@"):  # abstract namespace socket
            target = "\0" + target[1:]
        try:
            self._socket.sendto(message.encode(), target)
        except OSError as error:
            log.debug("sd_notify %s failed: %s", message, error)

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        """Before a SIGHUP restart in place; the new process says READY=1 again."""
        self.notify("RELOADING=1")

    def alive(self) -> None:
        self.notify("WATCHDOG=1")
