"""One search result shape: `lookalike search --json` and the web API's search answer the same query with the
same rows (the web adds the ids the page needs)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from lookalike.search.store.index import ImageIndex

from helpers.cli import run_cli
from helpers.web import make_app


def test_cli_json_and_web_search_give_the_same_rows(gallery, tmp_path, monkeypatch, capsys):
    from lookalike.search.retrieve.verify import DEFAULT_SHORTLIST, Verifier

    monkeypatch.setenv("LOOKALIKE_HOME", str(gallery["home"]))
    with ImageIndex.open(gallery["index"]) as ix:
        query = str(ix.path_of(ix.ids()[3]))
        query_id = ix.id_of(query)
    # `lookalike search` and `lookalike serve` both verify the first 20 results unless told otherwise.
    for verify, verify_args in ((DEFAULT_SHORTLIST, []), (0, ["--verify", "0"])):
        fields = ["rank", "path", "distance", "similarity"] + (["inliers"] if verify else [])
        for self_args, self_param in (([], "false"), (["--include-self"], "true")):
            code, out, err = run_cli(["search", query, "--index", gallery["index"], "-k", "4", "--json", *self_args,
                                      *verify_args], monkeypatch, capsys)
            assert code == 0, err
            cli = json.loads(out)
            app = make_app(gallery, tmp_path)
            app.state.service.verifier = Verifier(verify) if verify else None  # as `serve --verify` sets it
            with TestClient(app) as client:
                web = client.get("/api/search", params={"id": query_id, "k": 4, "include_self": self_param}).json()
            assert list(web) == ["query", "query_id", "results"] and web["query_id"] == query_id
            assert [list(row) for row in web["results"]] == [
                ["rank", "id", "path", "distance", "similarity", "inliers"]] * 4
            assert all((row["inliers"] is None) == (not verify) for row in web["results"])
            assert cli == [{"query": web["query"], "results": [{key: row[key] for key in fields}
                                                               for row in web["results"]]}]
            assert [list(row) for row in cli[0]["results"]] == [fields] * 4
