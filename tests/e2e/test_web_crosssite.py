"""What any web page the user visits can make the browser send to the server: cross-site API requests get 403
(the page itself and clients that are not browsers still work), and the duplicates scan, which runs one at a time in
the background: a second start gets 409 at once, and `GET /api/dupes` only reads its state."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from helpers.web import make_app, photo
from lookalike.search.sample_photos import jpeg_bytes
from lookalike.web.crosssite import same_origin

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def app(gallery, tmp_path_factory):
    return make_app(gallery, tmp_path_factory.mktemp("web_crosssite"))


def _requests(upload: bytes) -> list:
    """(method, url, keyword arguments) of a request to each kind of API route."""
    return [
        ("GET", "/api/stats", {}),
        ("GET", "/api/dupes", {}),
        ("GET", "/api/search", {"params": {"id": 1}}),
        ("GET", "/api/images/1/thumbnail", {}),
        ("POST", "/api/search", {"files": {"image": ("q.jpg", upload, "image/jpeg")}}),
        ("POST", "/api/compare", {"data": {"ids": ["1", "2"]}}),
    ]


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of this machine is another origin
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:8001"},
    {"Origin": "http://localhost:8000"},
    {"Origin": "null"},  # a sandboxed frame, a file:// page
    {"Origin": BASE, "Sec-Fetch-Site": "cross-site"},
], ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()))
def test_cross_site_api_requests_get_403_before_any_work(app, headers):
    thumbs = app.state.thumbnails
    with TestClient(app, base_url=BASE) as c:
        misses = thumbs.misses
        for method, url, kwargs in _requests(jpeg_bytes(photo("coffee"))):
            r = c.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 403, (method, url, r.text)
            assert r.json()["detail"].startswith("cross-site request refused")
        assert thumbs.misses == misses  # nothing was decoded
        # The page stays reachable by a link from anywhere; only the API is guarded.
        assert c.get("/", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts
    {"Sec-Fetch-Site": "none"},  # typed into the address bar
    {"Sec-Fetch-Site": "same-origin", "Origin": BASE},  # the page's own fetches
    {"Sec-Fetch-Site": "same-origin", "Origin": BASE + "/"},
    {"Origin": "http://127.0.0.1:8000".upper()},
], ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()) or "no headers")
def test_same_origin_and_non_browser_requests_pass(app, headers):
    with TestClient(app, base_url=BASE) as c:
        for method, url, kwargs in _requests(jpeg_bytes(photo("coffee"))):
            r = c.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 200, (method, url, r.text)


@pytest.mark.parametrize("origin, host, same", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
    ("http://[::1]:8000", "[::1]:8000", True),
    ("http://[0:0::1]:8000", "[::1]:8000", True),
    ("http://localhost", "localhost", True),
    ("http://localhost", "localhost:80", True),
    ("https://photos.example", "photos.example", True),  # behind a proxy that ends TLS
    ("http://photos.example.", "photos.example", True),
    ("http://localhost:8000", "127.0.0.1:8000", False),
    ("http://127.0.0.1", "127.0.0.1:8000", False),
    ("http://127.0.0.1:8000", "127.0.0.1", False),
    ("ftp://127.0.0.1:8000", "127.0.0.1:8000", False),
    ("http://127.0.0.1:8000/page", "127.0.0.1:8000", False),
    ("http://user@127.0.0.1:8000", "127.0.0.1:8000", False),
    ("http://127.0.0.1:99999", "127.0.0.1:8000", False),
    ("null", "127.0.0.1:8000", False),
    ("", "127.0.0.1:8000", False),
])
def test_same_origin_compares_host_and_port(origin, host, same):
    assert same_origin(origin, host) is same


def _slow_scans(monkeypatch, seconds: float) -> list[int]:
    """Make each duplicates scan take `seconds` more; returns [most scans seen at once]."""
    import lookalike.search.retrieve.dupes_answer as dupes_answer

    real, lock, running, most = dupes_answer.find_copies, threading.Lock(), [0], [0]

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(seconds)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(dupes_answer, "find_copies", slow)
    return most


def _timed(c: TestClient, method: str, url: str, **kwargs):
    start = time.monotonic()
    r = c.request(method, url, **kwargs)
    return r, time.monotonic() - start


def test_one_scan_at_a_time_a_second_start_gets_409_at_once(gallery, tmp_path, monkeypatch):
    most = _slow_scans(monkeypatch, 2.0)
    app = make_app(gallery, tmp_path)
    with TestClient(app, base_url=BASE) as c:
        token = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
        refused = c.post("/api/dupes/scan", json={"verify": 0}, headers={**token, "Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403 and c.get("/api/dupes").json()["state"] == "idle"
        assert c.post("/api/dupes/scan", json={"verify": 0}, headers=token).status_code == 202
        with ThreadPoolExecutor(20) as pool:
            calls = [pool.submit(_timed, c, "POST", "/api/dupes/scan", json={"verify": 0}, headers=token)
                     for _ in range(20)]
            reads = [pool.submit(_timed, c, "GET", url) for url in ("/api/dupes", "/api/stats", "/api/images")]
            results = [f.result() for f in calls]
            for r, took in (f.result() for f in reads):  # while the scan runs
                assert r.status_code == 200 and took < 1.0, r.text
        for r, took in results:
            assert r.status_code == 409 and "already running" in r.json()["detail"] and took < 1.0
        state = c.get("/api/dupes").json()
        assert state["state"] == "running" and "groups" in state
        app.state.web.dupes_job.wait(60)
        assert most[0] == 1 and c.get("/api/dupes").json()["state"] == "done"
