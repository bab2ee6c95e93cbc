"""The index's manifest (`manifest.json`): backbone, preprocessing, pooling, dimension, format version and root
folder, written whole (atomic replace). Its fields and their checks, reading and writing it, where an index
lives for a folder, and how two backbones compare."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ...atomic import atomic_write
from ...errors import LookalikeError
from ...paths import home
from .errors import storage_error
from .layout import FORMAT_VERSION, MANIFEST

_NONE = type(None)
# field: (allowed types, required)
_MANIFEST_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "model": ((str,), True), "pooling": ((str,), True), "dim": ((int,), True), "preprocess": ((dict,), True),
    "root": ((str,), True), "format_version": ((int,), False), "weights": ((str, _NONE), False),
    "count": ((int,), False), "created_at": ((str,), False), "updated_at": ((str,), False),
    "model_digest": ((str, _NONE), False),
}
_PREPROCESS_FIELDS: dict[str, tuple[type, ...]] = {
    "input_size": (int,), "resize_size": (int,), "mean": (list,), "std": (list,), "interpolation": (str,),
}


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest (a missing field or one of the wrong type), None if nothing."""
    if not isinstance(m, dict):
        return "not a JSON object"

    def bad_type(value, types) -> bool:
        return not isinstance(value, types) or (isinstance(value, bool) and bool not in types)

    missing = [k for k, (_, required) in _MANIFEST_FIELDS.items() if required and k not in m]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (types, _) in _MANIFEST_FIELDS.items():
        if key in m and bad_type(m[key], types):
            return f"{key} is {type(m[key]).__name__}, not {' or '.join(t.__name__ for t in types)}"
    if m["dim"] <= 0:
        return f"dim is {m['dim']}"
    for key, types in _PREPROCESS_FIELDS.items():
        value = m["preprocess"].get(key)
        if value is None:
            continue
        if bad_type(value, types) or (isinstance(value, int) and value <= 0):
            return f"preprocess.{key} is {value!r}"
        if isinstance(value, list) and (len(value) != 3 or any(bad_type(x, (int, float)) for x in value)):
            return f"preprocess.{key} is {value!r}, not 3 numbers"
    return None


def read_manifest(path: Path) -> dict:
    """The checked manifest of the index folder `path`; LookalikeError when it is missing, unreadable or not
    Lookalike's."""
    mpath = path / MANIFEST
    try:
        data = mpath.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise LookalikeError(f"no index at {path}: build one with `lookalike index FOLDER`") from None
    except OSError as exc:
        raise storage_error(exc, path, writing=False) from None
    try:
        manifest = json.loads(data.decode("utf-8"))
        problem = _manifest_problem(manifest)
    except ValueError as exc:
        problem = f"{exc.__class__.__name__}: {exc}"
    if problem:
        # Lookalike writes its manifest whole (atomic replace), so a bad one was written by something else.
        raise LookalikeError(f"index manifest {mpath} is damaged or not Lookalike's ({problem}): restore it "
                             f"from a backup, or index the images into a new folder with --index (this one "
                             "keeps its vectors)")
    return manifest


def _newer_format(path: Path, version: int) -> LookalikeError:
    return LookalikeError(f"index {path} has format {version}, newer than this Lookalike reads ({FORMAT_VERSION}): "
                          "upgrade lookalike")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_index_path(folder) -> Path:
    """`folder/.lookalike`, or a folder under `$LOOKALIKE_HOME/indexes` when that variable is set."""
    folder = Path(folder).expanduser().resolve()
    if os.environ.get("LOOKALIKE_HOME"):
        tag = hashlib.sha1(os.fsencode(str(folder))).hexdigest()[:12]
        return home() / "indexes" / f"{folder.name or 'root'}-{tag}"
    return folder / ".lookalike"


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)


def resolve_index_dir(path) -> Path:
    """Accept the index folder itself, or an image folder that holds `.lookalike/`."""
    path = Path(path).expanduser()
    if (path / MANIFEST).is_file():
        return path.resolve()
    if (path / ".lookalike" / MANIFEST).is_file():
        return (path / ".lookalike").resolve()
    if path.is_dir() and os.environ.get("LOOKALIKE_HOME"):
        alt = default_index_path(path)
        if (alt / MANIFEST).is_file():
            return alt
    return path.resolve()


# "whitening": the record of the PCA-whitening applied to the stored vectors (`whitening.store_for_index`), if any.
BACKBONE_KEYS = ("model", "pooling", "dim", "preprocess", "weights", "whitening")


def describe_backbone(m: dict, with_dim: bool = False) -> str:
    """`efficientnet_lite0 (avg pooling, whole photo at 416 px x 1,1.25, borders trimmed[, 1280-d])` for a manifest
    or a backbone description: what error messages name when two descriptors differ."""
    pre = m.get("preprocess") or {}
    parts = [f"{m.get('pooling') or 'avg'} pooling"]
    if pre.get("fit") == "whole":
        scales = list(pre.get("scales") or [1.0])
        parts.append(f"whole photo at {pre['long_side']} px"
                     + (f" x {','.join(f'{f:g}' for f in scales)}" if scales != [1.0] else ""))
    if pre.get("trim"):
        parts.append("borders trimmed")
    if pre.get("layers"):
        parts.append(f"layers {'+'.join(pre['layers'])}")
    if with_dim:
        parts.append(f"{m.get('dim')}-d")
    return f"{m.get('model')} ({', '.join(parts)})"


def same_backbone(a: dict, b: dict) -> bool:
    """Whether two manifests (or a manifest and a backbone description) give comparable vectors."""
    # The weights file's digest, where both sides know it (indexes and exports made before digests do not).
    digests = a.get("model_digest"), b.get("model_digest")
    return all(a.get(k) == b.get(k) for k in BACKBONE_KEYS) and (None in digests or digests[0] == digests[1])
