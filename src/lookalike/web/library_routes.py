"""The routes of the photo library: browse (`/api/images`, `/api/folders`), one image's facts and original, the
duplicates scan job, actions and their undo, and the session the page reads first.

As everywhere in the API, images are named by id and no part of a request becomes a path. Every GET is free of
side effects; each POST that changes state passes `Session.check` (read-only server, actions allowed, CSRF).
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from ..errors import LookalikeError
from ..search.store.listing import MAX_LIMIT
from .actions import RETRY_AFTER, ActionBusy, ActionRefused
from .routes import Web, not_found
from .schemas import CROSS_SITE, ERRORS, DupesJobResponse, ErrorResponse

router = APIRouter()

# What a browser shows in a tab by itself; anything else (HEIC, TIFF, RAW...) comes as a download.
_SHOWN = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def sniff(head: bytes) -> Optional[str]:
    """The content type of an image a browser can show, from its first bytes; None for anything else."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    for magic, kind in _SHOWN:
        if head.startswith(magic):
            return kind
    return None


class ActionRequest(BaseModel):
    action: str = Field(..., description="trash or move (to the server's --move-to folder)")
    ids: list[int] = Field(default_factory=list, description="Images to act on, each checked on its own")
    groups: list["ActionGroup"] = Field(default_factory=list,
                                        description="Duplicate groups: each keeper is checked before its copies")


class ActionGroup(BaseModel):
    keeper: int
    ids: list[int]


ActionRequest.model_rebuild()


class UndoRequest(BaseModel):
    journal: str = Field(..., description="The journal's name, as an action answered it")


class ScanRequest(BaseModel):
    verify: int = Field(5, ge=0, le=50, description="Neighbours verified per image from the files (0: off)")


def _busy(exc: ActionBusy) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": str(RETRY_AFTER)})


@router.get("/api/session", responses=CROSS_SITE, summary="The page's CSRF token and what it may do")
def session(web: Web) -> dict:
    return web.session.answer()


@router.get("/api/images", responses=CROSS_SITE, summary="A page of the indexed images (keyset paging by cursor)")
def images(
    web: Web,
    offset: int = Query(0, ge=0, le=1 << 40),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    folder: Optional[str] = Query(None, max_length=200, description="Only images under this folder"),
    q: Optional[str] = Query(None, max_length=200, description="Only paths containing this text"),
    sort: str = Query("folder", description="folder, name or date (taken, else mtime); '-' first reverses"),
    cursor: Optional[str] = Query(None, max_length=2000, description="`next` of the previous page"),
) -> dict:
    return web.search.view().library().images(offset=offset, limit=limit, folder=folder, q=q, sort=sort,
                                              cursor=cursor)


@router.get("/api/folders", responses=CROSS_SITE, summary="The subfolders of a folder of the collection")
def folders(web: Web, folder: Optional[str] = Query(None, max_length=200)) -> dict:
    return web.search.view().library().folders(folder)


@router.get("/api/images/{image_id}", responses=ERRORS, summary="One image's facts")
def image(web: Web, image_id: int) -> dict:
    facts = web.search.view().library().image(image_id)
    if facts is None:
        raise not_found(image_id)
    return facts


@router.get("/api/images/{image_id}/original", responses=ERRORS, response_class=FileResponse,
            summary="The indexed file itself")
def original(web: Web, image_id: int) -> FileResponse:
    try:
        path = web.search.path_of(image_id)
        with open(path, "rb") as fh:
            head = fh.read(16)
    except KeyError:
        raise not_found(image_id) from None
    except OSError:
        raise HTTPException(404, detail=f"image {image_id} is no longer on disk: re-run `lookalike index`") from None
    kind = sniff(head)
    if kind is None:
        return FileResponse(path, media_type="application/octet-stream", filename=path.name,
                            content_disposition_type="attachment")
    return FileResponse(path, media_type=kind, filename=path.name, content_disposition_type="inline",
                        headers={"Cache-Control": "no-cache"})


@router.get("/api/dupes", response_model=DupesJobResponse, responses=CROSS_SITE,
            summary="The duplicates scan: its state, progress and, once done, the groups (never starts one)")
def dupes(web: Web) -> dict:
    return web.dupes_job.state()


@router.post("/api/dupes/scan", status_code=202, response_model=DupesJobResponse,
             responses={**CROSS_SITE, 409: {"model": ErrorResponse, "description": "A scan is already running"}},
             summary="Start a duplicates scan in the background (one at a time)")
def scan_start(web: Web, request: Request, body: ScanRequest | None = None) -> dict:
    web.session.check_csrf(request)
    verify = 5 if body is None else body.verify
    if not web.dupes_job.start(web.search.view(), verify):
        raise HTTPException(409, detail="a duplicates scan is already running: follow it with GET /api/dupes")
    return web.dupes_job.state()


@router.post("/api/actions", responses={**CROSS_SITE, 405: {"description": "Read-only server"},
                                        409: {"description": "The index is being written: retry"}},
             summary="Trash or move images (journalled: POST /api/undo reverses it)")
def actions(web: Web, request: Request, body: ActionRequest):
    web.session.check(request)
    groups = [(None, [i]) for i in body.ids] + [(g.keeper, g.ids) for g in body.groups]
    view = web.search.view()
    try:
        answer = web.actions.run(body.action, groups, view.path_of)
    except ActionBusy as exc:
        return _busy(exc)
    except ActionRefused as exc:
        raise HTTPException(422, detail=str(exc)) from None
    web.search.refresh()
    web.dupes_job.mark(answer["done"], body.action, answer["journal"])
    if answer["journal"]:
        web.acted[answer["journal"]] = list(answer["done"])
    return answer


@router.post("/api/undo", responses={**CROSS_SITE, 405: {"description": "Read-only server"},
                                     409: {"description": "The index is being written: retry"}},
             summary="Undo an action by its journal")
def undo(web: Web, request: Request, body: UndoRequest):
    web.session.check(request)
    try:
        answer = web.actions.undo(body.journal)
    except ActionBusy as exc:
        return _busy(exc)
    except LookalikeError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    web.search.refresh()
    web.dupes_job.mark(web.acted.pop(body.journal, []), None, None)
    return answer
