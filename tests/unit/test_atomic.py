"""Atomic writes: the target is whole or untouched, nothing is left behind, concurrent writers don't collide."""

import os
import threading

import pytest

from helpers.files import file_mode
from lookalike.atomic import atomic_path, atomic_write


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("durable", [True, False])
def test_successful_write_replaces_the_file(tmp_path, durable):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_write(target, durable=durable) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_writers_that_need_a_path(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph"


def test_threads_writing_one_target_never_collide(tmp_path):
    target = tmp_path / "thumb.jpg"
    payloads = [bytes([i]) * 50_000 for i in range(8)]
    errors = []

    def write(data: bytes) -> None:
        try:
            for _ in range(20):
                with atomic_write(target) as fh:
                    fh.write(data)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in payloads  # one writer's whole file, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["thumb.jpg"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    with atomic_write(tmp_path / "a.json", "w") as fh:
        fh.write("{}")
    with atomic_path(tmp_path / "b.onnx") as tmp:
        tmp.write_bytes(b"graph")
    plain = tmp_path / "plain.txt"
    plain.write_text("made by open()")
    assert file_mode(tmp_path / "a.json") == file_mode(tmp_path / "b.onnx") == file_mode(plain) == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, mode):
    umask(0o022)
    target = tmp_path / "manifest.json"
    target.write_text("old")
    os.chmod(target, mode)
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new" and file_mode(target) == mode
