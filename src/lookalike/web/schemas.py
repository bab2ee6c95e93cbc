"""The shapes of the web API's answers, as its published schema (/openapi.json) shows them. A search answer is
`search.results.SearchResponse`, the one shape the CLI's `search --json` prints too."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, Field

from ..search.retrieve.results import SearchResponse, SearchResult

__all__ = ["SearchResult", "SearchResponse", "CompareResponse", "DupesResponse", "StatsResponse", "ErrorResponse",
           "CROSS_SITE", "ERRORS", "DECODE_ERRORS", "DUPES_ERRORS", "IMAGE_ERRORS"]


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
DUPES_ERRORS: dict[int | str, dict[str, Any]] = {
    **CROSS_SITE,
    503: {"model": ErrorResponse,
          "description": "Another request is finding duplicates: retry after Retry-After seconds"},
}
IMAGE_ERRORS = {**ERRORS, **DECODE_ERRORS, 413: {"model": ErrorResponse, "description":
                "Upload over the size limit, or its images over the request's pixel budget"},
                422: {"description": "Undecodable image or invalid parameters"}}
