"""The journal of a run: `INDEX/journals/<utc>-<pid>.jsonl`, one JSON object a line, each written and fsynced
before the step it describes (`begin`) and after it (`done`, `failed`, `skipped`); undo appends `undone`.
A line cut short by a kill is ignored when the journal is read back."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import fsync_dir
from ..errors import LookalikeError
from ..paths import printable
from .pathcodec import decode_path

FORMAT = "lookalike-cleanup-journal"
VERSION = 1
FOLDER = "journals"
MAX_LINE = 1 << 16  # a line longer than any entry this module writes is not read


class Journal:
    """An open journal, appended to line by line."""

    def __init__(self, path: Path, fh) -> None:
        self.path = path
        self._fh = fh

    @classmethod
    def create(cls, index_dir: Path, header: dict) -> "Journal":
        folder = index_dir / FOLDER
        folder.mkdir(exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{stamp}-{os.getpid()}.jsonl"
        journal = cls(path, open(path, "xb"))
        journal.write({"kind": "header", "format": FORMAT, "version": VERSION, **header})
        fsync_dir(folder)
        return journal

    @classmethod
    def reopen(cls, path: Path) -> "Journal":
        return cls(path, open(path, "ab"))

    def write(self, entry: dict) -> None:
        self._fh.write(json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def read_journal(path: Path) -> tuple[dict, list[dict]]:
    """(header, steps): each step is its `begin` entry with `state` set to the last of done, failed, skipped
    or undone written for it ("begun" when none was), and `temp` when a cross-device copy named one."""
    header: dict | None = None
    steps: dict[int, dict] = {}
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise LookalikeError(f"cannot read journal {printable(path)}: {exc.strerror}") from None
    with fh:
        for raw in fh:
            entry = _parse(raw)
            if entry is None:
                continue
            kind, seq = entry.get("kind"), entry.get("seq")
            if kind == "header" and header is None:
                header = entry
            elif kind == "begin" and isinstance(seq, int):
                steps[seq] = {**entry, "state": "begun"}
            elif isinstance(seq, int) and seq in steps and kind in ("done", "failed", "skipped", "undone"):
                steps[seq]["state"] = kind
                steps[seq].update({k: v for k, v in entry.items() if k not in ("kind", "seq")})
            elif kind == "temp" and isinstance(seq, int) and seq in steps:
                steps[seq]["temp"] = entry.get("path")
    if header is None or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise LookalikeError(f"{printable(path)} is not a Lookalike journal (or one from a newer version)")
    return header, [steps[k] for k in sorted(steps)]


def _parse(raw: bytes) -> dict | None:
    if len(raw) > MAX_LINE or not raw.endswith(b"\n"):
        return None  # the last line of a run killed while writing it
    try:
        entry = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def step_path(step: dict, key: str) -> Path | None:
    value: Any = step.get(key)
    return None if value is None else Path(decode_path(value, f"journal entry {step.get('seq')} {key}"))

