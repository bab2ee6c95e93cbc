"""The help of `lookalike` and of every command, `--quality` presets, and whole paths in piped tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.search import tiny_checkpoint, write_originals

COMMANDS = ["demo", "index", "search", "compare", "dupes", "undo", "serve", "train", "evaluate", "export", "import",
            "models", "eval-search"]


def _help(args: list, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run_cli([*args, "--help"], monkeypatch, capsys)
    assert code == 0, err
    return out


def test_commands_are_listed_in_the_order_a_user_needs_them(monkeypatch, capsys):
    text = _help([], monkeypatch, capsys)
    listed = re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", text, flags=re.M)
    assert listed == COMMANDS, text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_reads_cleanly(command, monkeypatch, capsys):
    text = _help([command], monkeypatch, capsys)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage, usage  # FOLDER, QUERY..., never {folder}
    assert not re.search(r"<(bool|str|int|float|path|list\[[^]]*\])[^>]*>", text), text  # no type tags
    lines = [line.rstrip(" │") for line in text.splitlines()]
    assert not [line for line in lines if re.search(r"\s\.$", line)], text  # no " ." left by dropped markup
    assert "[default:" in text or command in ("demo", "models", "import"), text


def test_dupes_help_shows_its_threshold_default_and_neighbours(monkeypatch, capsys):
    text = " ".join(_help(["dupes"], monkeypatch, capsys).replace("│", " ").split())
    assert "[default: 0.55 for the two-layer default descriptor, 0.6 for others]" in text
    assert "--neighbours -k" in text and "[default: --verify's N; 10 with --verify 0]" in text


def test_unknown_quality_is_one_line_for_every_command_that_takes_it(tmp_path, home, monkeypatch, capsys):
    for args in (["index", tmp_path], ["search", tmp_path / "q.jpg", "--index", tmp_path], ["serve"],
                 ["eval-search", tmp_path]):
        code, out, err = run_cli([*args, "--quality", "best"], monkeypatch, capsys)
        assert_one_line_error(code, err, "--quality 'best'", "default or high")
    assert not (tmp_path / ".lookalike").exists()  # refused before anything was written


def test_default_preset_matches_the_verifier_default():
    from lookalike.search.presets import PRESETS
    from lookalike.search.retrieve.verify import DEFAULT_SHORTLIST

    assert PRESETS["default"].verify == DEFAULT_SHORTLIST


@pytest.fixture
def small(tmp_path, home) -> dict:
    """Eight photos in a folder and as a class-folder benchmark, and a small backbone that embeds them quickly."""
    photos = write_originals(tmp_path / "photos")
    bench = tmp_path / "bench"
    for i, path in enumerate(photos):
        (bench / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (bench / f"class{i % 2}" / path.name).write_bytes(path.read_bytes())
    return {"photos": tmp_path / "photos", "bench": bench, "model": tiny_checkpoint(tmp_path / "tiny.pt")}


def _descriptor(record: dict) -> dict:
    return {"pooling": record["pooling"], "whiten": record["whiten"], "preprocess": record["preprocess"]}


def test_index_quality_high_records_the_descriptor_eval_search_uses(small, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["eval-search", small["bench"], "--model", small["model"], "--quality", "high",
                              "--json"], monkeypatch, capsys)
    assert code == 0, err
    evaluated = json.loads(out)["descriptor"]
    code, out, err = run_cli(["index", small["photos"], "--index", tmp_path / "ix", "--model", small["model"],
                              "--quality", "high", "--json"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert _descriptor(manifest) == _descriptor(evaluated)
    assert manifest["pooling"] == "rmac" and manifest["whiten"] == "index"
    assert manifest["preprocess"]["long_side"] == 416 and manifest["preprocess"]["scales"] == [1.0, 1.25]
    # An option given explicitly overrides the preset's value; the others stay the preset's.
    code, out, err = run_cli(["index", small["photos"], "--index", tmp_path / "ix2", "--model", small["model"],
                              "--quality", "high", "--size", "320", "--no-whiten", "--json"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ix2" / "manifest.json").read_text())
    assert manifest["preprocess"]["long_side"] == 320 and manifest["preprocess"]["scales"] == [1.0, 1.25]
    assert manifest["pooling"] == "rmac" and manifest.get("whiten") in (None, False)


def test_search_table_prints_whole_paths_when_piped(small, tmp_path, monkeypatch, capsys):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "photos"
    deep.parent.mkdir()
    small["photos"].rename(deep)
    code, out, err = run_cli(["index", deep, "--model", small["model"]], monkeypatch, capsys)
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "80")
    query = deep / "coffee.jpg"
    code, out, err = run_cli(["search", query, "--index", deep, "-k", "3", "--verify", "0"], monkeypatch, capsys)
    assert code == 0, err
    assert len(str(query)) > 80
    assert str(query) in out.splitlines()[0]  # the title: the query
    hits = [line for line in out.splitlines() if re.search(r"│ \d+ +│", line)]
    assert len(hits) == 3 and all(re.search(re.escape(str(deep)) + r"/\w+\.jpg", line) for line in hits), out
    assert "…" not in out, out
