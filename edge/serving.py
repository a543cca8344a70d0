"""The daemon's HTTP servers (metrics, live view) bounded for months on a network.

Each connection holds a thread and a file descriptor. A per-read timeout alone let a client
that sends a byte every few seconds ("slowloris") hold both for ever: 1,024 such connections
took every descriptor the process had (systemd's default limit), the accept loop spun a core,
and a camera that dropped could not reconnect ("Too many open files") until they left. So a
server takes at most ``MAX_CONNECTIONS`` at once and ``MAX_PER_CLIENT`` from one address (one
host on the network cannot take the slots a Prometheus server needs), more are closed as they
come, and each connection is cut ``CONNECTION_DEADLINE_S`` after it was accepted, whatever it
sends. Both servers answer one request per connection, in milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 16  # a browser opens 6 at a time; a scraper 1
CONNECTION_DEADLINE_S = 5.0
# A connection that sends nothing is closed after this long (each read waits at most this).
IDLE_TIMEOUT_S = 5.0
# Out of descriptors (other connections, cameras): accept fails at once while the listening
# socket stays readable; a pause keeps that from spinning a core.
EXHAUSTED_PAUSE_S = 0.1


def request_path(target: str) -> str | None:
    """The path of a request target without its query: the origin form (``/metrics?x``) or
    the absolute form a proxy sends (``http://host:9108/metrics``, which HTTP/1.1 servers must
    accept, RFC 9112 3.2.2). None for a target that is not one (``http://[::1/``): answered
    400, not with a traceback in the journal at every request."""
    try:
        return urlsplit(target).path if "://" in target else target.partition("?")[0]
    except ValueError:
        return None


def bound(server: socketserver.ThreadingMixIn, name: str) -> None:
    """Limit ``server`` (a threading socketserver) as the module says, and keep its errors to
    one log line; its methods are looked up per connection, so one already serving is bound
    from its next connection."""
    lock = threading.Lock()
    open_from: Counter[str] = Counter()
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

    def release(client: str) -> None:
        with lock:
            open_from[client] -= 1
            if open_from[client] <= 0:
                del open_from[client]

    def process_request(request: socket.socket, address: tuple) -> None:
        client = _client_of(address)
        with lock:
            full = open_from.total() >= MAX_CONNECTIONS or open_from[client] >= MAX_PER_CLIENT
            if not full:
                open_from[client] += 1
        if full:
            server.shutdown_request(request)  # closed unanswered
            return
        try:
            process(request, address)
        except BaseException:
            release(client)  # no thread was started to release it
            raise

    def process_request_thread(request: socket.socket, address: tuple) -> None:
        client = _client_of(address)
        deadline = threading.Timer(CONNECTION_DEADLINE_S, _cut, (request,))
        deadline.daemon = True
        try:
            deadline.start()
            run(request, address)
        finally:
            deadline.cancel()
            release(client)

    def handle_error(request: object, client_address: object) -> None:
        """A client that resets, goes silent or is cut is not an error of ours, and
        socketserver printed a 17-line traceback for each (a journal flood on demand)."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        log.warning("%s: a request from %s failed: %r", name, _client_of(client_address), error)

    server.get_request = get_request
    server.process_request = process_request
    server.process_request_thread = process_request_thread
    server.handle_error = handle_error


def _client_of(address: object) -> str:
    """The client's address without its port (one host, whatever ports it connects from)."""
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _cut(connection: socket.socket) -> None:
    """The handler's blocked read returns at once (end of stream) and its thread ends."""
    with contextlib.suppress(OSError):  # already closed
        connection.shutdown(socket.SHUT_RDWR)
