"""The page and the REST API: one small function per route, over the one `WebService` that `create_app` builds
and keeps in `app.state.web` (each route asks for it with `Depends`).

No part of a request ever becomes a filesystem path: images are named by their integer id in the index, and
uploads are decoded from memory. Each request makes one call into the search service, so it sees one snapshot
of the index (see `service.SearchService`), and an id that a re-index removed answers 404.

A new query parameter of a search is one more argument of its route, passed on to the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from .. import __version__
from ..images import PixelBudget
from .schemas import (CROSS_SITE, DECODE_ERRORS, ERRORS, IMAGE_ERRORS, CompareResponse, SearchResponse,
                      StatsResponse)
from .limits import DecodeSlots
from .service import MAX_K, SearchService, decode_upload, display_name
from .thumbnails import SIZES, ImageGone, ThumbnailCache

MAX_COMPARE = 50
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class WebService:
    """What the routes work with: the search service over the index, the thumbnail cache, the decode slots
    that every image decode takes turns on, and the limits the API publishes."""

    search: SearchService
    thumbnails: ThumbnailCache
    slots: DecodeSlots
    max_upload_bytes: int
    max_request_pixels: int
    page: bytes  # the page's HTML, read once
    session: Any = None  # `session.Session`: what the page may do, and its CSRF token
    actions: Any = None  # `actions.Actions`: trash and move, journalled
    dupes_job: Any = None  # `jobs.DupesJob`: the background duplicates scan
    acted: dict = field(default_factory=dict)  # journal -> ids the page acted on, to unmark on undo

    def pixel_budget(self) -> PixelBudget:
        """What one request may decode, all its uploads together."""
        return PixelBudget(self.max_request_pixels)

    def decode(self, upload: UploadFile, budget: PixelBudget) -> tuple[str, Any]:
        """(the name to show, the decoded image, reduced to what the model needs) of an upload."""
        name = display_name(upload.filename)
        upload.file.seek(0)
        data = upload.file.read()  # the limit middleware has already bounded the whole body
        return name, decode_upload(data, name, min_size=self.search.min_size, budget=budget, slots=self.slots)

    def stats(self) -> dict:
        facts = self.search.stats()
        facts.update(max_upload_bytes=self.max_upload_bytes, max_request_pixels=self.max_request_pixels,
                     max_k=MAX_K, max_compare=MAX_COMPARE, version=__version__)
        facts["updated_at"] = None if facts.get("updated_at") is None else str(facts["updated_at"])
        facts["root"] = None if facts.get("root") is None else str(facts["root"])
        facts["index_path"] = str(facts.get("index_path") or self.search.index_path)
        return facts


async def web_service(request: Request) -> WebService:
    # async: a dependency this cheap runs on the event loop, not in a worker thread of its own
    return request.app.state.web


Web = Annotated[WebService, Depends(web_service)]

page_router = APIRouter()
api_router = APIRouter()


def not_found(image_id: int) -> HTTPException:
    return HTTPException(404, detail=f"no image with id {image_id} in this index")


# -- the page --------------------------------------------------------------------------------------------
@page_router.get("/", include_in_schema=False)
def page(web: Web) -> Response:
    return Response(web.page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@page_router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


# -- the API ---------------------------------------------------------------------------------------------
@api_router.get("/api/stats", response_model=StatsResponse, responses=CROSS_SITE, summary="Index facts")
def stats(web: Web) -> dict:
    return web.stats()


@api_router.post(
    "/api/search", response_model=SearchResponse, responses=IMAGE_ERRORS, summary="Search with an uploaded image"
)
def search_upload(
    web: Web,
    image: UploadFile = File(..., description="The query image"),
    k: int = Form(5, ge=1, le=MAX_K, description="How many results"),
) -> SearchResponse:
    name, picture = web.decode(image, web.pixel_budget())
    return web.search.search_image(picture, name, k)


@api_router.get(
    "/api/search", response_model=SearchResponse, responses=ERRORS, summary="Search from an indexed image"
)
def search_indexed(
    web: Web,
    id: int = Query(..., description="Id of an indexed image (from a previous result)"),
    k: int = Query(5, ge=1, le=MAX_K),
    include_self: bool = Query(False, description="Keep the query image itself in the results"),
) -> SearchResponse:
    try:
        return web.search.search_id(id, k, include_self=include_self)
    except KeyError:
        raise not_found(id) from None


@api_router.post(
    "/api/compare",
    response_model=CompareResponse,
    responses=IMAGE_ERRORS,
    summary="Pairwise distances between two or more images (indexed ids first, then uploads)",
)
def compare(
    web: Web,
    ids: list[int] = Form([], description="Ids of indexed images"),
    images: list[UploadFile] = File([], description="Uploaded images"),
) -> dict:
    total = len(ids) + len(images)
    if total < 2:
        raise HTTPException(422, detail="compare needs at least two images (ids, uploads, or both)")
    if total > MAX_COMPARE:
        raise HTTPException(422, detail=f"compare takes at most {MAX_COMPARE} images, got {total}")
    for image_id in ids:
        if not web.search.has_id(image_id):  # before decoding any upload
            raise not_found(image_id)
    budget = web.pixel_budget()  # for all the uploads together
    uploads = [web.decode(upload, budget) for upload in images]
    items: list[tuple[Optional[str], Optional[int], Any]] = [(None, image_id, None) for image_id in ids]
    items += [(name, None, picture) for name, picture in uploads]
    try:
        return web.search.compare(items)
    except KeyError as exc:  # removed by a re-index since the check above
        raise not_found(exc.args[0]) from None


@api_router.get(
    "/api/images/{image_id}/thumbnail",
    responses={**ERRORS, **DECODE_ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}},
    response_class=Response,
    summary="A JPEG thumbnail of an indexed image",
)
def thumbnail(
    web: Web,
    request: Request,
    image_id: int,
    size: int = Query(256, ge=32, le=2048,
                      description=f"Longest side, rounded up to one of {', '.join(map(str, SIZES))}"),
) -> Response:
    try:
        path = web.search.path_of(image_id)
    except KeyError:
        raise not_found(image_id) from None
    try:
        # Cached by the file's path, size and mtime, never by id: an id that a re-index points at another
        # file gets that file's thumbnail (and another ETag).
        key, data = web.thumbnails.get(path, size)
    except ImageGone:
        raise HTTPException(404, detail=f"image {image_id} is no longer on disk: re-run `lookalike index`") from None
    etag = f'"{key[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # revalidate: ids change when a folder is re-indexed
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)
