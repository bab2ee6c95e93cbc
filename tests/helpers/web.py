"""Web-test helpers: the gallery of sample photos the web tests search, an app over it, a live server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

# Sample photos (skimage.data) in the web gallery, each with three edited copies under edited/. The JPEG copy
# is a light re-save (quality 40): a near-duplicate of its original under the default dupes threshold.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "coins", "retina")
EDITS = ("crop", "jpeg", "colour")
JPEG_QUALITY = 40
SIDE = 192  # small, so indexing and thumbnails stay fast


def photo(name: str):
    """A sample photo at the gallery's size."""
    from lookalike.search.sample_photos import load_photo

    return load_photo(name, SIDE)


def make_gallery(folder: Path) -> list[Path]:
    """Each photo as `NAME.png` and its edited copies as `edited/NAME-EDIT.jpg`; returns every file."""
    from lookalike.search.sample_photos import build_gallery

    copies = build_gallery(folder, PHOTOS, EDITS, side=SIDE, jpeg_quality=JPEG_QUALITY)
    return [folder / f"{name}.png" for name in PHOTOS] + [c["path"] for c in copies]


class LiveServer:
    """The real app under uvicorn, configured as `lookalike serve` runs it (`server_kwargs`: its limits), in a
    background thread. It listens, as `serve` does, on a socket opened before it starts: port 0, so the system
    picks a free port and no other process can take it in between."""

    def __init__(self, app, **server_kwargs) -> None:
        import uvicorn

        from lookalike.web.server import DEFAULT_LIMIT_CONCURRENCY, bound_port, listen, server_config

        self.sockets = listen("127.0.0.1", 0, server_kwargs.get("limit_concurrency", DEFAULT_LIMIT_CONCURRENCY))
        self.port = bound_port(self.sockets)
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, **server_kwargs))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def make_app(g: dict, tmp_path: Path, index_path_override: Path | None = None, **kwargs):
    """An app over the shared index (or another one), reusing the loaded model; thumbnails under `tmp_path`."""
    from lookalike.web.app import create_app

    kwargs.setdefault("thumbnail_cache_dir", tmp_path / "thumbs")
    return create_app(index_path_override or g["index"], embedder=g["embedder"], **kwargs)
