"""An optional shared secret for a server that others can reach (`lookalike serve --token`).

A request passes with `Authorization: Bearer TOKEN`, or with the cookie that visiting `/?token=TOKEN` sets
(HttpOnly, SameSite=Strict, so other sites' pages cannot send it); the visit then redirects to `/` so the token
leaves the address bar. Every comparison takes constant time. Anything else gets 401.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from .limits import ASGIApp, Receive, Scope, Send, _header, send_error


def cookie_name(scope: Scope) -> str:
    """One cookie per port: browsers share cookies between the ports of a host."""
    server = scope.get("server") or ("", 0)
    return f"lookalike_token_{server[1] or 0}"


def _cookies(header: bytes | None) -> dict[str, str]:
    out = {}
    for part in (header or b"").decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(name, value.strip('"'))
    return out


class TokenMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self.app = app
        self.token = token.encode()

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode("latin-1", "replace"), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = cookie_name(scope)
        if scope.get("path") == "/":
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            if given is not None:
                if not self._matches(given[-1]):
                    await send_error(send, 401, "wrong token")
                    return
                cookie = f"{name}={self.token.decode('latin-1')}; Path=/; HttpOnly; SameSite=Strict"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode("latin-1")),
                                        (b"cache-control", b"no-store"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        authorization = (_header(scope, b"authorization") or b"").decode("latin-1")
        scheme, _, credentials = authorization.partition(" ")
        if (scheme.lower() == "bearer" and self._matches(credentials.strip())) or \
                self._matches(_cookies(_header(scope, b"cookie")).get(name)):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "this server needs its token: open /?token=TOKEN once in the browser, or send "
                                    "'Authorization: Bearer TOKEN'", headers=[(b"www-authenticate", b"Bearer")])
