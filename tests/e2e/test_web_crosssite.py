"""What any web page the user visits can make the browser send to the server: cross-site API requests get 403
(the page itself and clients that are not browsers still work), and `GET /api/dupes`, which such a request could
fire with new thresholds, computes one thing at a time while the others get 503 at once."""

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
        ("GET", "/api/dupes", {"params": {"threshold": 0.3}}),
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


def _slow_duplicates(monkeypatch, seconds: float) -> list[int]:
    """Make each duplicates computation take `seconds` more; returns [most computations seen at once]."""
    import lookalike.search.retrieve.query as query

    real, lock, running, most = query.find_duplicates, threading.Lock(), [0], [0]

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

    monkeypatch.setattr(query, "find_duplicates", slow)
    return most


def _timed(c: TestClient, url: str, **params):
    start = time.monotonic()
    r = c.get(url, params=params)
    return r, time.monotonic() - start


def test_one_duplicates_computation_at_a_time_the_others_get_503_at_once(gallery, tmp_path, monkeypatch):
    most = _slow_duplicates(monkeypatch, 2.0)
    app = make_app(gallery, tmp_path)
    with TestClient(app) as c:
        assert c.get("/api/stats").status_code == 200
        with ThreadPoolExecutor(40) as pool:
            calls = [pool.submit(_timed, c, "/api/dupes", threshold=0.100001 + i / 1e6) for i in range(40)]
            time.sleep(0.5)
            stats, took = _timed(c, "/api/stats")  # while one computes and the rest are refused
            assert stats.status_code == 200 and took < 1.0
            results = [f.result() for f in calls]
        assert most[0] == 1
        done = [r for r, _ in results if r.status_code == 200]
        busy = [(r, t) for r, t in results if r.status_code == 503]
        assert done and len(done) + len(busy) == 40
        assert len(busy) >= 30  # each computation takes 2 s: nearly all calls came during the first
        for r, t in busy:
            assert r.headers["retry-after"] == "5" and "already finding duplicates" in r.json()["detail"]
            assert t < 1.5  # never waited for the computation
        # A setting computed before is answered from the cache even while another computes.
        computed = done[0].json()["threshold"]
        with app.state.service.dupes_gate:
            assert c.get("/api/dupes", params={"threshold": computed}).status_code == 200
            r, t = _timed(c, "/api/dupes", threshold=0.5)
            assert r.status_code == 503 and t < 1.0
        assert c.get("/api/dupes", params={"threshold": 0.5}).status_code == 200
