"""The photo library over HTTP: browsing pages by cursor, filters and sorts, one image's facts and original, the
duplicates scan job, and actions (trash, move, undo) with their guards. Each test that acts on files gets a
library of its own; the real desktop trash is never touched (XDG_DATA_HOME points into the test's folder)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers.web import make_app, photo
from lookalike.search.store.layout import FORMAT_VERSION

LAYOUT = {  # path in the library -> (photo, edit)
    "2019/beach/astronaut.jpg": ("astronaut", None),
    "2019/beach/astronaut-copy.jpg": ("astronaut", "same"),
    "2019/coffee.jpg": ("coffee", None),
    "2020/chelsea.png": ("chelsea", None),
    "2020/party/rocket.jpg": ("rocket", None),
    "camera.tif": ("camera", None),
}


def make_library(folder: Path, embedder) -> dict:
    """A small library in folders, one byte-identical copy among it, indexed: {"photos", "index", "ids"}."""
    from lookalike.search.indexing.sync import index_folder
    from lookalike.search.store.index import ImageIndex

    for rel, (name, edit) in LAYOUT.items():
        target = folder / "photos" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if edit == "same":
            shutil.copyfile(folder / "photos" / "2019/beach/astronaut.jpg", target)
        else:
            photo(name).save(target)
    index_folder(folder / "photos", folder / "index", embedder=embedder)
    with ImageIndex.open(folder / "index") as ix:
        ids = {Path(ix.path_of(i)).relative_to(folder / "photos").as_posix(): int(i) for i in ix.ids()}
    return {"photos": folder / "photos", "index": folder / "index", "ids": ids}


@pytest.fixture(scope="module")
def library(tmp_path_factory, embedder) -> dict:
    return make_library(tmp_path_factory.mktemp("library"), embedder)


@pytest.fixture(scope="module")
def client(library, embedder, tmp_path_factory):
    app = make_app({"embedder": embedder}, tmp_path_factory.mktemp("library_thumbs"), index_path_override=library["index"])
    with TestClient(app) as c:
        yield c


@pytest.fixture
def own(tmp_path, embedder, monkeypatch):
    """A library of this test's own, its app and a trash under the test's folder: (library, client factory)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    lib = make_library(tmp_path, embedder)

    def client_for(**kwargs):
        return TestClient(make_app({"embedder": embedder}, tmp_path, index_path_override=lib["index"], **kwargs))

    return lib, client_for


