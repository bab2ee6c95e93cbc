"""Errors that the option parser itself finds (a value out of range, an unknown option or command, a missing
argument) are user errors like any other: one line, exit code 2, the command's help named."""

from __future__ import annotations

import pytest

from helpers.cli import assert_one_line_error, run_cli


@pytest.mark.parametrize("args, fragments", [
    (["dupes", "-k", "0"], ["--neighbours", "lookalike dupes --help"]),
    (["dupes", "--bogus"], ["--bogus"]),
    (["nonexistent"], ["nonexistent", "lookalike --help"]),
    (["search"], ["QUERY", "lookalike search --help"]),
    (["train", "--epochs", "many"], ["--epochs", "lookalike train --help"]),
])
def test_parser_errors_are_one_line(args, fragments, monkeypatch, capsys):
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_no_arguments_shows_the_help(monkeypatch, capsys):
    code, out, _ = run_cli([], monkeypatch, capsys)
    assert code == 0 and "Usage: lookalike" in out and "index" in out
