"""The shape of a search answer, defined once: `run_queries` returns it, the web API sends it as it is, and
`lookalike search --json` prints it without the ids (`cli_json`), which only mean something to a running server.

A new per-hit or per-query field goes here, once, with a default so that older callers still build answers.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

CLI_HIT_FIELDS = ("rank", "path", "distance", "similarity")


# No class docstrings: pydantic would put them into the web API's published schema.
class SearchResult(BaseModel):
    # One hit: its 1-based rank, the image's id in the index, its path as printable text (`paths.printable`),
    # Euclidean distance and cosine similarity of the unit vectors.
    rank: int
    id: int
    path: str
    distance: float
    similarity: float
    # Spatial verification (`verify.py`): local features that agree on one transform with the query's; None
    # when the search did not verify this hit (or its file could not be read).
    inliers: Optional[int] = None


class SearchResponse(BaseModel):
    # One query's answer, best hit first. `query` names the query (an upload's file name, a path);
    # `query_id` is the id of the indexed image it searched from, when it was asked for by id.
    query: str
    query_id: Optional[int] = None
    results: list[SearchResult]

    @classmethod
    def of(cls, query: str, query_id: Optional[int], hits: list[dict]) -> "SearchResponse":
        """The answer from `query.search`'s hits, names made printable (`paths.printable`)."""
        from ...paths import printable

        return cls(query=printable(query), query_id=query_id,
                   results=[SearchResult(**{**h, "path": printable(h["path"])}) for h in hits])

    def cli_json(self) -> dict:
        """What `lookalike search --json` prints for this query: its name and each hit without the id (with its
        inliers when the search verified it)."""
        fields = set(CLI_HIT_FIELDS) | ({"inliers"} if any(h.inliers is not None for h in self.results) else set())
        return self.model_dump(include={"query": True, "results": {"__all__": fields}})
