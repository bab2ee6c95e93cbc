"""End to end in a real browser: Playwright drives Debian's Chromium against the real server under uvicorn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.web import LiveServer, make_app, photo
from lookalike.search.sample_photos import centre_crop as crop, photo_of as family

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
THUMBS_LOADED = """sel => {
  const imgs = Array.from(document.querySelectorAll(sel));
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def live(gallery, tmp_path_factory):
    from lookalike.web.hosts import LOOPBACK_NAMES

    from lookalike.search.retrieve.verify import Verifier

    app = make_app(gallery, tmp_path_factory.mktemp("web_browser"), allowed_hosts=LOOPBACK_NAMES)  # as `serve` does
    app.state.service.verifier = Verifier()  # as `serve` does: the first 20 results verified
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def _watch(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    # An image whose src changed before it loaded (arrow keys in the detail view) is aborted: not a failure.
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url} ({req.failure})")
            if req.failure != "net::ERR_ABORTED" else None)
    return problems


def test_upload_a_query_and_see_the_result_grid(live, browser, gallery, tmp_path):
    from playwright.sync_api import expect

    query = tmp_path / "my-cat.jpg"
    crop(photo("chelsea"), 0.7).save(query, quality=80)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _watch(page)
    page.goto(live.url)
    expect(page.locator("#fact-count")).to_have_text(str(len(gallery["files"])))
    expect(page.locator("#fact-model")).to_contain_text("efficientnet_lite0")

    page.set_input_files("#file", str(query))
    cards = page.locator("#results .card")
    expect(cards).to_have_count(10)
    expect(page.locator("#query-name")).to_have_text("my-cat.jpg")
    names = cards.locator(".name").all_text_contents()
    assert [family(n) for n in names[:4]] == ["chelsea"] * 4
    expect(cards.first.locator(".inliers")).to_have_text(re.compile(r"^verified: \d+ matching points?$"))
    page.wait_for_function(THUMBS_LOADED, arg="#results img")
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
    assert (tmp_path / "search.png").stat().st_size > 10_000

    # More results: the same upload is searched again.
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST"):
        page.select_option("#k", "20")
    expect(cards).to_have_count(20)

    # Click a result: it becomes the query (by id), and the grid follows.
    target = cards.nth(4)
    target_name = target.locator(".name").text_content()
    target_id = target.get_attribute("data-id")
    target.locator(".thumb").click()
    expect(page.locator("#query-name")).to_have_text(target_name)
    assert page.url.endswith(f"#id={target_id}")  # the back button returns to the previous search
    expect(cards.first.locator(".name")).not_to_have_text(target_name)  # the query itself is not a result
    first_family = family(cards.first.locator(".name").text_content())
    assert first_family == family(target_name)

    # Compare three of them.
    for i in range(3):
        cards.nth(i).locator(".pick input").check()
    expect(page.locator("#compare-count")).to_have_text("3")
    page.click("#tab-compare")
    page.click("#compare-run")
    expect(page.locator("#compare-table tbody tr")).to_have_count(3)
    expect(page.locator("#compare-table td.self")).to_have_count(3)
    page.wait_for_function(THUMBS_LOADED, arg="#compare-table img")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    # Near-duplicate groups.
    page.click("#tab-dupes")
    page.click("#dupes-form button[type=submit]")
    expect(page.locator("#dupes-status")).to_contain_text("group")
    assert page.locator("#dupes > li").count() >= 4
    expect(page.locator("#dupes .keeper .why").first).to_contain_text("keeper: ")
    expect(page.locator("#dupes .facts", has_text="verified: ").first).to_be_visible()  # the default scan verifies
    page.wait_for_function(THUMBS_LOADED, arg="#dupes img")
    _shot(page, "dupes")
    assert problems == []


def test_phone_width_layout_and_error_message(live, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True, color_scheme="dark"
    )
    problems = _watch(page)
    page.goto(live.url)
    query = tmp_path / "rocket.jpg"
    crop(photo("rocket"), 0.8).save(query, quality=85)
    page.set_input_files("#file", str(query))
    expect(page.locator("#results .card")).to_have_count(10)
    page.wait_for_function(THUMBS_LOADED, arg="#results img")
    # Nothing wider than the screen, and two results side by side.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    boxes = [page.locator("#results .card").nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[1]["x"] > boxes[0]["x"]
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=False)

    # Drag and drop: a file dropped on the drop zone is searched like a chosen one.
    is_upload = lambda r: r.url.endswith("/api/search") and r.request.method == "POST"  # noqa: E731
    with page.expect_response(is_upload) as dropped:
        page.evaluate("""async () => {
      const cards = document.querySelectorAll('#results .card');
      const blob = await (await fetch(cards[0].querySelector('img').src)).blob();
      const data = new DataTransfer();
      data.items.add(new File([blob], 'dropped.jpg', { type: 'image/jpeg' }));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
    }""")
    assert dropped.value.status == 200
    expect(page.locator("#query-name")).to_have_text("dropped.jpg")
    expect(page.locator("#status")).not_to_have_class("status error")
    expect(page.locator("#results .card")).to_have_count(10)

    # A file that is not an image: the server's message, shown on the page.
    bad = tmp_path / "notes.txt"
    bad.write_text("not a picture")
    page.set_input_files("#file", str(bad))
    expect(page.locator("#status")).to_have_text("notes.txt: not an image (unrecognised format)")
    expect(page.locator("#status")).to_have_class("status error")
    assert [p for p in problems if "415" not in p] == []


