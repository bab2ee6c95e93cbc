"""The web app's parts that need no model: the upload limit, the thumbnail cache, upload decoding."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image

from lookalike.errors import BadImageError
from lookalike.web.limits import UploadLimitMiddleware
from lookalike.web.service import UnsupportedImage, decode_upload, display_name
from lookalike.web.thumbnails import ImageGone, ThumbnailCache


# -- the upload limit, driven as raw ASGI so we can see exactly what was read ------------------------------
async def _echo_app(scope, receive, send):
    """Reads the whole body, then answers its length."""
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"read": total}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _run(app, headers, chunks):
    """Call `app` with the body in `chunks`; return (status, json body, chunks handed to the app)."""
    handed = 0
    sent = []

    async def receive():
        nonlocal handed
        if handed >= len(chunks):
            return {"type": "http.disconnect"}
        handed += 1
        return {"type": "http.request", "body": chunks[handed - 1], "more_body": handed < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/search", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body), handed


def test_declared_length_over_limit_is_refused_and_the_body_dropped():
    app = UploadLimitMiddleware(_echo_app, max_bytes=1000)
    status, body, handed = _run(app, [(b"content-length", b"5000")], [b"x" * 5000])
    assert status == 413 and "limit is 0.001 MB" in body["detail"]  # the echo app never ran
    # Read and dropped before the connection closes (lingering close), so the client sees the 413.
    assert handed == 1


def test_a_body_too_big_to_linger_over_or_not_yet_sent_is_not_read():
    app = UploadLimitMiddleware(_echo_app, max_bytes=1000, linger_bytes=4000)
    assert _run(app, [(b"content-length", b"5000")], [b"x" * 5000])[0::2] == (413, 0)
    # A client waiting for "100 Continue" has not sent its body: reading would ask for it.
    big = UploadLimitMiddleware(_echo_app, max_bytes=1000)
    headers = [(b"content-length", b"5000"), (b"expect", b"100-continue")]
    assert _run(big, headers, [b"x" * 5000])[0::2] == (413, 0)


def test_chunked_body_is_cut_off_once_past_the_limit():
    chunks = [b"x" * 300] * 20  # 6000 bytes, no Content-Length
    seen = []

    async def recording_app(scope, receive, send):
        async def counted():
            message = await receive()
            seen.append(message)
            return message
        await _echo_app(scope, counted, send)

    status, body, handed = _run(UploadLimitMiddleware(recording_app, 1000, linger_bytes=600), [], chunks)
    assert status == 413 and "upload too large" in body["detail"]
    assert len(seen) == 3  # the 4th chunk passes the limit: it and everything after it never reach the app
    assert handed == 4 + 3  # then the 600 bytes of lingering (and the chunk that passes them) were dropped
    assert _run(UploadLimitMiddleware(_echo_app, max_bytes=1000), [], chunks)[0::2] == (413, 20)  # all dropped


def test_bodies_within_the_limit_pass_untouched():
    app = UploadLimitMiddleware(_echo_app, max_bytes=1000)
    assert _run(app, [(b"content-length", b"1000")], [b"x" * 500, b"y" * 500])[:2] == (200, {"read": 1000})
    assert _run(app, [], [b"x" * 999])[:2] == (200, {"read": 999})


def test_a_413_replaces_whatever_the_inner_app_answers_after_the_cutoff():
    """A framework that catches the exception while parsing (as a 400) must not hide the real reason."""

    async def swallowing_app(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail": "bad body"}'})

    status, body, _ = _run(UploadLimitMiddleware(swallowing_app, 100), [], [b"x" * 80] * 5)
    assert status == 413 and "upload too large" in body["detail"]


# -- thumbnails ---------------------------------------------------------------------------------------------
def _photo(path, size=(640, 480), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def test_thumbnails_fit_the_size_and_are_cached_in_memory_and_on_disk(tmp_path):
    src = _photo(tmp_path / "photo.jpg")
    cache = ThumbnailCache(tmp_path / "cache")
    key, data = cache.get(src, 128)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and max(thumb.size) == 128 and thumb.size == (128, 96)
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.get(src, 128) == (key, data)
    assert (cache.hits, cache.misses) == (1, 1)
    on_disk = list((tmp_path / "cache").rglob("*.jpg"))
    assert [p.read_bytes() for p in on_disk] == [data]

    fresh = ThumbnailCache(tmp_path / "cache")  # a restarted server reads the disk cache
    assert fresh.get(src, 128) == (key, data) and fresh.misses == 0


def test_an_edited_file_gets_a_new_thumbnail(tmp_path):
    import os

    src = _photo(tmp_path / "photo.jpg")
    cache = ThumbnailCache(tmp_path / "cache")
    key1, _ = cache.get(src, 64)
    _photo(src, size=(300, 300), color=(0, 0, 255))
    os.utime(src, ns=(1, 10**18))  # make sure the mtime differs even on coarse clocks
    key2, data2 = cache.get(src, 64)
    assert key2 != key1 and Image.open(io.BytesIO(data2)).size == (64, 64)


def test_memory_cache_stays_within_its_byte_budget(tmp_path):
    cache = ThumbnailCache(None, max_memory_bytes=3000)
    for i in range(6):
        cache.get(_photo(tmp_path / f"p{i}.png", color=(i * 40, 0, 0)), 64)
    assert cache._memory_bytes <= 3000 or len(cache._memory) == 1


def test_disk_cache_is_pruned_least_recently_used_first(tmp_path):
    import os

    cache = ThumbnailCache(tmp_path / "cache")
    keys = []
    for i in range(6):
        keys.append(cache.get(_photo(tmp_path / f"p{i}.png", size=(300, 300), color=(i * 40, 90, 0)), 128)[0])
    files = {k: next((tmp_path / "cache").rglob(f"{k}.jpg")) for k in keys}
    for n, k in enumerate(keys):  # oldest first: p0 ... p5
        os.utime(files[k], ns=(10**18 + n * 10**9, 10**18 + n * 10**9))
    total = sum(f.stat().st_size for f in files.values())
    assert cache.prune(total) == 0  # within the budget: nothing goes
    removed = cache.prune(total // 2)
    left = [k for k in keys if files[k].exists()]
    assert removed >= 3 and left == keys[removed:]  # the least recently used went first
    assert sum(files[k].stat().st_size for k in left) <= total // 2 * 0.8


def test_missing_and_broken_files(tmp_path):
    cache = ThumbnailCache(tmp_path / "cache")
    with pytest.raises(ImageGone):
        cache.get(tmp_path / "gone.jpg", 64)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(_photo(tmp_path / "ok.jpg").read_bytes()[:300])
    with pytest.raises(BadImageError):
        cache.get(broken, 64)


# -- uploads ------------------------------------------------------------------------------------------------
def _jpeg_bytes(size=(300, 200)):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def test_decode_upload_accepts_images_and_classifies_failures():
    assert decode_upload(_jpeg_bytes(), "a.jpg").size == (300, 200)
    with pytest.raises(UnsupportedImage, match="notes.txt: not an image"):
        decode_upload(b"just some text, really", "notes.txt")
    with pytest.raises(UnsupportedImage, match="empty"):
        decode_upload(b"", "empty.png")
    with pytest.raises(BadImageError, match="cut.jpg: corrupt or truncated"):
        decode_upload(_jpeg_bytes()[:400], "cut.jpg")


def test_display_name_never_echoes_folders():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\cat.jpg") == "cat.jpg"
    assert display_name("a\x00b\nc.png") == "abc.png"
    assert display_name(None) == "upload"


# -- bounds on thumbnails and decodes -----------------------------------------------------------------------
def test_thumbnail_sizes_snap_to_a_few(tmp_path):
    from lookalike.web.thumbnails import SIZES, snap_size

    assert [snap_size(s) for s in (1, 32, 64, 65, 128, 200, 256, 257, 600, 1024, 5000)] == \
        [64, 64, 64, 128, 128, 256, 256, 512, 1024, 1024, 2048]
    src = _photo(tmp_path / "photo.jpg", size=(1200, 900))
    cache = ThumbnailCache(tmp_path / "cache")
    for size in range(32, 2049, 7):  # what a page could ask with plain <img> tags
        cache.get(src, size)
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == len(SIZES) == cache.misses


def test_the_disk_cache_stays_within_its_budget_while_serving(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    budget = 40_000
    cache = ThumbnailCache(tmp_path / "cache", max_disk_bytes=budget)
    cache.prune()  # as a starting server does
    for i in range(30):  # noisy images make thumbnails of a few kB each: far more than the budget in all
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path)
        cache.get(path, 128)
        on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.jpg"))
        assert on_disk <= budget
        assert cache.disk_bytes() == on_disk
    assert cache.misses == 30


def test_a_decode_waits_for_a_slot_then_gets_server_busy(tmp_path):
    from lookalike.web.limits import DecodeSlots, ServerBusy

    slots = DecodeSlots(1, wait=0.0, retry_after=7)
    cache = ThumbnailCache(tmp_path / "cache", decode_gate=slots.hold)
    src = _photo(tmp_path / "photo.jpg")
    with slots.hold():  # another request is decoding
        with pytest.raises(ServerBusy) as info:
            cache.get(src, 128)
        with pytest.raises(ServerBusy):
            decode_upload(_jpeg_bytes(), "a.jpg", slots=slots)
    assert info.value.retry_after == 7 and "busy" in str(info.value)
    assert cache.get(src, 128)[1] and decode_upload(_jpeg_bytes(), "a.jpg", slots=slots).size == (300, 200)
    with slots.hold():  # cached thumbnails need no slot
        assert cache.get(src, 128)[1]


def test_uploads_are_reduced_and_charged_to_the_request_budget():
    from lookalike.images import PixelBudget, PixelBudgetExceeded

    buf = io.BytesIO()
    Image.new("L", (3000, 2000), 100).save(buf, format="PNG")
    budget = PixelBudget(7_000_000)
    img = decode_upload(buf.getvalue(), "big.png", min_size=224, budget=budget)
    assert img.mode == "RGB" and img.size == (750, 500)  # reduced by 2000 // 448 = 4 at once
    with pytest.raises(PixelBudgetExceeded, match="big.png: decoding its 6,000,000 pixels would pass"):
        decode_upload(buf.getvalue(), "big.png", min_size=224, budget=budget)


# -- slow bodies, hosts ---------------------------------------------------------------------------------------
def test_a_body_that_does_not_arrive_in_time_gets_408():
    from lookalike.web.limits import BodyTimeoutMiddleware

    sent = []
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}
        await asyncio.Event().wait()  # the client sends nothing more, ever

    async def send(message):
        sent.append(message)

    app = BodyTimeoutMiddleware(_echo_app, seconds=0.05)
    asyncio.run(app({"type": "http", "method": "POST", "path": "/api/search", "headers": []}, receive, send))
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"did not arrive within 0.05 seconds" in sent[1]["body"]
    # A body that arrives whole is untouched.
    assert _run(BodyTimeoutMiddleware(_echo_app, seconds=5), [], [b"x" * 10, b"y" * 5])[:2] == (200, {"read": 15})


def test_host_names_are_normalised_and_the_machine_knows_its_own():
    import socket

    from lookalike.web.hosts import as_host, machine_hosts
    from lookalike.web.limits import host_name

    assert host_name("[0:0:0:0:0:0:0:1]:8000") == "[::1]" == as_host("::1") == as_host("[::1]")
    assert host_name("Photos.Example.:443") == "photos.example" == as_host("Photos.Example.")
    assert as_host("fe80::1%eth0") == "[fe80::1]"
    assert machine_hosts("127.0.0.1") == sorted(["127.0.0.1", "localhost", "[::1]"])
    public = machine_hosts("0.0.0.0")
    assert {"127.0.0.1", "localhost", "[::1]", as_host(socket.gethostname())} <= set(public)
    assert "0.0.0.0" not in public and "evil.example" not in public
