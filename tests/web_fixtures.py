"""Shared set-up for the web tests: a small gallery of real photos, its index, one loaded model, a live server.

Built once per test session (module-level cache) whichever web test module asks first, because fixtures
imported into several modules are separate fixture definitions to pytest.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# skimage.data photos bundled with scikit-image (CC0 / public domain), under short names without "-".
PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
    "camera": "camera",
    "hubble": "hubble_deep_field",
    "ihc": "immunohistochemistry",
    "coins": "coins",
    "motorcycle": "stereo_motorcycle",
}
SIDE = 192  # small, so indexing and thumbnails stay fast

_SHARED: dict = {}
_LOCK = threading.Lock()


def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, PHOTOS[name])()
    if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
        arr = arr[0]
    img = Image.fromarray(np.asarray(arr)).convert("RGB")
    img.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    return img


def family(path: str | Path) -> str:
    """The original photo a gallery file comes from: `chelsea-crop.jpg` -> `chelsea`."""
    return Path(path).stem.split("-")[0]


def crop(img: Image.Image, frac: float = 0.8) -> Image.Image:
    w, h = img.size
    dw, dh = int(w * (1 - frac) / 2), int(h * (1 - frac) / 2)
    return img.crop((dw, dh, w - dw, h - dh))


def tint(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.int16) + np.array([18, -8, -14], dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_gallery(folder: Path) -> list[Path]:
    """Each photo as PNG, plus a centre crop, a low-quality JPEG re-save and a colour-shifted copy."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edits").mkdir(exist_ok=True)
    files = []
    for name in PHOTOS:
        img = photo(name)
        img.save(folder / f"{name}.png")
        crop(img).save(folder / "edits" / f"{name}-crop.jpg", quality=90)
        (folder / "edits" / f"{name}-jpeg.jpg").write_bytes(jpeg_bytes(img, quality=40))
        tint(img).save(folder / "edits" / f"{name}-tint.png")
        files += [folder / f"{name}.png"] + [folder / "edits" / f"{name}-{e}" for e in ("crop.jpg", "jpeg.jpg", "tint.png")]
    return files


def build_index(folder: Path, index_path: Path, embedder) -> dict:
    """Index `folder` with the library behind `lookalike index`, reusing an already loaded model."""
    from lookalike.search.sync import index_folder

    return index_folder(folder, index_path, embedder=embedder)


def snapshot(folder: Path) -> dict:
    """Name -> (size, mtime, sha256) of every file under `folder`: proof that nothing wrote there.

    SQLite's `-shm` file is the readers' shared memory: opening the database read-only refreshes its mtime
    (not its bytes), so only its size and content count.
    """
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            mtime = None if path.name.endswith("-shm") else st.st_mtime_ns
            out[str(path.relative_to(folder))] = (st.st_size, mtime, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def shared_gallery(tmp_path_factory) -> dict:
    """{"folder", "index", "files", "summary", "embedder", "home"}: built once per session."""
    with _LOCK:
        if "gallery" not in _SHARED:
            base = tmp_path_factory.mktemp("web_gallery")
            home = base / "home"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("LOOKALIKE_HOME", str(home))  # any model export cache stays in the test folder
                files = make_gallery(base / "photos")
                from lookalike.search.features import load_embedder

                embedder = load_embedder()  # the default backbone, as `lookalike index` picks it
                index_path = base / "index"
                summary = build_index(base / "photos", index_path, embedder)
            _SHARED["gallery"] = {
                "folder": base / "photos",
                "index": index_path,
                "files": files,
                "summary": summary,
                "embedder": embedder,
                "home": home,
            }
        return _SHARED["gallery"]


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> dict:
    return shared_gallery(tmp_path_factory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real app under uvicorn, configured as `lookalike serve` runs it (`server_kwargs`: its limits), in a
    background thread on a free 127.0.0.1 port."""

    def __init__(self, app, **server_kwargs) -> None:
        import uvicorn

        from lookalike.web.server import server_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, **server_kwargs))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

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


def make_app(g: dict, tmp_path: Path, index_path_override: Path | None = None, **kwargs):
    """An app over the shared index (or another one), reusing the loaded model; thumbnails under `tmp_path`."""
    from lookalike.web.app import create_app

    kwargs.setdefault("thumbnail_cache_dir", tmp_path / "thumbs")
    return create_app(index_path_override or g["index"], embedder=g["embedder"], **kwargs)

