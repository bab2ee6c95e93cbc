"""Run the app under uvicorn with bounds on what slow or numerous clients can hold.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and answers 503 past `limit_concurrency`
connections or requests, but waits for ever for a request head that never ends. `HeadTimeoutProtocol` closes
(with a 408) a connection whose request line and headers have not all arrived within `HEAD_TIMEOUT` seconds;
bodies are bounded by `BodyTimeoutMiddleware` in the app.
"""

from __future__ import annotations

import socket
from typing import Any

HEAD_TIMEOUT = 10.0  # seconds for a request line and its headers
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle connection stays open between requests
DEFAULT_LIMIT_CONCURRENCY = 64  # connections or requests at once; beyond: 503
MAX_HEAD_BYTES = 64 * 1024  # request line and headers


def head_timeout_protocol(head_timeout: float = HEAD_TIMEOUT) -> type:
    """uvicorn's h11 protocol with a timer on each request head."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: Any = None

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            # IDLE on the client's side: its next request head has not been read whole (h11 leaves IDLE only
            # once it has), so nothing of this request reached the app.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()  # the next request's head, on a kept-alive connection

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return HeadTimeoutProtocol


def server_config(app: Any, host: str, port: int, *, limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY,
                  head_timeout: float = HEAD_TIMEOUT, keep_alive_timeout: int = KEEP_ALIVE_TIMEOUT,
                  log_level: str = "warning") -> Any:
    """The `uvicorn.Config` that `lookalike serve` runs (tests run the same one)."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False,
        http=head_timeout_protocol(head_timeout),
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=keep_alive_timeout,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        backlog=_backlog(limit_concurrency),
        timeout_graceful_shutdown=5,
    )


def _backlog(limit_concurrency: int) -> int:
    return max(128, 2 * limit_concurrency)


def listen(host: str, port: int, limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY) -> list[socket.socket]:
    """Bind and listen on every address `host` names, as uvicorn would, before the model loads: a busy port
    fails at once, and the port printed is the port served (port 0: one free port the system picks, the same
    for every address). Clients that connect while the model loads wait in the backlog."""
    from ..errors import LookalikeError

    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(_backlog(limit_concurrency))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def bound_port(sockets: list[socket.socket]) -> int:
    """The port `listen` bound."""
    return sockets[0].getsockname()[1]


def return_big_frees_to_the_system() -> bool:
    """Make glibc serve allocations of 4 MiB and more with their own mappings, given back on free.

    By default glibc raises that threshold after the first big free, so the 16 MB blocks of a decoded image
    then come from per-thread arenas that keep them: every request thread that once decoded a big canvas would
    hold its memory for good, and the server's size would follow the number of threads rather than the decodes
    running at once. Returns False where this is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 4 * 1024 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def run(app: Any, host: str, sockets: list[socket.socket], **kwargs: Any) -> None:
    """Serve `app` on the sockets `listen` opened."""
    import uvicorn

    return_big_frees_to_the_system()
    uvicorn.Server(server_config(app, host, bound_port(sockets), **kwargs)).run(sockets=sockets)
