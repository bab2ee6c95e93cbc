"""One rule for the whole API: a request that a browser says comes from another site gets 403.

Any web page the user visits can make the browser send requests to a server on loopback: a GET through
`<img src>`, a multipart POST through a form, neither with a preflight. The browser marks them: it sends
`Sec-Fetch-Site` (anything but `same-origin`, or `none` for what the user typed) and, on POSTs and scripted
requests, an `Origin` naming the page's site. The page of this server sends `same-origin` and its own Origin;
clients that are not browsers (curl, scripts) send neither, and pass. The page itself (`/`) stays open to links
from anywhere: the rule covers the API under `/api/`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .hosts import as_host
from .limits import ASGIApp, Receive, Scope, Send, send_error

API_PREFIX = "/api/"
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
REFUSAL = "cross-site request refused: the API answers only this server's own page and clients that are not browsers"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _host_port(netloc: str) -> tuple[str, int | None] | None:
    """(host as in a Host header, port or None) of `host[:port]`; None when it does not parse."""
    try:
        parts = urlsplit("//" + netloc)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return as_host(parts.hostname), port


def same_origin(origin: str, host_header: str) -> bool:
    """Whether the `Origin` header names the server that the `Host` header names. A Host without a port matches
    the default port of the Origin's scheme (a server behind a proxy that ends TLS sees `http` itself)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.username:
        return False  # "null" (a sandboxed or local page), or not an origin at all
    theirs, ours = _host_port(parts.netloc), _host_port(host_header.strip())
    if theirs is None or ours is None or theirs[0] != ours[0]:
        return False
    default = _DEFAULT_PORTS[parts.scheme]
    return (theirs[1] or default) == (ours[1] or default)


class CrossSiteMiddleware:
    """403 for an API request with `Sec-Fetch-Site` other than same-origin or none, or with an `Origin` that is
    not this server's own (`same_origin` against the request's Host)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(API_PREFIX) and self._foreign(scope):
            await send_error(send, 403, REFUSAL)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _foreign(scope: Scope) -> bool:
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site.decode("latin-1").strip().lower() not in ALLOWED_FETCH_SITES:
            return True
        origin = _header(scope, b"origin")
        if origin is None:
            return False
        host = (_header(scope, b"host") or b"").decode("latin-1")
        return not same_origin(origin.decode("latin-1"), host)