def _all_pages(client, **params) -> list[dict]:
    seen, cursor = [], None
    for _ in range(20):
        r = client.get("/api/images", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        seen += body["images"]
        cursor = body["next"]
        if cursor is None:
            return seen
    raise AssertionError("the cursor never reached the end")


def test_pages_by_cursor_reach_every_image_once_in_each_sort(client, library):
    paths = sorted(library["ids"])
    for sort in ("folder", "name", "date", "-date", "-name"):
        rows = _all_pages(client, limit=2, sort=sort)
        assert sorted(r["path"] for r in rows) == paths, sort
        assert len({r["id"] for r in rows}) == len(paths)
    by_folder = _all_pages(client, limit=4, sort="folder")
    assert [r["path"] for r in by_folder] == paths
    names = [Path(r["path"]).name for r in _all_pages(client, limit=3, sort="name")]
    assert names == sorted(names)
    first = client.get("/api/images", params={"limit": 2}).json()
    assert first["total"] == len(paths)
    image = first["images"][0]
    assert set(image) == {"id", "path", "width", "height", "size", "mtime", "date"}
    assert image["size"] == (library["photos"] / image["path"]).stat().st_size
    # an offset jump lands where the cursor walk does
    assert client.get("/api/images", params={"offset": 3, "limit": 1}).json()["images"][0]["path"] == paths[3]


def test_folder_and_name_filters_and_the_folder_tree(client, library):
    under = client.get("/api/images", params={"folder": "2019"}).json()
    assert under["total"] == 3
    assert {r["path"] for r in under["images"]} == {p for p in library["ids"] if p.startswith("2019/")}
    assert client.get("/api/images", params={"folder": "2019/beach/"}).json()["total"] == 2
    assert client.get("/api/images", params={"folder": "201"}).json()["total"] == 0  # a folder, not a prefix
    named = client.get("/api/images", params={"q": "ASTRO"}).json()
    assert named["total"] == 2 and all("astronaut" in r["path"] for r in named["images"])
    assert client.get("/api/images", params={"q": "%"}).json()["total"] == 0  # no wildcards
    assert client.get("/api/folders").json() == {"folder": "", "folders": ["2019", "2020"]}
    assert client.get("/api/folders", params={"folder": "2019"}).json()["folders"] == ["beach"]


def test_bad_listing_requests_get_one_line(client):
    for params in ({"sort": "size"}, {"cursor": "bm90IGEgY3Vyc29y"}, {"limit": 100000}):
        r = client.get("/api/images", params=params)
        assert r.status_code == 422, params
    cursor = client.get("/api/images", params={"limit": 1, "sort": "name"}).json()["next"]
    r = client.get("/api/images", params={"cursor": cursor, "sort": "date"})
    assert r.status_code == 422 and "cursor" in r.json()["detail"]


def test_image_facts_original_and_large_rendition(client, library):
    image_id = library["ids"]["2019/coffee.jpg"]
    facts = client.get(f"/api/images/{image_id}").json()
    assert facts["path"] == "2019/coffee.jpg" and {"taken", "camera", "date"} <= set(facts)
    r = client.get(f"/api/images/{image_id}/original")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (library["photos"] / "2019/coffee.jpg").read_bytes()
    tif = client.get(f"/api/images/{library['ids']['camera.tif']}/original")
    assert tif.headers["content-type"] == "application/octet-stream"
    assert tif.headers["content-disposition"].startswith("attachment")
    big = client.get(f"/api/images/{image_id}/thumbnail", params={"size": 2048})
    assert big.status_code == 200 and big.headers["content-type"] == "image/jpeg"
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/api/images/999999/original").status_code == 404


def test_session_and_the_guards_of_actions(own):
    lib, client_for = own
    target = lib["photos"] / "2019/coffee.jpg"
    body = {"action": "trash", "ids": [lib["ids"]["2019/coffee.jpg"]]}
    with client_for() as c:
        session = c.get("/api/session").json()
        assert session["actions"] is True and session["read_only"] is False and len(session["csrf"]) > 20
        assert c.post("/api/actions", json=body).status_code == 403  # no CSRF token
        assert c.post("/api/actions", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
        foreign = c.post("/api/actions", json=body, headers={"X-CSRF-Token": session["csrf"],
                                                             "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        r = c.post("/api/actions", json={"action": "move", "ids": body["ids"]},
                   headers={"X-CSRF-Token": session["csrf"]})
        assert r.status_code == 422 and "--move-to" in r.json()["detail"]
        from lookalike.locking import acquire

        with acquire(lib["index"] / "write.lock"):  # as `lookalike index` holds it
            busy = c.post("/api/actions", json=body, headers={"X-CSRF-Token": session["csrf"]})
        assert busy.status_code == 409 and busy.headers["retry-after"]
    with client_for(read_only=True) as c:
        assert c.get("/api/session").json()["actions"] is False
        token = c.get("/api/session").json()["csrf"]
        assert c.post("/api/actions", json=body, headers={"X-CSRF-Token": token}).status_code == 405
    with client_for(allow_actions=False) as c:
        token = c.get("/api/session").json()["csrf"]
        assert c.post("/api/actions", json=body, headers={"X-CSRF-Token": token}).status_code == 403
    assert target.is_file()
    assert not (lib["index"] / "journals").exists() or not any((lib["index"] / "journals").iterdir())


def test_trash_then_undo_through_the_api(own, tmp_path):
    lib, client_for = own
    target = lib["photos"] / "2020/chelsea.png"
    before = target.read_bytes()
    with client_for() as c:
        token = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
        r = c.post("/api/actions", json={"action": "trash", "ids": [lib["ids"]["2020/chelsea.png"], 999999]},
                   headers=token)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["done"] == [lib["ids"]["2020/chelsea.png"]]
        assert answer["skipped"] == [{"id": 999999, "reason": "not in the index"}]
        assert not target.exists()
        assert list((tmp_path / "xdg/Trash/files").iterdir())
        assert (lib["index"] / "journals" / f"{answer['journal']}.jsonl").is_file()
        assert c.get("/api/images").json()["total"] == len(LAYOUT) - 1
        assert c.post("/api/undo", json={"journal": "../../etc/passwd"}, headers=token).status_code == 422
        undone = c.post("/api/undo", json={"journal": answer["journal"]}, headers=token)
        assert undone.status_code == 200, undone.text
        assert target.read_bytes() == before


def test_move_goes_to_the_servers_folder(own, tmp_path):
    lib, client_for = own
    with client_for(move_to=tmp_path / "moved") as c:
        token = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
        r = c.post("/api/actions", json={"action": "move", "ids": [lib["ids"]["2020/party/rocket.jpg"]]},
                   headers=token).json()
    assert r["done"] and (tmp_path / "moved/2020/party/rocket.jpg").is_file()
    assert not (lib["photos"] / "2020/party/rocket.jpg").exists()
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match="inside the library"):
        client_for(move_to=lib["photos"] / "sub")


def test_duplicates_scan_job_and_acting_on_its_groups(own):
    lib, client_for = own
    with client_for() as c:
        token = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
        assert c.get("/api/dupes").json()["state"] == "idle"
        assert c.post("/api/dupes/scan", json={"verify": 0}).status_code == 403  # CSRF
        job = c.app.state.web.dupes_job
        job._state["state"] = "running"  # as while a scan runs: a second start is refused
        assert c.post("/api/dupes/scan", json={"verify": 0}, headers=token).status_code == 409
        job._state["state"] = "idle"
        assert c.post("/api/dupes/scan", json={"verify": 0}, headers=token).status_code == 202
        job.wait(60)
        state = c.get("/api/dupes").json()
        assert state["state"] == "done", state
        assert state["schema"] == 1 and state["journal"] is None
        exact = [g for g in state["groups"] if g["kind"] == "exact"]
        assert len(exact) == 1
        group = exact[0]
        assert group["why"] and {group["keeper"], *(m["path"] for m in group["members"])} == {
            "2019/beach/astronaut.jpg", "2019/beach/astronaut-copy.jpg"}
        assert group["keeper_image"]["path"] == group["keeper"] and len(group["members"]) == 1
        member = group["members"][0]
        assert set(member) >= {"id", "path", "distance", "inliers", "width", "height", "size", "date", "action"}
        assert member["width"] == 192 and member["distance"] == 0.0
        r = c.post("/api/actions", json={"action": "trash", "groups": [
            {"keeper": group["keeper_id"], "ids": [member["id"]]}]}, headers=token).json()
        assert r["done"] == [member["id"]]
        after = c.get("/api/dupes").json()
        assert after["journal"] == r["journal"]
        marked = [g for g in after["groups"] if g["keeper_id"] == group["keeper_id"]][0]
        assert marked["keeper_image"]["action"] is None and [m["action"] for m in marked["members"]] == ["trash"]
        assert (lib["photos"] / group["keeper"]).is_file()


def _date_order(index: Path) -> list[int]:
    import sqlite3

    from lookalike.search.store.listing import Listing

    listing = Listing(sqlite3.connect(f"file:{index / 'index.db'}?mode=ro", uri=True))
    try:
        return [r.id for r in listing.page(sort="date", limit=100)] + [listing.stored_dates()]
    finally:
        listing.conn.close()


def test_the_date_key_is_stored_indexed_and_added_to_older_indexes(own, embedder):
    import json
    import sqlite3

    from lookalike.search.indexing.sync import index_folder

    lib, _ = own
    db = lib["index"] / "index.db"
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT f.date, f.taken, i.mtime_ns FROM facts f JOIN images i ON i.id = f.id").fetchall()
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN SELECT f.id FROM facts f JOIN images i ON "
                                                "i.id = f.id WHERE f.date >= '2000' ORDER BY f.date, f.id LIMIT 5"))
    assert len(rows) == len(LAYOUT) and {"images_name", "facts_date"} <= names  # made by the index run
    assert "facts_date" in plan and "TEMP B-TREE" not in plan  # pages walk the index, no sort
    for date, taken, mtime_ns in rows:
        assert date == (taken or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mtime_ns // 10**9)))
    stored = _date_order(lib["index"])
    assert stored[-1] is True and len(stored) == len(LAYOUT) + 1

    # An index of format 5 (no date key): read as it is, the same order by a scan; the next run adds the key.
    conn.execute("DROP INDEX facts_date")
    conn.execute("ALTER TABLE facts DROP COLUMN date")
    conn.commit()
    conn.close()
    manifest = json.loads((lib["index"] / "manifest.json").read_text())
    (lib["index"] / "manifest.json").write_text(json.dumps({**manifest, "format_version": 5}))
    assert _date_order(lib["index"]) == stored[:-1] + [False]
    assert index_folder(lib["photos"], lib["index"], embedder=embedder)["added"] == 0
    assert _date_order(lib["index"]) == stored
    assert json.loads((lib["index"] / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
