"""Request guards as plain ASGI middleware (so they work with any FastAPI/Starlette version).

`UploadLimitMiddleware` refuses request bodies over a size limit before they are read whole: a declared
Content-Length over the limit is answered 413 before the body is touched; a body without one (chunked) is counted
while it streams and cut off with 413 as soon as the count passes the limit.

`HostCheckMiddleware` answers 400 to a Host header outside an allowed list: a server on 127.0.0.1 is otherwise
reachable from any web page through DNS rebinding (evil.example resolving to 127.0.0.1).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit; the middleware turns it into a 413."""


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:g} MB"


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return f"upload too large: the limit is {_megabytes(self.max_bytes)} ({self.max_bytes:,} bytes)"

    async def _send_413(self, send: Send) -> None:
        body = json.dumps({"detail": self._message()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),  # the unread rest of the body must not be parsed as a request
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            await self._send_413(send)  # nothing of the body has been read
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # Whatever the inner app made of the interrupted body (a 400 from the form parser, say),
                # the client is told the real reason.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._send_413(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as exc:  # BodyTooLarge, maybe wrapped in an ExceptionGroup by a task group
            if not exceeded or not _contains(exc, BodyTooLarge):
                raise
            if not started:  # else the 413 went out already, in place of the inner app's own answer
                started = True
                await self._send_413(send)


def _contains(exc: BaseException, kind: type) -> bool:
    if isinstance(exc, kind):
        return True
    inner = getattr(exc, "exceptions", None)
    if inner:
        return any(_contains(e, kind) for e in inner)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and _contains(cause, kind)


def host_name(header: str) -> str:
    """`example.org:8000` -> `example.org`, `[::1]:8000` -> `[::1]`, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.split(":", 1)[0]


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = host_name(value.decode("latin-1"))
            if host not in self.allowed:
                body = json.dumps({"detail": "invalid Host header"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
