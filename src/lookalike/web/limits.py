"""Request guards as plain ASGI middleware (so they work with any FastAPI/Starlette version), and the bound on
decodes running at once.

`UploadLimitMiddleware` refuses request bodies over a size limit before they are read whole: a declared
Content-Length over the limit is answered 413 before the body is handed on; a body without one (chunked) is
counted while it streams and cut off with 413 as soon as the count passes the limit. Before answering, the rest of
the body is read and dropped, up to a bound (a lingering close): a server that closes a connection with unread
data makes the kernel reset it, and a client that sends its whole body before reading (Python's urllib) would see
that reset instead of the 413. Any other answer given before the body has all arrived lingers the same way.

`BodyTimeoutMiddleware` answers 408 to a request whose body has not arrived whole within a time limit: uvicorn
bounds idle connections and (with `lookalike.web.server`) request heads, but not bodies, so slow uploads could
otherwise hold connections, and file descriptors, for ever.

`HostCheckMiddleware` answers 400 to a Host header outside an allowed list: a server is otherwise reachable from
any web page through DNS rebinding (evil.example resolving to 127.0.0.1).

`DecodeSlots` bounds the image decodes running at once across requests; one that finds no slot within a bounded
wait gets `ServerBusy` (a 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_BODY_TIMEOUT = 60.0  # seconds for a whole request body: 20 MB at 3 Mbit/s
# Most of a refused body read and dropped before the answer, beyond what was read already.
LINGER_BYTES = 64_000_000


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit; the middleware turns it into a 413."""


class BodyTimeout(Exception):
    """Raised from `receive` when the body has not arrived in time; the middleware turns it into a 408."""


class ServerBusy(Exception):
    """No decode slot came free in time: answered 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:g} MB"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


async def send_error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = (),
                     more: bool = False) -> None:
    """A whole JSON error answer; `connection: close` because the rest of the request may be unread.

    `more=True` leaves the response open (its body is complete, by its Content-Length) for the caller to finish
    with an empty last message: uvicorn closes the connection as soon as a response completes."""
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *headers],
    })
    await send({"type": "http.response.body", "body": body, "more_body": more})


class _Replacing:
    """Runs the inner app; once `fail()` is called (from inside `receive`) before the inner app has started its
    response, whatever the inner app answers is replaced by `answer()`. The inner app does not always see the
    exception raised from `receive`: FastAPI turns a failed body read into a 400 of its own."""

    def __init__(self, send: Send, answer: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self._answer = answer
        self.failed = False
        self.replacing = False
        self.started = False

    def fail(self) -> None:
        self.failed = True
        self.replacing = not self.started

    async def send(self, message: Message) -> None:
        if self.replacing:
            if message["type"] == "http.response.start" and not self.started:
                self.started = True
                await self._answer()
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, kind: type) -> None:
        try:
            await app(scope, receive, self.send)
        except Exception as exc:  # `kind`, maybe wrapped in an ExceptionGroup by a task group
            if not self.failed or not _contains(exc, kind):
                raise
            if self.replacing and not self.started:  # else the answer went out already
                self.started = True
                await self._answer()


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, linger_bytes: int = LINGER_BYTES) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.linger_bytes = int(linger_bytes)

    def _message(self) -> str:
        return f"upload too large: the limit is {_megabytes(self.max_bytes)} ({self.max_bytes:,} bytes)"

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what is left of the body, at most `linger_bytes` of it (and within the body time limit
        when `BodyTimeoutMiddleware` wraps `receive`)."""
        budget = self.linger_bytes
        while budget >= 0:
            try:
                message = await receive()
            except Exception:  # timed out or gone: close without reading more
                return
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, receive: Receive, send: Send, drain: bool) -> None:
        await send_error(send, 413, self._message(), more=True)
        if drain:
            await self._drain(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        try:
            declared = int(_header(scope, b"content-length") or b"")
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            # Nothing of the body reaches the app. A client waiting for "100 Continue" has sent none of it (and
            # reading would ask for it); any other gets it read and dropped when that is cheap enough.
            expects = (_header(scope, b"expect") or b"").lower() == b"100-continue"
            await self._refuse(receive, send, drain=not expects and declared <= self.linger_bytes)
            return

        received = 0
        body_done = not declared and _header(scope, b"transfer-encoding") is None  # no body at all

        async def answer() -> None:
            await self._refuse(receive, send, drain=not body_done)

        async def lingering_send(message: Message) -> None:
            # Any answer given before the body has all arrived (a parse error, say) lingers the same way.
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not body_done:
                await send({**message, "more_body": True})
                await self._drain(receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        guard = _Replacing(lingering_send, answer)

        async def counting_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    guard.fail()
                    raise BodyTooLarge()
            else:
                body_done = True  # the client is gone
            return message

        await guard.run(self.app, scope, counting_receive, BodyTooLarge)


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, seconds: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.seconds = float(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = False

        async def answer() -> None:
            await send_error(send, 408, f"the request body did not arrive within {self.seconds:g} seconds")

        guard = _Replacing(send, answer)

        async def timed_receive() -> Message:
            nonlocal body_done
            if guard.failed:
                raise BodyTimeout()
            if body_done:  # after the body, waiting for a disconnect is the app's own business
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                guard.fail()
                raise BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await guard.run(self.app, scope, timed_receive, BodyTimeout)


def _contains(exc: BaseException, kind: type) -> bool:
    if isinstance(exc, kind):
        return True
    inner = getattr(exc, "exceptions", None)
    if inner:
        return any(_contains(e, kind) for e in inner)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and _contains(cause, kind)


def host_name(header: str) -> str:
    """`example.org:8000` -> `example.org`, `[::1]:8000` -> `[::1]`, lower case; IPv6 in its short form."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return header
        inner = header[1:end].split("%", 1)[0]
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return header[: end + 1]
    return header.split(":", 1)[0].rstrip(".")


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = host_name((_header(scope, b"host") or b"").decode("latin-1"))
            if host not in self.allowed:
                await send_error(send, 400, "invalid Host header")
                return
        await self.app(scope, receive, send)


class DecodeSlots:
    """At most `slots` image decodes at once across all requests; a decode waits at most `wait` seconds for a
    slot, then gets `ServerBusy`. Bounds the memory that concurrent requests can make the server decode into."""

    def __init__(self, slots: int = 2, wait: float = 10.0, retry_after: int = 5) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = int(slots)
        self.wait = float(wait)
        self.retry_after = int(retry_after)
        self._semaphore = threading.BoundedSemaphore(self.slots)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.wait):
            raise ServerBusy(
                f"the server is busy decoding other images ({self.slots} at once): try again in "
                f"{self.retry_after} seconds", self.retry_after)
        try:
            yield
        finally:
            self._semaphore.release()
