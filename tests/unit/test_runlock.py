"""A run folder is held by one training at a time: another process is refused with one line naming it."""

import subprocess
import sys
import textwrap

import pytest

from lookalike.errors import LookalikeError
from lookalike.train.runlock import LOCK_NAME, hold_run_dir

# Holds the folder in argv[1] as a new run, says so, and keeps it until its stdin closes.
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lookalike.train.runlock import hold_run_dir

    with hold_run_dir(Path(sys.argv[1]), new=True):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_a_folder_held_by_another_process_is_refused_with_its_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for new, flag in ((True, "--out"), (False, "--resume")):
            with pytest.raises(LookalikeError) as refused:
                with hold_run_dir(run, new=new):
                    pytest.fail("held twice")
            message = str(refused.value)
            assert message.startswith(f"{flag} {run}: process {holder.pid} is training") and "\n" not in message
        assert (run / LOCK_NAME).read_text().strip() == str(holder.pid)  # a refusal changes nothing
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert not (run / LOCK_NAME).exists() and not run.exists()  # it wrote nothing else: the folder goes too
    with hold_run_dir(run, new=True):  # free again
        assert run.is_dir()


def test_the_lock_file_of_a_killed_run_does_not_block_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"kept")
    (run / LOCK_NAME).write_text("999999999\n")  # its holder is gone, and the kernel dropped its lock
    with hold_run_dir(run, new=False):
        assert (run / LOCK_NAME).read_text().strip().isdigit()
    assert not (run / LOCK_NAME).exists() and (run / "last.pt").read_bytes() == b"kept"


def test_a_resume_needs_its_folder_and_a_new_run_a_folder(tmp_path):
    with pytest.raises(LookalikeError, match="no such run folder"):
        with hold_run_dir(tmp_path / "missing", new=False):
            pass
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LookalikeError, match="is a file, not a folder"):
        with hold_run_dir(tmp_path / "file", new=True):
            pass
