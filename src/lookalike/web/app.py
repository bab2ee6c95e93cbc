"""The FastAPI app over one read-only index: `create_app` builds the one `WebService` the routes work with
(`routes.py`), the error answers, and the middleware that guards every request (Host names, token, body size
and time, cross-site requests).

The server writes to the index only through the page's actions (trash, move, undo: the cleanup engine, with
its journal and the index's write lock); thumbnails go to the user cache. It follows `lookalike index` runs on
the index without a restart (see `service.SearchService`).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import BadImageError, LookalikeError
from ..images import PixelBudgetExceeded
from ..paths import cache_dir
from .crosssite import CrossSiteMiddleware
from .limits import (DEFAULT_BODY_TIMEOUT, BodyTimeoutMiddleware, DecodeSlots, HostCheckMiddleware, ServerBusy,
                     UploadLimitMiddleware)
from .actions import Actions
from .jobs import DupesJob
from .library_routes import router as library_router
from .routes import STATIC_DIR, WebService, api_router, page_router
from .service import SearchService, UnsupportedImage
from .session import Session
from .thumbnails import ThumbnailCache

DEFAULT_MAX_UPLOAD_BYTES = 20_000_000  # 20 MB
DEFAULT_THUMBNAIL_CACHE_BYTES = 500_000_000  # on disk; trimmed to 80% whenever a write takes it over
# Pixels one request may decode in all (after JPEG draft scaling): one image at the per-image limit, with room.
DEFAULT_MAX_REQUEST_PIXELS = 150_000_000
DEFAULT_DECODE_SLOTS = 2  # image decodes at once, all requests together
DEFAULT_DECODE_WAIT = 10.0  # seconds a decode waits for a slot before its request gets 503


class _SecurityHeaders:
    """Tight defaults for a local page: nothing loads from elsewhere, nothing is sniffed or framed."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    ]

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    index_path: str | os.PathLike,
    *,
    device: str = "cpu",
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    thumbnail_cache_dir: str | os.PathLike | None = None,
    embedder: Any = None,
    thumbnail_cache_bytes: int = DEFAULT_THUMBNAIL_CACHE_BYTES,
    allowed_hosts: list[str] | None = None,
    check_interval: float = 1.0,
    token: str | None = None,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    decode_slots: int = DEFAULT_DECODE_SLOTS,
    decode_wait: float = DEFAULT_DECODE_WAIT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    expansion: Any = None,
    verifier: Any = None,
    move_to: str | os.PathLike | None = None,
    read_only: bool = False,
    allow_actions: bool = True,
) -> FastAPI:
    """Build the app over the index at `index_path`, loading the index and the model now (once).

    Raises `LookalikeError` when the index is missing or unreadable, so `lookalike serve` fails before binding.
    `embedder` lets a caller share an already loaded model (tests); by default the index's own backbone loads.
    `allowed_hosts`: Host header names to answer (`lookalike serve` on loopback passes the loopback names);
    None answers any. `check_interval`: seconds between looks at the index for changes made by `lookalike index`.
    `token`: when set, every request must carry it (see `lookalike.web.auth`).
    What one request may cost: `max_upload_bytes` of body, received within `body_timeout` seconds;
    `max_request_pixels` decoded pixels in all (413 beyond); and each decode waits at most `decode_wait` seconds
    for one of `decode_slots` (503 with Retry-After beyond), so memory stays bounded however many requests come.
    `expansion` (a `query.Expansion`) and `verifier` (a `verify.Verifier`) apply to every search; None: off.
    The page's actions (trash, move to `move_to`, undo) are refused with 405 when `read_only` and with 403
    unless `allow_actions` (`serve` turns them off on a public bind without a token).
    """
    service = SearchService(index_path, device=device, embedder=embedder, check_interval=check_interval,
                            expansion=expansion, verifier=verifier)
    slots = DecodeSlots(decode_slots, wait=decode_wait)
    thumbs = ThumbnailCache(Path(thumbnail_cache_dir) if thumbnail_cache_dir else cache_dir("thumbnails"),
                            max_disk_bytes=thumbnail_cache_bytes, decode_gate=slots.hold)
    try:
        thumbs.prune()
    except OSError:  # an unreadable cache only costs disk space, never the server
        pass
    try:
        actions = _actions(service, move_to)
    except BaseException:
        service.close()
        raise
    web = WebService(search=service, thumbnails=thumbs, slots=slots, max_upload_bytes=max_upload_bytes,
                     max_request_pixels=max_request_pixels, page=(STATIC_DIR / "index.html").read_bytes(),
                     session=Session(actions=allow_actions, read_only=read_only, move=actions.move_to is not None), actions=actions,
                     dupes_job=DupesJob())

    app = FastAPI(
        title="Lookalike",
        version=__version__,
        description="Search a folder of images by content: upload a picture, or pick an indexed one by id.",
        lifespan=_lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the schema itself stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.web = web
    # Its parts, for callers that hold the app (`lookalike serve` prints the index's facts).
    app.state.service, app.state.thumbnails, app.state.decode_slots = service, thumbs, slots
    for error, handler in _ERROR_HANDLERS.items():
        app.add_exception_handler(error, handler)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(api_router)
    app.include_router(library_router)

    # Added innermost first: the Host check runs first, then the token, then the body's time and size limits,
    # then the cross-site rule (inside the size limit, so that a refused upload's body is read and dropped).
    app.add_middleware(CrossSiteMiddleware)
    app.add_middleware(UploadLimitMiddleware, max_bytes=max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, seconds=body_timeout)
    if token:
        from .auth import TokenMiddleware

        app.add_middleware(TokenMiddleware, token=token)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(_SecurityHeaders)
    return app


def _actions(service: SearchService, move_to: str | os.PathLike | None) -> Actions:
    """The actions over the service's index; `move_to` checked now, so `serve` refuses a bad one at start."""
    index = service.index
    target = None
    if move_to is not None:
        from ..cleanup.guard import check_target

        target = check_target(move_to, Path(index.root), Path(index.path))
    return Actions(Path(index.path), Path(index.root), target)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.web.search.close()


# -- the answers to errors raised anywhere below a route ----------------------------------------------------
async def _unsupported(_req: Request, exc: UnsupportedImage) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=415)


async def _bad_image(_req: Request, exc: BadImageError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, PixelBudgetExceeded) else 422)


async def _busy(_req: Request, exc: ServerBusy) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})


async def _user_error(_req: Request, exc: LookalikeError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


_ERROR_HANDLERS: dict[type[Exception], Any] = {
    UnsupportedImage: _unsupported, BadImageError: _bad_image, ServerBusy: _busy, LookalikeError: _user_error,
}
