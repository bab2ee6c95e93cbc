"""What the page may do on this server (`GET /api/session`) and the check every state-changing request passes.

The page reads a CSRF token from `/api/session` and sends it back as `X-CSRF-Token` with each request that
changes state; a page of another site cannot read it (the cross-site rule refuses its API requests, and the
answer is not readable across origins). Actions are off on a public bind without `--token` (403, and the page
hides them) and refused with 405 under `serve --read-only`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

CSRF_HEADER = "x-csrf-token"


@dataclass
class Session:
    actions: bool = True  # False on a public bind without a token
    read_only: bool = False
    move: bool = False  # whether the server has a folder to move to (`serve --move-to`)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def answer(self) -> dict:
        return {"csrf": self.csrf, "actions": self.actions and not self.read_only, "read_only": self.read_only,
                "move": self.move}

    def check(self, request: Request) -> None:
        """Raise the HTTP error that refuses a state-changing request, or return."""
        if self.read_only:
            raise HTTPException(405, detail="this server is read-only (serve --read-only): it changes nothing")
        if not self.actions:
            raise HTTPException(403, detail="actions are off on a server others can reach without a token: "
                                            "start it with --token SECRET")
        self.check_csrf(request)

    def check_csrf(self, request: Request) -> None:
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given.encode("latin-1", "replace"), self.csrf.encode()):
            raise HTTPException(403, detail="missing or wrong X-CSRF-Token: reload the page")
