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
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
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
    expect(cards.first.locator(".inliers")).to_have_text(re.compile(r"^\d+ matches$"))
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
    page.wait_for_function(THUMBS_LOADED, arg="#dupes img")
    page.screenshot(path=str(tmp_path / "dupes.png"), full_page=True)
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
