"""Keep rules: which copy of a group stays, and why."""

from __future__ import annotations

import pytest

from lookalike.cleanup import choose_keeper
from lookalike.cleanup.keep import parse_date
from lookalike.errors import LookalikeError

BIG = {"path": "/p/b/big.jpg", "width": 4000, "height": 3000, "size": 900, "date": "2020:01:02 03:04:05"}
SMALL_HEAVY = {"path": "/p/a/small.jpg", "width": 800, "height": 600, "size": 5000, "date": "2019-06-01T00:00:00"}
NEW = {"path": "/p/c/very/long/new.jpg", "width": 800, "height": 600, "size": 100, "date": 1700000000}


def test_default_rule_is_resolution_and_says_why():
    pos, why = choose_keeper([SMALL_HEAVY, BIG, NEW])
    assert pos == 1 and "most pixels (4000x3000)" in why


@pytest.mark.parametrize("rule, keeper, word", [
    ("size", 0, "largest file"), ("newest", 2, "newest"), ("oldest", 0, "oldest (2019-06-01"),
    ("shortest-path", 1, "shortest path"), ("resolution", 1, "most pixels")])
def test_each_rule(rule, keeper, word):
    pos, why = choose_keeper([SMALL_HEAVY, BIG, NEW], rule)
    assert pos == keeper and word in why, why


def test_ties_fall_to_the_next_criterion_then_the_path():
    a = {"path": "/p/z.jpg", "width": 10, "height": 10, "size": 50, "mtime": 200.0}
    b = {"path": "/p/y.jpg", "width": 10, "height": 10, "size": 50, "mtime": 100.0}
    pos, why = choose_keeper([a, b])
    assert pos == 1 and "oldest" in why and "pixels" not in why  # no date: the file's mtime
    pos, why = choose_keeper([a, {**b, "mtime": 200.0}])
    assert pos == 1 and "first path" in why


def test_prefer_folder_wins_over_the_rule():
    pos, why = choose_keeper([SMALL_HEAVY, BIG, NEW], "resolution", prefer=["/p/c"])
    assert pos == 2 and "preferred folder /p/c" in why
    pos, _ = choose_keeper([SMALL_HEAVY, BIG, NEW], "resolution", prefer=["/elsewhere", "/p/a"])
    assert pos == 0


def test_unknown_values_rank_last_and_bad_input_is_one_line():
    nodate = {"path": "/p/x.jpg", "width": 1, "height": 1}
    assert choose_keeper([nodate, SMALL_HEAVY], "oldest")[0] == 1
    with pytest.raises(LookalikeError, match="unknown keep rule 'biggest'"):
        choose_keeper([BIG], "biggest")
    assert parse_date("2020:01:02 03:04:05") == parse_date("2020-01-02T03:04:05+00:00")
    assert parse_date("not a date") is None and parse_date(12.5) == 12.5
