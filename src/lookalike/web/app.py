"""The FastAPI app: a static page plus a small REST API over one read-only index.

No part of a request ever becomes a filesystem path: images are named by their integer id in the index, and
uploads are decoded from memory. The server never writes to the index; thumbnails go to the user cache. It
follows `lookalike index` runs on the index without a restart (see `SearchService`): each request makes one
call into the service, so it sees one snapshot of the index, and an id that a re-index removed answers 404.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import BadImageError, LookalikeError
from ..images import PixelBudget, PixelBudgetExceeded
from ..paths import cache_dir
from .limits import (DEFAULT_BODY_TIMEOUT, BodyTimeoutMiddleware, DecodeSlots, HostCheckMiddleware, ServerBusy,
                     UploadLimitMiddleware)
from .service import MAX_K, SearchService, UnsupportedImage, decode_upload, display_name
from .thumbnails import SIZES, ImageGone, ThumbnailCache

DEFAULT_MAX_UPLOAD_BYTES = 20_000_000  # 20 MB
MAX_COMPARE = 50
DEFAULT_THUMBNAIL_CACHE_BYTES = 500_000_000  # on disk; trimmed to 80% whenever a write takes it over
# Pixels one request may decode in all (after JPEG draft scaling): one image at the per-image limit, with room.
DEFAULT_MAX_REQUEST_PIXELS = 150_000_000
DEFAULT_DECODE_SLOTS = 2  # image decodes at once, all requests together
DEFAULT_DECODE_WAIT = 10.0  # seconds a decode waits for a slot before its request gets 503
STATIC_DIR = Path(__file__).parent / "static"


# -- response shapes (the CLI's --json fields, plus ids) ---------------------------------------------------
class SearchResult(BaseModel):
    rank: int
    id: int
    path: str
    distance: float
    similarity: float


class SearchResponse(BaseModel):
    query: str
    query_id: Optional[int] = None
    results: list[SearchResult]


class CompareResponse(BaseModel):
    paths: list[str]
    ids: list[Optional[int]]
    distance: list[list[float]]
    similarity: list[list[float]]


class DupesResponse(BaseModel):
    threshold: float
    groups: list[list[str]]
    group_ids: list[list[int]]


class StatsResponse(BaseModel):
    count: int
    model: str
    dim: int
    pooling: str
    updated_at: Optional[str] = None
    root: Optional[str] = None
    index_path: str
    dupe_threshold: float
    max_upload_bytes: int
    max_request_pixels: int
    max_k: int
    max_compare: int
    version: str
    ann: Dict[str, Any] = Field(default_factory=dict, description="The search backend: its kind (`backend`: exact, hnsw, ivf or ivfpq), what the index asked for (`requested`), and its parameters.")
    notes: List[str] = Field(default_factory=list, description="What opening the index fell back on, e.g. an exact search while its ANN file is missing.")


class ErrorResponse(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No image with this id, or its file is gone"},
    413: {"model": ErrorResponse, "description": "Upload over the size limit"},
    415: {"model": ErrorResponse, "description": "The upload is not an image"},
}
_DECODE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Too many images being decoded: retry after Retry-After seconds"},
}
_IMAGE_ERRORS = {**_ERRORS, **_DECODE_ERRORS, 413: {"model": ErrorResponse, "description":
                  "Upload over the size limit, or its images over the request's pixel budget"},
                 422: {"description": "Undecodable image or invalid parameters"}}


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
    """
    service = SearchService(index_path, device=device, embedder=embedder, check_interval=check_interval)
    slots = DecodeSlots(decode_slots, wait=decode_wait)
    thumbs = ThumbnailCache(Path(thumbnail_cache_dir) if thumbnail_cache_dir else cache_dir("thumbnails"),
                            max_disk_bytes=thumbnail_cache_bytes, decode_gate=slots.hold)
    try:
        thumbs.prune()
    except OSError:  # an unreadable cache only costs disk space, never the server
        pass
    index_html = (STATIC_DIR / "index.html").read_bytes()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="Lookalike",
        version=__version__,
        description="Search a folder of images by content: upload a picture, or pick an indexed one by id.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the schema itself stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.thumbnails = thumbs
    app.state.decode_slots = slots
    app.state.max_upload_bytes = max_upload_bytes

    @app.exception_handler(UnsupportedImage)
    async def _unsupported(_req: Request, exc: UnsupportedImage) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=415)

    @app.exception_handler(BadImageError)
    async def _bad_image(_req: Request, exc: BadImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, PixelBudgetExceeded) else 422)

    @app.exception_handler(ServerBusy)
    async def _busy(_req: Request, exc: ServerBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(LookalikeError)
    async def _user_error(_req: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    def not_found(image_id: int) -> HTTPException:
        return HTTPException(404, detail=f"no image with id {image_id} in this index")

    def read_upload(upload: UploadFile) -> bytes:
        # The limit middleware has already bounded the whole body, so this read is bounded too.
        upload.file.seek(0)
        return upload.file.read()

    def decode(upload: UploadFile, budget: PixelBudget):
        name = display_name(upload.filename)
        return name, decode_upload(read_upload(upload), name, min_size=service.min_size, budget=budget, slots=slots)

    # -- the page --------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -- the API ---------------------------------------------------------------------------------------
    @app.get("/api/stats", response_model=StatsResponse, summary="Index facts")
    def stats() -> dict:
        facts = service.stats()
        facts.update(
            max_upload_bytes=max_upload_bytes, max_request_pixels=max_request_pixels, max_k=MAX_K,
            max_compare=MAX_COMPARE, version=__version__
        )
        facts["updated_at"] = None if facts.get("updated_at") is None else str(facts["updated_at"])
        facts["root"] = None if facts.get("root") is None else str(facts["root"])
        facts["index_path"] = str(facts.get("index_path") or service.index_path)
        return facts

    @app.post(
        "/api/search", response_model=SearchResponse, responses=_IMAGE_ERRORS, summary="Search with an uploaded image"
    )
    def search_upload(
        image: UploadFile = File(..., description="The query image"),
        k: int = Form(5, ge=1, le=MAX_K, description="How many results"),
    ) -> dict:
        name, picture = decode(image, PixelBudget(max_request_pixels))
        return service.search_image(picture, name, k)

    @app.get(
        "/api/search", response_model=SearchResponse, responses=_ERRORS, summary="Search from an indexed image"
    )
    def search_indexed(
        id: int = Query(..., description="Id of an indexed image (from a previous result)"),
        k: int = Query(5, ge=1, le=MAX_K),
        include_self: bool = Query(False, description="Keep the query image itself in the results"),
    ) -> dict:
        try:
            return service.search_id(id, k, include_self=include_self)
        except KeyError:
            raise not_found(id) from None

    @app.post(
        "/api/compare",
        response_model=CompareResponse,
        responses=_IMAGE_ERRORS,
        summary="Pairwise distances between two or more images (indexed ids first, then uploads)",
    )
    def compare(
        ids: list[int] = Form([], description="Ids of indexed images"),
        images: list[UploadFile] = File([], description="Uploaded images"),
    ) -> dict:
        total = len(ids) + len(images)
        if total < 2:
            raise HTTPException(422, detail="compare needs at least two images (ids, uploads, or both)")
        if total > MAX_COMPARE:
            raise HTTPException(422, detail=f"compare takes at most {MAX_COMPARE} images, got {total}")
        for image_id in ids:
            if not service.has_id(image_id):  # before decoding any upload
                raise not_found(image_id)
        items: list[tuple[str | None, int | None, Any]] = [(None, image_id, None) for image_id in ids]
        budget = PixelBudget(max_request_pixels)  # for all the uploads together
        for upload in images:
            name, picture = decode(upload, budget)  # reduced to what the model needs as soon as decoded
            items.append((name, None, picture))
        try:
            return service.compare(items)
        except KeyError as exc:  # removed by a re-index since the check above
            raise not_found(exc.args[0]) from None

    @app.get("/api/dupes", response_model=DupesResponse, summary="Groups of near-duplicate images")
    def dupes(
        threshold: Optional[float] = Query(
            None, ge=0.0, le=2.0, description="Largest distance inside a group (default: the CLI's)"
        ),
        k: int = Query(10, ge=1, le=50, description="Neighbours per image in the kNN graph"),
    ) -> dict:
        return service.dupes(threshold, k)

    @app.get(
        "/api/images/{image_id}/thumbnail",
        responses={**_ERRORS, **_DECODE_ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}},
        response_class=Response,
        summary="A JPEG thumbnail of an indexed image",
    )
    def thumbnail(
        request: Request,
        image_id: int,
        size: int = Query(256, ge=32, le=1024,
                          description=f"Longest side, rounded up to one of {', '.join(map(str, SIZES))}"),
    ) -> Response:
        try:
            path = service.path_of(image_id)
        except KeyError:
            raise not_found(image_id) from None
        try:
            # Cached by the file's path, size and mtime, never by id: an id that a re-index points at another
            # file gets that file's thumbnail (and another ETag).
            key, data = thumbs.get(path, size)
        except ImageGone:
            raise HTTPException(
                404, detail=f"image {image_id} is no longer on disk: re-run `lookalike index`"
            ) from None
        etag = f'"{key[:32]}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}  # revalidate: ids change when a folder is re-indexed
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    # Added innermost first: the Host check runs first, then the token, then the body's time and size limits.
    app.add_middleware(UploadLimitMiddleware, max_bytes=max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, seconds=body_timeout)
    if token:
        from .auth import TokenMiddleware

        app.add_middleware(TokenMiddleware, token=token)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(_SecurityHeaders)
    return app
