"""The shapes of the web API's answers, as its published schema (/openapi.json) shows them. A search answer is
`search.results.SearchResponse`, the one shape the CLI's `search --json` prints too."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, Field

from ..search.retrieve.results import SearchResponse, SearchResult

__all__ = ["SearchResult", "SearchResponse", "CompareResponse", "DupesJobResponse", "StatsResponse", "ErrorResponse",
           "CROSS_SITE", "ERRORS", "DECODE_ERRORS", "IMAGE_ERRORS"]


class CompareResponse(BaseModel):
    paths: list[str]
    ids: list[Optional[int]]
    distance: list[list[float]]
    similarity: list[list[float]]


class DupeImageResponse(BaseModel):
    id: Optional[int] = None
    path: str
    distance: Optional[float] = Field(None, description="To the keeper (0 for byte-identical files)")
    inliers: Optional[int] = Field(None, description="Verified matching points with the keeper (None: unverified)")
    width: Optional[int] = None
    height: Optional[int] = None
    size: Optional[int] = None
    date: Optional[str] = Field(None, description="Taken (EXIF), else the file's mtime, ISO 8601")
    action: Optional[str] = Field(None, description="What the page did to it: trash, move, or None")


class DupeGroupResponse(BaseModel):
    keeper: str
    keeper_id: Optional[int] = None
    keeper_image: Optional[DupeImageResponse] = None
    kind: str = Field(..., description="exact (byte-identical files) or copy")
    why: str = Field(..., description="Why this keeper")
    members: list[DupeImageResponse] = Field(..., description="The images other than the keeper")


class DupesJobResponse(BaseModel):
    state: str = Field(..., description="idle, running, done or failed")
    schema_: int = Field(1, alias="schema")
    stage: Optional[str] = None
    done: Optional[int] = None
    total: Optional[int] = None
    verify: Optional[int] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    error: Optional[str] = None
    groups: list[DupeGroupResponse] = Field(default_factory=list, description="The duplicates answer model")
    journal: Optional[str] = Field(None, description="The journal of the page's last action on these groups")

    model_config = {"populate_by_name": True}


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


# The error answers each kind of route documents.
CROSS_SITE: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "Sent by a browser from another site (Sec-Fetch-Site or Origin)"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **CROSS_SITE,
    404: {"model": ErrorResponse, "description": "No image with this id, or its file is gone"},
    413: {"model": ErrorResponse, "description": "Upload over the size limit"},
    415: {"model": ErrorResponse, "description": "The upload is not an image"},
}
DECODE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Too many images being decoded: retry after Retry-After seconds"},
}
IMAGE_ERRORS = {**ERRORS, **DECODE_ERRORS, 413: {"model": ErrorResponse, "description":
                "Upload over the size limit, or its images over the request's pixel budget"},
                422: {"description": "Undecodable image or invalid parameters"}}
