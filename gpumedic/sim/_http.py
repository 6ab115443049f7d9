"""Loopback HTTP(S) plumbing shared by the Kubernetes and Jira emulators."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass
class Fault:
    """A fault armed on requests whose path matches ``pattern`` (``fnmatch`` glob).

    ``mode``: ``"status"`` answers ``status`` (5xx) with a Status body; ``"reset"`` drops the
    connection with a TCP RST before any response; ``"delay"`` sleeps ``delay_s`` and then
    serves the request normally. ``remaining`` counts down to 0 (``None``: forever).
    """

    pattern: str
    mode: Literal["status", "reset", "delay"] = "status"
    remaining: int | None = 1
    status: int = 503
    method: str | None = None
    delay_s: float = 0.0
    retry_after: int | None = None
    hits: int = 0

    def _take(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if not fnmatch.fnmatchcase(path, self.pattern):
            return False
        if self.remaining is not None:
            self.remaining -= 1
        self.hits += 1
        return True


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        app: Any,
        ssl_context: ssl.SSLContext | None,
        port: int = 0,
        name: str = "emulator",
    ) -> None:
        self.name = name
        self.app = app
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # http.server writes headers and body separately; without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every response.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = request
        if self.ssl_context is not None:
            # The TLS handshake runs here, in the connection's own thread, so a client that
            # never completes it cannot stall the accept loop.
            try:
                request.settimeout(10)
                sock = self.ssl_context.wrap_socket(request, server_side=True)
                sock.settimeout(None)
            except (OSError, ValueError):
                _close_quietly(request)
                return
        with self._connections_lock:
            self._connections.add(sock)
        handler: Any = self.RequestHandlerClass
        try:
            handler(sock, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(sock)
            _close_quietly(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("%s: connection from %s ended with an error", self.name, client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _close_quietly(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class EmulatorHandler(BaseHTTPRequestHandler):
    """Dispatches every HTTP method to the emulator's `_handle(handler, method)`."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    sys_version = ""
    emulator_name = "emulator"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(self.emulator_name + ": " + format, *args)

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def _dispatch(self) -> None:
        self.server.app._handle(self, self.command)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch
