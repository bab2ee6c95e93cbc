"""The REST API and page through FastAPI's TestClient, over a real index of real photos and the real model."""

from __future__ import annotations

import io
import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers.cli import LOOKALIKE, assert_one_line_error
from helpers.files import snapshot
from helpers.web import make_app, photo
from lookalike.errors import LookalikeError
from lookalike.search.sample_photos import centre_crop as crop, jpeg_bytes, photo_of as family

STATIC = Path(__file__).resolve().parents[2] / "src" / "lookalike" / "web" / "static"


@pytest.fixture(scope="module")
def app(gallery, tmp_path_factory):
    return make_app(gallery, tmp_path_factory.mktemp("web_app"))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def index_before(gallery, client):
    """The index folder as it was before this module's first request (the app has opened it)."""
    return snapshot(gallery["index"])


def _files(name: str, data: bytes, mime: str = "image/jpeg") -> dict:
    return {"image": (name, data, mime)}


def _ids_by_name(client) -> dict:
    """Gallery file name -> id, read through the API itself (search everything from one image)."""
    stats = client.get("/api/stats").json()
    out = client.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coffee"))), data={"k": stats["count"]})
    return {Path(r["path"]).name: r["id"] for r in out.json()["results"]}


def test_index_was_built_from_the_gallery(gallery):
    summary = gallery["summary"]
    assert summary["indexed"] == len(gallery["files"]) and summary["skipped"] == []


def test_stats_give_the_index_facts(client, gallery, index_before):
    r = client.get("/api/stats")
    assert r.status_code == 200
    s = r.json()
    assert s["count"] == len(gallery["files"])
    assert s["model"] == "efficientnet_lite0"
    assert s["dim"] == 1280 + 320 and s["pooling"] in {"avg", "gem"}  # the default pools the head and the blocks
    assert s["updated_at"] and s["max_upload_bytes"] == 20_000_000
    assert s["dupe_threshold"] == 0.55  # the default of that descriptor


def test_search_by_upload_finds_the_right_photo(client):
    # A fresh edit that is not in the index: a tighter crop of the cat, re-encoded.
    query = jpeg_bytes(crop(photo("chelsea"), 0.7), quality=70)
    r = client.post("/api/search", files=_files("my cat.jpg", query), data={"k": "6"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "my cat.jpg" and body["query_id"] is None
    results = body["results"]
    assert [x["rank"] for x in results] == [1, 2, 3, 4, 5, 6]
    assert set(results[0]) == {"rank", "id", "path", "distance", "similarity", "inliers"}
    assert results[0]["inliers"] is None  # this app was made without `serve --verify`: no re-ranking
    # The four cat images (original, crop, JPEG, tint) come first.
    assert [family(x["path"]) for x in results[:4]] == ["chelsea"] * 4
    distances = [x["distance"] for x in results]
    assert distances == sorted(distances)
    for x in results:
        assert math.isclose(x["distance"], math.sqrt(max(0.0, 2 - 2 * x["similarity"])), abs_tol=1e-4)
        assert Path(x["path"]).is_absolute()


def test_every_photo_family_finds_itself(client):
    for name in ("astronaut", "coffee", "rocket", "retina"):
        query = jpeg_bytes(crop(photo(name), 0.75).rotate(8, expand=False), quality=75)
        r = client.post("/api/search", files=_files(f"{name}.jpg", query), data={"k": 1})
        assert family(r.json()["results"][0]["path"]) == name


def test_search_defaults_to_five_results_and_clamps_to_the_index(client, gallery):
    r = client.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("rocket"))))
    assert len(r.json()["results"]) == 5
    r = client.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("rocket"))), data={"k": 100})
    assert len(r.json()["results"]) == len(gallery["files"])


def test_search_from_an_indexed_image(client):
    ids = _ids_by_name(client)
    cat = ids["chelsea.png"]
    r = client.get("/api/search", params={"id": cat, "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["query_id"] == cat and body["query"].endswith("chelsea.png")
    assert cat not in [x["id"] for x in body["results"]]  # the query itself is left out by default
    assert [family(x["path"]) for x in body["results"]] == ["chelsea"] * 3

    with_self = client.get("/api/search", params={"id": cat, "k": 2, "include_self": "true"}).json()["results"]
    assert with_self[0]["id"] == cat and with_self[0]["distance"] < 1e-3


def test_search_with_an_unknown_or_malformed_id(client):
    assert client.get("/api/search", params={"id": 987654}).status_code == 404
    assert "no image with id 987654" in client.get("/api/search", params={"id": 987654}).json()["detail"]
    assert client.get("/api/search", params={"id": "../etc/passwd"}).status_code == 422
    assert client.get("/api/search").status_code == 422
    assert client.get("/api/search", params={"id": 1, "k": 0}).status_code == 422
    assert client.get("/api/search", params={"id": 1, "k": 101}).status_code == 422


def _png_head() -> bytes:
    """A real PNG cut just after its header: a known format whose pixels cannot be decoded."""
    buf = io.BytesIO()
    photo("coins").save(buf, format="PNG")
    return buf.getvalue()[:120]


@pytest.mark.parametrize(
    "name, data, mime, status, message",
    [
        ("notes.txt", b"this is plain text, not a picture", "text/plain", 415, "notes.txt: not an image"),
        ("cut.png", _png_head(), "image/png", 422, "cut.png: corrupt or truncated"),
        ("empty.png", b"", "image/png", 415, "empty"),
        ("script.html", b"<script>alert(1)</script>", "text/html", 415, "not an image"),
    ],
)
def test_bad_uploads_get_a_clear_message(client, name, data, mime, status, message):
    r = client.post("/api/search", files=_files(name, data, mime))
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels in a few dozen bytes: a decompression bomb's calling card."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 40_000])
def test_pixel_bombs_are_refused_before_decoding(client, side):
    r = client.post("/api/search", files=_files("bomb.png", _png_header_only(side, side), "image/png"))
    assert r.status_code == 422
    assert r.json()["detail"].startswith("bomb.png:") and "pixel" in r.json()["detail"]


def test_uploads_too_costly_to_decode_are_refused_at_once(client):
    from helpers.image_bombs import chatty_gif, repeated_scan_jpeg

    for name, data, mime, reason in [
        ("scans.jpg", repeated_scan_jpeg(2000, side=1024), "image/jpeg", "more than 100 JPEG scans"),
        ("chatty.gif", chatty_gif(300_000), "image/gif", "more than 200,000 reads"),
    ]:
        start = time.monotonic()
        r = client.post("/api/search", files=_files(name, data, mime))
        assert time.monotonic() - start < 5
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"{name}: ") and reason in r.json()["detail"]
    assert client.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coffee")))).status_code == 200


def test_truncated_jpeg_is_unprocessable(client):
    data = jpeg_bytes(photo("coffee"))
    r = client.post("/api/search", files=_files("cut.jpg", data[: len(data) // 3]))
    assert r.status_code == 422
    assert r.json()["detail"].startswith("cut.jpg: corrupt or truncated")


def test_upload_name_never_leaks_a_path(client):
    r = client.post("/api/search", files=_files("../../etc/passwd", jpeg_bytes(photo("coins"))))
    assert r.status_code == 200 and r.json()["query"] == "passwd"


def test_missing_image_field(client):
    assert client.post("/api/search", data={"k": 3}).status_code == 422
    assert client.post("/api/search", json={"k": 3}).status_code == 422


def test_compare_ids_and_uploads(client):
    ids = _ids_by_name(client)
    upload = jpeg_bytes(crop(photo("rocket"), 0.8))
    r = client.post(
        "/api/compare",
        data={"ids": [ids["rocket.png"], ids["coffee.png"]]},
        files=[("images", ("rocket crop.jpg", upload, "image/jpeg"))],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["paths"][0].endswith("rocket.png") and body["paths"][2] == "rocket crop.jpg"
    assert body["ids"] == [ids["rocket.png"], ids["coffee.png"], None]
    d, s = body["distance"], body["similarity"]
    assert len(d) == 3 and all(len(row) == 3 for row in d)
    for i in range(3):
        assert abs(d[i][i]) < 1e-3 and abs(s[i][i] - 1) < 1e-3
        for j in range(3):
            assert math.isclose(d[i][j], d[j][i], abs_tol=1e-5)
    assert d[0][2] < d[0][1] and d[0][2] < d[1][2]  # the crop is nearer its original than the coffee


def test_compare_needs_two_to_fifty_known_images(client):
    assert client.post("/api/compare", data={"ids": [1]}).status_code == 422
    assert "at least two" in client.post("/api/compare", data={"ids": [1]}).json()["detail"]
    assert client.post("/api/compare").status_code == 422
    r = client.post("/api/compare", data={"ids": [1, 999999]})
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    many = client.post("/api/compare", data={"ids": list(range(1, 52))})
    assert many.status_code == 422 and "at most 50" in many.json()["detail"]
    bad = client.post(
        "/api/compare",
        files=[("images", ("a.jpg", jpeg_bytes(photo("coins")), "image/jpeg")), ("images", ("b.txt", b"hello", "text/plain"))],
    )
    assert bad.status_code == 415 and "b.txt" in bad.json()["detail"]


def _scan(c: TestClient, verify: int = 0) -> dict:
    """Start a duplicates scan (descriptor only unless `verify`), wait for it, and answer `GET /api/dupes`."""
    token = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
    r = c.post("/api/dupes/scan", json={"verify": verify}, headers=token)
    assert r.status_code == 202, r.text
    c.app.state.web.dupes_job.wait(60)
    state = c.get("/api/dupes").json()
    assert state["state"] == "done", state
    return state


def _group_names(state: dict) -> list[list[str]]:
    return [sorted([Path(g["keeper"]).name] + [Path(m["path"]).name for m in g["members"]]) for g in state["groups"]]


def test_duplicate_groups(client):
    idle = client.get("/api/dupes").json()  # a GET never starts a scan
    assert idle["state"] == "idle" and idle["groups"] == []
    state = _scan(client)
    assert state["schema"] == 1 and state["journal"] is None and state["groups"]
    # The JPEG re-save of each photo is a copy of it: they share a group.
    for names in _group_names(state):
        assert len(names) >= 2 and len({family(n) for n in names}) == 1
    grouped = {n for g in _group_names(state) for n in g}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert {f"{name}.png", f"{name}-jpeg.jpg"} <= grouped
    ids = _ids_by_name(client)
    for g in state["groups"]:
        assert g["kind"] in ("exact", "copy") and g["why"]
        assert ids[Path(g["keeper"]).name] == g["keeper_id"] == g["keeper_image"]["id"]
        for m in g["members"]:
            assert ids[Path(m["path"]).name] == m["id"] and m["distance"] is not None and m["inliers"] is None
    assert client.get("/api/dupes", params={"threshold": -1}).json() == state  # parameters change nothing


def test_thumbnails_are_served_by_id_and_cached(client, app, gallery):
    ids = _ids_by_name(client)
    thumbs = app.state.thumbnails
    r = client.get(f"/api/images/{ids['astronaut.png']}/thumbnail", params={"size": 96})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 128  # sizes snap up to 64, 128, 256, 512 or 1024
    misses = thumbs.misses
    again = client.get(f"/api/images/{ids['astronaut.png']}/thumbnail", params={"size": 96})
    assert again.content == r.content and thumbs.misses == misses  # from the cache
    etag = r.headers["etag"]
    assert client.get(
        f"/api/images/{ids['astronaut.png']}/thumbnail", params={"size": 96}, headers={"If-None-Match": etag}
    ).status_code == 304
    # The disk cache is where the app was told, never in the index or photo folders.
    assert list(thumbs.cache_dir.rglob("*.jpg"))
    assert not list(gallery["index"].rglob("*.jpg")) and not (gallery["folder"] / "thumbs").exists()


def test_thumbnail_errors(client):
    assert client.get("/api/images/999999/thumbnail").status_code == 404
    assert client.get("/api/images/abc/thumbnail").status_code == 422
    assert client.get("/api/images/1/thumbnail", params={"size": 5000}).status_code == 422
    for probe in ("/api/images/..%2F..%2Fetc%2Fpasswd/thumbnail", "/api/images/../../etc/passwd",
                  "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/../app.py"):
        r = client.get(probe)
        assert r.status_code in (404, 422), probe
        assert b"root:" not in r.content and b"create_app" not in r.content


def test_upload_limit_by_content_length(gallery, tmp_path):
    app = make_app(gallery, tmp_path, max_upload_bytes=50_000)
    with TestClient(app) as c:
        big = jpeg_bytes(photo("astronaut").resize((900, 900)), quality=95)
        assert len(big) > 50_000
        r = c.post("/api/search", files=_files("big.jpg", big))
        assert r.status_code == 413 and "limit is 0.05 MB" in r.json()["detail"]
        small = jpeg_bytes(photo("astronaut"), quality=60)
        assert len(small) < 40_000 and c.post("/api/search", files=_files("s.jpg", small)).status_code == 200
        assert c.get("/api/stats").json()["max_upload_bytes"] == 50_000


def test_upload_limit_while_streaming_without_content_length(gallery, tmp_path):
    """A chunked upload (no Content-Length) is cut off once past the limit: the rest of it is never read.

    Driven as raw ASGI through the whole app (FastAPI's multipart parser included), because the test client
    reads a streamed request body whole before handing it over.
    """
    import asyncio

    app = make_app(gallery, tmp_path, max_upload_bytes=50_000)
    boundary = "lookalike-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.bmp"\r\n'
            "Content-Type: image/bmp\r\n\r\n").encode()
    chunks = [head] + [b"\0" * 10_000] * 200  # 2 MB if it were all read
    handed = 0
    sent = []

    async def receive():
        nonlocal handed
        handed += 1
        return {"type": "http.request", "body": chunks[handed - 1], "more_body": handed < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/search", "raw_path": b"/api/search", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"upload too large" in b"".join(m.get("body", b"") for m in sent[1:])
    # The 50 kB limit is passed in the 6th chunk: from there on the body is only read and dropped, never kept.
    assert handed == len(chunks)


def test_live_server_answers_413_before_a_chunked_upload_ends(gallery, tmp_path):
    """Over a real socket: the 413 arrives while the client has sent only part of its chunked body."""
    import select
    import socket

    from helpers.web import LiveServer

    app = make_app(gallery, tmp_path, max_upload_bytes=50_000)
    with LiveServer(app) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        boundary = "b0undary"
        sock.sendall(
            (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
             f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
        )
        part = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.bmp"\r\n\r\n').encode()
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent = 0
        while sent < 40 and not select.select([sock], [], [], 0.25)[0]:  # a body that would go on for 400 kB
            sock.sendall(b"%x\r\n%s\r\n" % (10_000, b"\0" * 10_000))
            sent += 1
        answer = b""
        while b"upload too large" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert sent <= 7  # answered as soon as the 50 kB limit was passed
    assert "upload too large" in answer


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<meta name="viewport"' in html and "/static/app.js" in html and "/static/style.css" in html
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and kind in s.headers["content-type"]
    assert client.get("/favicon.ico").status_code == 200
    # FastAPI's own docs pages would pull scripts from a CDN: they are off (the schema is at /openapi.json).
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_static_files_load_nothing_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text()
        # No CDN, no remote fonts: every URL the page uses is relative to the server.
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text) + re.findall(r"url\(([^)]+)\)", text)
        assert all(u.startswith(("/", "#", "data:")) for u in urls), (path.name, urls)
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path.name


def test_openapi_lists_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {"/api/search", "/api/compare", "/api/dupes", "/api/images/{image_id}/thumbnail", "/api/stats"}
    assert set(paths["/api/search"]) == {"get", "post"}
    assert "multipart/form-data" in paths["/api/search"]["post"]["requestBody"]["content"]


def test_concurrent_searches_share_one_model(client):
    """8 threads at once through the same app: same answers as one at a time, no errors."""
    queries = {name: jpeg_bytes(crop(photo(name), 0.85)) for name in ("chelsea", "coffee", "rocket", "coins")}
    expected = {
        name: client.post("/api/search", files=_files(f"{name}.jpg", q), data={"k": 3}).json()["results"]
        for name, q in queries.items()
    }

    def one(i):
        name = list(queries)[i % len(queries)]
        r = client.post("/api/search", files=_files(f"{name}.jpg", queries[name]), data={"k": 3})
        return name, r.status_code, r.json().get("results")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    for name, status, results in answers:
        assert status == 200
        assert [x["id"] for x in results] == [x["id"] for x in expected[name]]


def test_the_server_never_writes_to_the_index(client, gallery, index_before):
    # Runs after the requests above (same module, file order); the index folder is byte-for-byte unchanged.
    client.get("/api/dupes")
    client.get("/api/search", params={"id": 1})
    assert snapshot(gallery["index"]) == index_before


def test_missing_index_is_a_user_error(tmp_path, gallery):
    from lookalike.web.app import create_app

    with pytest.raises(LookalikeError):
        create_app(tmp_path / "nowhere", embedder=gallery["embedder"])


def _cli(*args, cwd=None):
    return subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_serve_reports_user_errors_in_one_line(tmp_path):
    r = _cli("serve", "--index", str(tmp_path / "nowhere"), "--port", "0")
    assert_one_line_error(r.returncode, r.stderr)


def test_serve_refuses_a_busy_port(gallery):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = _cli("serve", "--index", str(gallery["index"]), "--port", str(port))
    line = assert_one_line_error(r.returncode, r.stderr)
    assert line == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_empty_index_and_vanished_files(gallery, tmp_path):
    """An index of nothing answers with empty lists; a file deleted after indexing gives 404, not a crash."""
    import shutil

    from lookalike.search.indexing.sync import index_folder

    (tmp_path / "empty").mkdir()
    index_folder(tmp_path / "empty", tmp_path / "empty-index", embedder=gallery["embedder"])
    with TestClient(make_app(gallery, tmp_path / "a", index_path_override=tmp_path / "empty-index")) as c:
        assert c.get("/api/stats").json()["count"] == 0
        r = c.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coins"))))
        assert r.status_code == 200 and r.json()["results"] == []
        assert _scan(c)["groups"] == []

    few = tmp_path / "few"
    few.mkdir()
    for name in ("coins.png", "coffee.png", "rocket.png"):
        shutil.copy(gallery["folder"] / name, few / name)
    index_folder(few, tmp_path / "few-index", embedder=gallery["embedder"])
    (few / "coffee.png").unlink()
    with TestClient(make_app(gallery, tmp_path / "b", index_path_override=tmp_path / "few-index")) as c:
        hits = c.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coins"))), data={"k": 3}).json()["results"]
        ids = {Path(x["path"]).name: x["id"] for x in hits}
        gone = c.get(f"/api/images/{ids['coffee.png']}/thumbnail")
        assert gone.status_code == 404 and "no longer on disk" in gone.json()["detail"]
        assert c.get(f"/api/images/{ids['rocket.png']}/thumbnail").status_code == 200


def test_serve_command_starts_the_real_server(gallery):
    """`lookalike serve` end to end: binds 127.0.0.1 by default, answers the page and the API, stops on SIGTERM."""
    import os

    import httpx

    from helpers.cli import ServeProcess

    env = {**os.environ, "LOOKALIKE_HOME": str(gallery["home"])}
    with ServeProcess(["--index", gallery["index"]], env) as server:
        port = server.port
        stats = httpx.get(f"{server.url}/api/stats", timeout=60, trust_env=False).json()
        assert stats["count"] == len(gallery["files"])
        assert httpx.get(f"{server.url}/", trust_env=False).status_code == 200
        assert httpx.get(f"http://localhost:{port}/api/stats", trust_env=False).status_code == 200
        # `serve` verifies the first 20 results of a search by default, as `lookalike search` does.
        query = jpeg_bytes(crop(photo("chelsea"), 0.7), quality=70)
        found = httpx.post(f"{server.url}/api/search", files=_files("cat.jpg", query), data={"k": 3}, timeout=120,
                           trust_env=False).json()["results"]
        assert family(found[0]["path"]) == "chelsea" and found[0]["inliers"] >= 8
        assert all(isinstance(x["inliers"], int) for x in found)
        # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
        rebound = httpx.get(f"{server.url}/api/stats", headers={"Host": f"evil.example:{port}"}, trust_env=False)
        assert rebound.status_code == 400 and rebound.json() == {"detail": "invalid Host header"}
    assert f"open http://127.0.0.1:{port}/" in server.stderr


def test_only_loopback_counts_as_private():
    from lookalike.cli.serve_cmd import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5") and not _is_loopback("example.org")


def test_host_check(gallery, tmp_path):
    from lookalike.web.limits import host_name

    assert host_name("Example.org:8000") == "example.org" and host_name("[::1]:8000") == "[::1]"
    assert host_name("127.0.0.1") == "127.0.0.1"
    app = make_app(gallery, tmp_path, allowed_hosts=["127.0.0.1", "localhost", "[::1]"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/stats").status_code == 200
        assert c.get("/api/stats", headers={"host": "[::1]:8000"}).status_code == 200
        assert c.get("/api/stats", headers={"host": "evil.example"}).status_code == 400
        assert c.get("/", headers={"host": "127.0.0.1.evil.example"}).status_code == 400


# -- following `lookalike index` while serving ---------------------------------------------------------------
def _small_folder(gallery, folder: Path, names=("coins.png", "coffee.png", "rocket.png")) -> Path:
    import shutil

    folder.mkdir()
    for name in names:
        shutil.copy(gallery["folder"] / name, folder / name)
    return folder


def test_a_running_app_follows_reindexing(gallery, tmp_path):
    """Images added to the folder are found, deleted ones disappear, a changed one gets a new thumbnail: after
    `index_folder`, with the same app."""
    import shutil

    from lookalike.search.indexing.sync import index_folder

    folder = _small_folder(gallery, tmp_path / "live")
    index_path = tmp_path / "live-index"
    index_folder(folder, index_path, embedder=gallery["embedder"])
    app = make_app(gallery, tmp_path, index_path_override=index_path, check_interval=0)
    with TestClient(app) as c:
        def hits(name: str) -> dict:
            r = c.post("/api/search", files=_files("q.jpg", jpeg_bytes(crop(photo(name), 0.85))), data={"k": 10})
            return {Path(x["path"]).name: x["id"] for x in r.json()["results"]}

        before = hits("chelsea")
        assert set(before) == {"coins.png", "coffee.png", "rocket.png"}
        assert _scan(c)["groups"] == []
        rocket = before["rocket.png"]
        old_thumb = c.get(f"/api/images/{rocket}/thumbnail", params={"size": 64})
        assert old_thumb.status_code == 200

        shutil.copy(gallery["folder"] / "chelsea.png", folder / "chelsea.png")
        shutil.copy(gallery["folder"] / "edited" / "chelsea-jpeg.jpg", folder / "chelsea-jpeg.jpg")
        (folder / "coffee.png").unlink()
        shutil.copy(gallery["folder"] / "retina.png", folder / "rocket.png")  # same name, other picture
        s = index_folder(folder, index_path, embedder=gallery["embedder"])
        assert (s["added"], s["removed"], s["updated"]) == (2, 1, 1)

        after = hits("chelsea")
        assert set(after) == {"coins.png", "rocket.png", "chelsea.png", "chelsea-jpeg.jpg"}
        assert {family(n) for n in list(after)[:2]} == {"chelsea"}  # the new images rank first
        assert c.get("/api/stats").json()["count"] == 4
        assert after["rocket.png"] == rocket  # the id stayed, the file behind it changed
        new_thumb = c.get(f"/api/images/{rocket}/thumbnail", params={"size": 64})
        assert new_thumb.status_code == 200 and new_thumb.headers["etag"] != old_thumb.headers["etag"]
        assert new_thumb.content != old_thumb.content
        assert c.get(f"/api/images/{rocket}/thumbnail", params={"size": 64},
                     headers={"If-None-Match": old_thumb.headers["etag"]}).status_code == 200  # not a stale 304

        gone = before["coffee.png"]
        assert c.get("/api/search", params={"id": gone}).status_code == 404
        assert c.get(f"/api/images/{gone}/thumbnail").status_code == 404
        assert c.post("/api/compare", data={"ids": [gone, rocket]}).status_code == 404
        cat = c.get("/api/search", params={"id": after["chelsea.png"], "k": 1}).json()["results"]
        assert [x["id"] for x in cat] == [after["chelsea-jpeg.jpg"]]
        # a scan started now sees the index as it is now
        assert _group_names(_scan(c)) == [["chelsea-jpeg.jpg", "chelsea.png"]]


def test_the_service_looks_at_most_once_per_interval_and_pins_a_snapshot(gallery, tmp_path):
    import shutil

    from lookalike.search.retrieve.query import search
    from lookalike.search.indexing.sync import index_folder
    from lookalike.web.service import SearchService

    folder = _small_folder(gallery, tmp_path / "live")
    index_path = tmp_path / "live-index"
    index_folder(folder, index_path, embedder=gallery["embedder"])
    service = SearchService(index_path, embedder=gallery["embedder"], check_interval=3600)
    try:
        old = service.view()
        shutil.copy(gallery["folder"] / "chelsea.png", folder / "chelsea.png")
        index_folder(folder, index_path, embedder=gallery["embedder"])
        assert service.view() is old and service.stats()["count"] == 3  # within the interval: not looked at
        assert service.refresh() is True
        new = service.view()
        assert new is not old and service.stats()["count"] == 4
        assert service.refresh() is False and service.view() is new  # nothing changed: nothing reloaded
        # A request that took the old snapshot finishes on it, vectors and paths alike.
        query = new.index.vector_of(int(new.index.ids().max()))
        assert len(search(old.index, query, k=10)[0]) == 3 and len(search(new.index, query, k=10)[0]) == 4
        assert {p.name for p in map(old.path_of, old.index.ids())} == {"coins.png", "coffee.png", "rocket.png"}
    finally:
        service.close()


def test_an_index_rebuilt_with_another_backbone_brings_its_backbone(gallery, tmp_path):
    from PIL import Image

    from lookalike.errors import LookalikeError
    from lookalike.search.describe.features import embedder_for_index
    from lookalike.search.indexing.sync import index_folder
    from lookalike.web.service import SearchService

    folder = _small_folder(gallery, tmp_path / "live")
    index_path = tmp_path / "live-index"
    index_folder(folder, index_path, embedder=gallery["embedder"])
    loads = []

    def load(index):
        loads.append(index.manifest["pooling"])
        return embedder_for_index(index, runtime="torch")

    def broken(index):
        raise LookalikeError("weights not found")

    service = SearchService(index_path, embedder=gallery["embedder"], check_interval=3600, load_embedder=load)
    stuck = SearchService(index_path, embedder=gallery["embedder"], check_interval=3600, load_embedder=broken)
    try:
        before = service.view()
        assert service.embedder.describe()["pooling"] == "avg" and loads == []
        index_folder(folder, index_path, pooling="gem", runtime="torch", rebuild=True)
        assert service.refresh() is True and loads == ["gem"]
        assert service.embedder.describe()["pooling"] == "gem" and before.embedder is gallery["embedder"]
        # An upload is embedded by the backbone of the snapshot it searches: a photo finds itself at distance 0.
        hit = service.search_image(Image.open(folder / "coffee.png").convert("RGB"), "coffee.png", k=1).results[0]
        assert Path(hit.path).name == "coffee.png" and hit.distance < 1e-3
        # A backbone that cannot load leaves the server on its old snapshot, answering as before.
        assert stuck.refresh() is False and stuck.embedder is gallery["embedder"]
        assert stuck.stats()["count"] == 3
    finally:
        service.close()
        stuck.close()


def test_requests_during_reindexing_see_whole_snapshots(gallery, tmp_path):
    """Threads search and fetch thumbnails while the folder is re-indexed twice: every answer comes from one
    committed state (200 or, for an id just removed, 404), never an error."""
    import shutil
    import threading

    from lookalike.search.indexing.sync import index_folder

    folder = _small_folder(gallery, tmp_path / "live", ("coins.png", "coffee.png", "rocket.png", "astronaut.png"))
    index_path = tmp_path / "live-index"
    index_folder(folder, index_path, embedder=gallery["embedder"])
    app = make_app(gallery, tmp_path, index_path_override=index_path, check_interval=0)
    stop = threading.Event()
    seen: list = []

    def hammer() -> None:
        while not stop.is_set():
            for image_id in range(1, 9):
                r = c.get("/api/search", params={"id": image_id, "k": 10})
                body = r.json()
                count = len(body["results"]) + 1 if r.status_code == 200 else None
                seen.append((r.status_code, count))
                seen.append((c.get(f"/api/images/{image_id}/thumbnail", params={"size": 32}).status_code, None))

    with TestClient(app) as c:
        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: len(seen) >= 16)
            (folder / "coffee.png").unlink()
            shutil.copy(gallery["folder"] / "chelsea.png", folder / "chelsea.png")
            index_folder(folder, index_path, embedder=gallery["embedder"], batch_size=1)
            (folder / "coins.png").unlink()
            index_folder(folder, index_path, embedder=gallery["embedder"], batch_size=1)
            done = len(seen)
            # A few requests on the last state too: 16 answers may all be 404s for ids 6-8 or still in flight
            # from before the commit, so wait until one search has seen the final 3 images.
            _wait_for(lambda: len(seen) >= done + 16 and any(n == 3 for _, n in seen[done:]))
        finally:
            stop.set()
            for t in threads:
                t.join()
        final = c.get("/api/stats").json()["count"]
    # Which answers came in between depends on how the threads ran; what holds for every interleaving: no
    # answer but 200 or 404, and the index sizes searches saw are committed states only (4; 5 once chelsea is
    # in and before coffee goes; 4; 3), the first and the last of them seen for sure (the waits above).
    statuses = {status for status, _ in seen}
    assert statuses <= {200, 404}, statuses
    counts = {count for _, count in seen if count}
    assert {3, 4} <= counts <= {3, 4, 5}
    assert final == 3


def _wait_for(condition, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- what one request, or many, may cost ------------------------------------------------------------------------
def _png(side: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), 120).save(buf, format="PNG")
    return buf.getvalue()


def test_the_pixels_one_request_decodes_are_bounded(gallery, tmp_path):
    """Small files of big canvases: each upload counts the pixels it would decode against one budget for the
    whole request, so many copies get 413 instead of growing the server."""
    app = make_app(gallery, tmp_path, max_request_pixels=1_000_000)
    canvas = _png(800)  # 640,000 pixels in a few kB
    with TestClient(app) as c:
        assert c.get("/api/stats").json()["max_request_pixels"] == 1_000_000
        one = c.post("/api/compare", data={"ids": ["1"]}, files=[("images", ("a.png", canvas, "image/png"))])
        assert one.status_code == 200
        many = c.post("/api/compare", files=[("images", (f"c{i}.png", canvas, "image/png")) for i in range(8)])
        assert many.status_code == 413
        assert many.json()["detail"].startswith("c1.png: decoding its 640,000 pixels would pass the 1,000,000-pixel")
        big = c.post("/api/search", files=_files("big.png", _png(1100), "image/png"))
        assert big.status_code == 413 and "1,210,000 pixels" in big.json()["detail"]


def test_decodes_beyond_the_slots_get_503_not_more_work(gallery, tmp_path):
    app = make_app(gallery, tmp_path, decode_slots=1, decode_wait=0.0)
    slots = app.state.decode_slots
    with TestClient(app) as c:
        ids = _ids_by_name(c)
        with slots.hold():  # another request is decoding: nothing more may start
            r = c.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coffee"))))
            assert r.status_code == 503 and r.headers["retry-after"] == "5" and "busy" in r.json()["detail"]
            thumb = c.get(f"/api/images/{ids['coins.png']}/thumbnail")
            assert thumb.status_code == 503 and thumb.headers["retry-after"] == "5"
            assert c.get("/api/search", params={"id": ids["coins.png"]}).status_code == 200  # no decode needed
        assert c.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("coffee")))).status_code == 200
        assert c.get(f"/api/images/{ids['coins.png']}/thumbnail").status_code == 200


def test_a_token_guards_everything_and_the_page_still_works(gallery, tmp_path):
    token = "s3cret-token-for-tests"
    app = make_app(gallery, tmp_path, token=token)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        for url in ("/", "/api/stats", "/static/app.js", "/api/images/1/thumbnail"):
            r = c.get(url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
        assert c.get("/?token=wrong").status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/stats", headers=bearer).status_code == 200
        assert c.get("/api/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # Visiting /?token=... once sets an HttpOnly, same-site cookie and drops the token from the address.
        visit = c.get(f"/?token={token}", follow_redirects=False)
        assert visit.status_code == 303 and visit.headers["location"] == "/"
        cookie = visit.headers["set-cookie"]
        assert cookie.startswith("lookalike_token_8000=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/").status_code == 200  # the cookie now goes with every request of the page
        ids = _ids_by_name(c)
        assert c.get(f"/api/images/{ids['coins.png']}/thumbnail").status_code == 200
        assert c.get("/static/app.js").status_code == 200
    with TestClient(app, base_url="http://127.0.0.1:8001") as other:  # another port's cookie does not count
        other.cookies.set("lookalike_token_8000", token)
        assert other.get("/api/stats").status_code == 401


def _live(gallery, tmp_path, **server_kwargs):
    from helpers.web import LiveServer

    app_kwargs = {k: server_kwargs.pop(k) for k in ("max_upload_bytes", "body_timeout") if k in server_kwargs}
    return LiveServer(make_app(gallery, tmp_path, **app_kwargs), **server_kwargs)


def test_urllib_sees_the_413_of_an_oversized_upload(gallery, tmp_path):
    """urllib sends the whole body before it reads: the server reads and drops the rest of a refused body
    before it closes, so the client gets the 413 rather than a reset connection."""
    import json
    import urllib.error
    import urllib.request

    body = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.bmp"\r\n'
            b"Content-Type: image/bmp\r\n\r\n" + b"\0" * 32_000_000 + b"\r\n--x--\r\n")  # more than socket buffers hold
    with _live(gallery, tmp_path, max_upload_bytes=1_000_000) as server:
        headers = {"Content-Type": "multipart/form-data; boundary=x"}
        for data in (body, iter([body[i:i + 65536] for i in range(0, len(body), 65536)])):  # sized, chunked
            request = urllib.request.Request(f"{server.url}/api/search", data=data, headers=headers, method="POST")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=60)
            assert info.value.code == 413
            assert "upload too large" in json.loads(info.value.read())["detail"]
        # An answer given before the body has all arrived (here the form parser's, on a body that is no form)
        # reaches urllib the same way.
        junk = iter([b"\0" * 65536] * 500)
        request = urllib.request.Request(f"{server.url}/api/search", data=junk, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=60)
        assert info.value.code == 400


def _read_all(sock) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_slow_heads_and_bodies_are_cut_off(gallery, tmp_path):
    """A client that stops in the middle of its request head gets 408 and a closed connection from the server;
    one that stops in the middle of its body gets 408 from the app. Neither holds a connection for ever."""
    import socket

    with _live(gallery, tmp_path, head_timeout=0.5, body_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408")
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 seconds" in answer
        # The server still answers everyone else.
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_limit_get_503(gallery, tmp_path):
    import socket

    limit = 4
    with _live(gallery, tmp_path, limit_concurrency=limit) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(limit)]
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert _read_all(sock).startswith(b"HTTP/1.1 503")
        finally:
            for sock in idle:
                sock.close()

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return _read_all(sock).startswith(b"HTTP/1.1 200")

        _wait_for(answers)  # the server notices the closed connections within a few event-loop turns


def test_serve_on_a_public_address_keeps_the_host_check_and_warns(gallery):
    import os
    import socket

    import httpx

    from helpers.cli import ServeProcess
    from lookalike.web.hosts import as_host

    env = {**os.environ, "LOOKALIKE_HOME": str(gallery["home"])}
    env.pop("LOOKALIKE_TOKEN", None)
    args = ["--index", gallery["index"], "--host", "0.0.0.0", "--allowed-host", "photos.example"]
    with ServeProcess(args, env) as server:
        url = f"{server.url}/api/stats"
        assert httpx.get(url, timeout=60, trust_env=False).status_code == 200

        def status(host: str) -> int:
            return httpx.get(url, headers={"Host": f"{host}:{server.port}"}, trust_env=False).status_code

        assert status("evil.example") == 400  # DNS rebinding still fails on a public bind
        assert status(as_host(socket.gethostname())) == 200
        assert status("photos.example") == 200
    assert "WARNING: listening on 0.0.0.0 without --token" in " ".join(server.stderr.split())


def test_serve_refuses_a_token_that_cannot_go_in_a_url(gallery):
    run = _cli("serve", "--index", str(gallery["index"]), "--token", "has space;")
    assert run.returncode == 2 and "--token may hold only" in run.stderr and "Traceback" not in run.stderr


def test_names_that_are_not_utf8_are_shown_escaped(gallery, tmp_path):
    """A file name that is not valid UTF-8 reaches the JSON answers escaped, and its thumbnail is still served."""
    import os
    import shutil

    from lookalike.search.indexing.sync import index_folder

    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy(gallery["folder"] / "coins.png", folder / "coins.png")
    shutil.copy(gallery["folder"] / "rocket.png", os.path.join(os.fsencode(folder), b"z\xe9t\xe9.png"))
    index_folder(folder, tmp_path / "odd-index", embedder=gallery["embedder"])
    with TestClient(make_app(gallery, tmp_path / "c", index_path_override=tmp_path / "odd-index")) as c:
        hits = c.post("/api/search", files=_files("q.jpg", jpeg_bytes(photo("rocket"))), data={"k": 2}).json()
        odd = [h for h in hits["results"] if h["path"].endswith("z\\xe9t\\xe9.png")]
        assert len(odd) == 1
        by_id = c.get("/api/search", params={"id": odd[0]["id"], "include_self": "true", "k": 1}).json()
        assert by_id["query"].endswith("z\\xe9t\\xe9.png")
        pair = c.post("/api/compare", data={"ids": [h["id"] for h in hits["results"]]})
        assert pair.status_code == 200 and any(p.endswith("z\\xe9t\\xe9.png") for p in pair.json()["paths"])
        assert c.get(f"/api/images/{odd[0]['id']}/thumbnail").status_code == 200
