"""The daemon's HTTP servers (metrics, live view) bounded for months on a network.

Each connection holds a thread and a file descriptor. A per-read timeout alone let a client
that sends a byte every few seconds ("slowloris") hold both for ever: 1,024 such connections
took every descriptor the process had (systemd's default limit), the accept loop spun a core,
and a camera that dropped could not reconnect ("Too many open files") until they left. So a
server takes at most ``MAX_CONNECTIONS`` at once (more are closed as they come), and each
connection is cut ``CONNECTION_DEADLINE_S`` after it was accepted, whatever it sends. Both
servers answer one request per connection, in milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import threading
import time

MAX_CONNECTIONS = 64
CONNECTION_DEADLINE_S = 15.0
# A connection that sends nothing is closed after this long (each read waits at most this).
IDLE_TIMEOUT_S = 10.0
# Out of descriptors (other connections, cameras): accept fails at once while the listening
# socket stays readable; a pause keeps that from spinning a core.
EXHAUSTED_PAUSE_S = 0.1


def bound(server: socketserver.ThreadingMixIn) -> None:
    """Limit ``server`` (a threading socketserver) as the module says; its methods are looked
    up per connection, so one already serving is bound from its next connection."""
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    accept, process, run = server.get_request, server.process_request, server.process_request_thread

    def get_request() -> tuple[socket.socket, object]:
        try:
            connection, address = accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(EXHAUSTED_PAUSE_S)
            raise
        connection.settimeout(IDLE_TIMEOUT_S)
        return connection, address

    def process_request(request: socket.socket, address: object) -> None:
        if not slots.acquire(blocking=False):
            server.shutdown_request(request)  # full: closed unanswered
            return
        try:
            process(request, address)
        except BaseException:
            slots.release()  # no thread was started to release it
            raise

    def process_request_thread(request: socket.socket, address: object) -> None:
        deadline = threading.Timer(CONNECTION_DEADLINE_S, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            run(request, address)
        finally:
            deadline.cancel()
            slots.release()

    server.get_request = get_request
    server.process_request = process_request
    server.process_request_thread = process_request_thread


def _cut(connection: socket.socket) -> None:
    """The handler's blocked read returns at once (end of stream) and its thread ends."""
    with contextlib.suppress(OSError):  # already closed
        connection.shutdown(socket.SHUT_RDWR)
