"""The process-group helpers that need no second process: a group of one, `--nproc` in argv, and how the
launcher turns a failed group into one exit code and line."""

from types import SimpleNamespace

import pytest

from lookalike.distributed import _failure_code, argv_without_nproc, join
from lookalike.errors import LookalikeError


def test_outside_torchrun_a_group_of_one_does_nothing(monkeypatch):
    import torch

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    group = join("cpu")
    assert (group.rank, group.size, group.is_main, group.active) == (0, 1, True, False)
    t = torch.ones(3)
    group.all_reduce([t])
    assert t.tolist() == [1, 1, 1] and group.same({"a": [1, 2]}) == {"a": [1, 2]}
    with group.main_first():
        pass
    group.close()


def test_argv_without_nproc():
    assert argv_without_nproc(["train", "--nproc", "2", "--data", "d"]) == ["train", "--data", "d"]
    assert argv_without_nproc(["index", "x", "--nproc=4", "--json"]) == ["index", "x", "--json"]


def _failed(**codes):
    return SimpleNamespace(failures={int(k[1:]): SimpleNamespace(exitcode=v) for k, v in codes.items()})


def test_failure_codes_name_the_cause_once():
    assert _failure_code(_failed(r0=130, r1=130)) == 130  # Ctrl-C: rank 0 said so
    assert _failure_code(_failed(r0=2, r1=2)) == 2  # a user error rank 0 printed
    with pytest.raises(LookalikeError, match=r"process 1 of the group stopped \(killed by SIGKILL\).*resume"):
        _failure_code(_failed(r0=3, r1=-9), hint="; resume")  # rank 0 stopped because rank 1 was killed
    with pytest.raises(LookalikeError, match=r"process 1 .*exit code 2"):
        _failure_code(_failed(r0=3, r1=2))  # an error only rank 1 met (it does not print)


def test_an_error_unwinding_after_the_launchers_sigterm_is_the_group_being_lost(monkeypatch):
    import lookalike.distributed as d

    monkeypatch.setattr(d, "_stopped_by_launcher", False)
    plain = ValueError("Invalid bounding box")
    assert d.as_group_lost(plain) is plain  # without a SIGTERM an error is what it is
    with pytest.raises(d.GroupLost):
        d._stop_on_sigterm(15, None)
    # The handler's GroupLost, raised inside matplotlib's native drawing, came out as matplotlib's ValueError.
    lost = d.as_group_lost(plain)
    assert isinstance(lost, d.GroupLost) and "another process stopped" in str(lost)
    own = LookalikeError("disk full")
    assert d.as_group_lost(own) is own  # a one-line error of the tool's own keeps its words