# -- the library: browse, filter, detail, find similar, trash and undo, a cross-site POST ----------------------
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"  # git-ignored; look at them after a run
LIBRARY_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "moon")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture(scope="module")
def library_server(embedder, tmp_path_factory):
    """40 small images in two folders (five crops of eight photos), indexed; served with a trash of its own."""
    from lookalike.search.indexing.sync import index_folder
    from lookalike.web.hosts import LOOPBACK_NAMES

    base = tmp_path_factory.mktemp("web_library_browser")
    for n, name in enumerate(LIBRARY_PHOTOS):
        folder = base / "photos" / ("2019" if n % 2 else "2020/trip")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(5):
            crop(photo(name), 1.0 - 0.08 * k).resize((96, 96)).save(folder / f"{name}-{k}.jpg", quality=85)
    index_folder(base / "photos", base / "index", embedder=embedder)
    app = make_app({"embedder": embedder}, base, index_path_override=base / "index", allowed_hosts=LOOPBACK_NAMES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(base / "xdg"))
        with LiveServer(app) as server:
            yield server, base


def test_library_browse_filter_detail_similar_trash_undo(library_server, browser):
    from playwright.sync_api import expect

    live, base = library_server
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    problems = _watch(page)
    page.goto(live.url)
    expect(page.locator("#lib-count")).to_have_text("40 images")  # the collection, without any upload
    page.wait_for_function(THUMBS_LOADED, arg="#lib-grid img")
    _shot(page, "library")
    assert page.locator("#lib-grid .tile").count() < 40  # only what is near the viewport exists

    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    expect(page.locator('#lib-grid .tile[data-i="39"]')).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")

    page.fill("#lib-q", "coffee")
    expect(page.locator("#lib-count")).to_have_text("5 images")
    expect(page.locator("#lib-grid .tile")).to_have_count(5)
    page.fill("#lib-q", "")
    expect(page.locator("#lib-count")).to_have_text("40 images")
    page.click("#subfolders button:text-is('2020')")
    expect(page.locator("#subfolders button")).to_have_text(["trip"])
    page.click("#subfolders button:text-is('trip')")
    expect(page.locator("#lib-count")).to_have_text("20 images")
    expect(page.locator("#crumbs")).to_contain_text("trip")
    _shot(page, "library-folder")
    page.click("#crumbs button:text-is('All photos')")
    expect(page.locator("#lib-count")).to_have_text("40 images")

    page.locator('#lib-grid .tile[data-i="0"] button').click()
    expect(page.locator("#detail")).to_be_visible()
    first = page.locator("#detail-name").text_content()
    page.wait_for_function("() => document.getElementById('detail-img').naturalWidth > 0")
    _shot(page, "detail")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#detail-name")).not_to_have_text(first)
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#detail-name")).to_have_text(first)
    assert page.locator("#detail-original").get_attribute("href").endswith("/original")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()

    page.locator('#lib-grid .tile[data-i="0"] button').click()
    page.click("#detail-similar")
    expect(page.locator("#tab-search")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#results .card").first).to_be_visible()
    expect(page.locator("#results .inliers")).to_have_count(0)  # not verified: nothing said
    _shot(page, "similar")

    page.click("#tab-library")
    page.fill("#lib-q", "moon-0")
    expect(page.locator("#lib-count")).to_have_text("1 image")
    target = next((base / "photos").rglob("moon-0.jpg"))
    page.locator("#lib-grid .tile button").first.click()
    page.click("#detail-trash")
    expect(page.locator("#confirm-text")).to_contain_text("moon-0.jpg")
    _shot(page, "confirm-trash")
    page.click("#confirm-ok")
    expect(page.locator("#undo-text")).to_have_text("Trashed 1 file.")
    expect(page.locator("#lib-count")).to_have_text("0 images")
    assert not target.exists() and list((base / "xdg/Trash/files").iterdir())
    page.click("#undo")
    expect(page.locator("#undo-text")).to_contain_text("Put back 1 file")
    assert target.is_file()
    assert problems == []


def test_a_cross_site_post_is_refused_and_touches_nothing(library_server, browser):
    live, base = library_server
    before = sorted(p.name for p in (base / "photos").rglob("*.jpg"))
    page = browser.new_page()
    token = page.request.get(f"{live.url}/api/session").json()["csrf"]
    # A page of another site, served by the browser's own routing, posts to the server as any site could.
    page.route("http://evil.example/", lambda route: route.fulfill(content_type="text/html", body="<p>hi</p>"))
    page.goto("http://evil.example/")
    status = page.evaluate("""async ([url, token]) => {
        try {
          const r = await fetch(url + "/api/actions", {method: "POST", mode: "no-cors", credentials: "include",
            headers: {"Content-Type": "text/plain"}, body: JSON.stringify({action: "trash", ids: [1, 2, 3]})});
          return r.type;
        } catch (e) { return "blocked"; }
    }""", [live.url, token])
    assert status in ("opaque", "blocked")
    r = page.request.post(f"{live.url}/api/actions", data={"action": "trash", "ids": [1]},
                          headers={"Origin": "http://evil.example", "X-CSRF-Token": token})
    assert r.status == 403
    assert sorted(p.name for p in (base / "photos").rglob("*.jpg")) == before
