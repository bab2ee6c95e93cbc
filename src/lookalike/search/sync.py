"""Bring an index up to date with its folder: extract only new or changed files, forget deleted ones, reuse
the vector of a renamed (or copied) file by content hash, and remember files that could not be decoded so that
they are not decoded again while unchanged. Work is committed batch by batch, so an interrupted run loses at
most the batch in flight and the next run resumes from there."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import LookalikeError
from ..images import decoder_version, list_image_files
from .features import DEFAULT_MODEL, Embedder, load_embedder
from .index import MANIFEST, ImageIndex, default_index_path, same_backbone, storage_error

# Compact the vector file once dead rows outnumber live ones (and are worth the rewrite).
COMPACT_MIN_DEAD = 1024


def _describe_backbone(m: dict) -> str:
    return f"{m['model']} ({m.get('pooling', 'avg')} pooling)"


def _check_request(index: ImageIndex, index_path: Path, model: str | None, pooling: str | None,
                   weights: str | None) -> None:
    from .features import is_checkpoint_ref

    m = index.manifest
    wanted = dict(m)
    if model and is_checkpoint_ref(model) and not Path(model).expanduser().is_file():
        index.close()
        raise LookalikeError(f"checkpoint {model} not found")
    if model:
        wanted["model"] = str(Path(model).expanduser().resolve()) if is_checkpoint_ref(model) else model
        wanted["weights"] = str(Path(weights).expanduser().resolve()) if weights else None
    elif weights:
        wanted["weights"] = str(Path(weights).expanduser().resolve())
    if pooling:
        wanted["pooling"] = pooling.lower()
    if any(wanted.get(k) != m.get(k) for k in ("model", "pooling", "weights")):
        index.close()
        raise LookalikeError(f"index {index_path} holds vectors from {_describe_backbone(m)}, not "
                             f"{_describe_backbone(wanted)}: pass --rebuild to start over with the new backbone")


def index_folder(folder, index_path=None, *, model: str | None = None, pooling: str | None = None,
                 weights: str | None = None, rebuild: bool = False, device: str = "cpu", runtime: str = "auto",
                 batch_size: int | None = None, embedder: Embedder | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Index the images under `folder`. Returns {"indexed", "added", "updated", "removed", "renamed",
    "unchanged", "skipped": [{"path", "reason"}], "skipped_known", "index_path", "notes"}; "notes" are lines
    on what opening the index found and repaired (`ImageIndex.notes`). Paths are `str` of the file system's
    names, so a name that is not valid UTF-8 holds surrogate escapes (`paths.printable` shows it).

    A file that could not be decoded is remembered with its size and mtime; while both stay the same (and so do
    the decoder's versions, `images.decoder_version`), later runs skip it without reading it, and list it last in
    "skipped" with "(unchanged since it failed)" after its reason; "skipped_known" counts those.

    With no `model`/`pooling`, an existing index keeps its backbone; a new one uses EfficientNet-Lite0 and
    average pooling. Asking for another backbone than the index's raises LookalikeError unless `rebuild`.
    `progress(done, total)` is called after each committed batch.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LookalikeError(f"{folder} is not a folder")
    root = root.resolve()
    index_path = Path(index_path).expanduser().resolve() if index_path else default_index_path(root)
    existing = None
    if not rebuild and (index_path / MANIFEST).exists():
        existing = ImageIndex.open(index_path, readonly=False)
        if Path(existing.manifest["root"]) != root:
            old_root = existing.manifest["root"]
            existing.close()
            raise LookalikeError(f"index {index_path} belongs to {old_root}, not {root}: "
                                 "choose another --index, or pass --rebuild")
    try:
        if existing is not None and embedder is None:
            _check_request(existing, index_path, model, pooling, weights)  # before the seconds a model load takes
        if embedder is None:
            if existing is not None:
                m = existing.manifest
                embedder = load_embedder(model or m["model"], device=device, pooling=pooling or m["pooling"],
                                         weights=weights if model else (weights or m.get("weights")),
                                         runtime=runtime)
            else:
                embedder = load_embedder(model or DEFAULT_MODEL, device=device, pooling=pooling or "avg",
                                         weights=weights, runtime=runtime)
        backbone = embedder.describe()
        if existing is not None and not same_backbone(existing.manifest, backbone):
            old = _describe_backbone(existing.manifest)
            existing.close()
            raise LookalikeError(f"index {index_path} holds vectors from {old}, not {_describe_backbone(backbone)}: "
                                 "pass --rebuild to start over with the new backbone")
        # `is None`, not truthiness: an index with no images is still an index (and holds the write lock).
        index = existing if existing is not None else ImageIndex.create(index_path, root=root, backbone=backbone)
        existing = None
        with index:
            try:
                summary = _sync(index, root, embedder, batch_size, progress)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                    raise
                # A full disk met outside the index's own writes (which name it themselves).
                raise storage_error(exc, index.path, writing=True) from None
            summary["notes"] = list(index.notes)
            return summary
    finally:
        if existing is not None:
            existing.close()


def _sync(index: ImageIndex, root: Path, embedder: Embedder, batch_size: int | None,
          progress: Callable[[int, int], None] | None) -> dict:
    summary = {"indexed": 0, "added": 0, "updated": 0, "removed": 0, "renamed": 0, "unchanged": 0,
               "skipped": [], "skipped_known": 0, "index_path": str(index.path)}
    known = index.entries()  # rel path -> (id, size, mtime_ns, digest, row)
    failed_before = index.failures()  # rel path -> (size, mtime_ns, reason)
    decoder = decoder_version()
    trust_failures = index.failures_decoder() == decoder  # an upgraded decoder may read what the old one could not
    known_bad: list[dict] = []
    seen: set[str] = set()
    todo: list[tuple[Path, str, int, int]] = []  # (absolute path, rel, size, mtime_ns)
    for path in list_image_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except OSError as exc:
            summary["skipped"].append({"path": str(path), "reason": f"cannot read ({exc.strerror})"})
            continue
        seen.add(rel)
        entry = known.get(rel)
        failure = failed_before.get(rel)
        if entry is not None and entry[1] == st.st_size and entry[2] == st.st_mtime_ns:
            summary["unchanged"] += 1
        elif trust_failures and failure is not None and failure[0] == st.st_size and failure[1] == st.st_mtime_ns:
            known_bad.append({"path": str(path), "reason": f"{failure[2]} (unchanged since it failed)"})
        else:
            todo.append((path, rel, st.st_size, st.st_mtime_ns))
    gone = {rel: e for rel, e in known.items() if rel not in seen}
    # Content hash -> entry whose vector a new file may reuse: deleted ones first (a rename moves the row).
    gone_by_digest = {e[3]: e for e in gone.values()}
    live_by_digest = {e[3]: e for rel, e in known.items() if rel in seen}
    claimed: set[int] = set()

    def reusable(digest: str):
        return True if digest in gone_by_digest or digest in live_by_digest else None

    done = 0
    total = len(todo)
    if progress:
        progress(0, total)
    for batch in embedder.stream(todo, batch_size=batch_size, reuse=reusable,
                                  path_of=lambda t: t[0]):
        new_vectors, pending = [], []  # pending[i] is the row that will reference new_vectors[i]
        updates, deletes, failed, cleared = [], [], [], []
        for (path, rel, size, mtime), res in batch:
            old = known.get(rel)
            digest = res.get("digest")
            if rel in failed_before and not ("reason" in res and "digest" in res):
                cleared.append(rel)  # fixed, or unreadable for now: either way the old failure no longer applies
            if "reason" in res:
                summary["skipped"].append({"path": str(path), "reason": res["reason"]})
                if digest is not None:
                    # Read but not decodable: that lasts until the file changes. A read error (permissions, a
                    # file gone since the walk) may not, so those are tried again next time.
                    failed.append((rel, size, mtime, res["reason"]))
                if old is not None:  # changed into something unreadable: its old vector no longer applies
                    deletes.append(old[0])
                    summary["removed"] += 1
                continue
            if old is not None and digest == old[3]:  # touched, same bytes
                updates.append((old[0], rel, size, mtime, digest, old[4]))
                summary["unchanged"] += 1
                continue
            if "reuse" in res:
                donor = gone_by_digest.get(digest)
                if donor is not None and donor[0] not in claimed and old is None:
                    claimed.add(donor[0])  # a rename: the row keeps its id and vector, under the new path
                    updates.append((donor[0], rel, size, mtime, digest, donor[4]))
                    summary["renamed"] += 1
                    continue
                donor = donor or live_by_digest[digest]
                # Vector rows are append-only during a run, so the donor's row is still valid: copy it.
                new_vectors.append(index.read_rows([donor[4]])[0])
            else:
                new_vectors.append(res["vector"])
            pending.append((old, rel, size, mtime, digest))
        rows = index.append_vectors(np.stack(new_vectors)) if new_vectors else []
        inserts = []
        for (old, rel, size, mtime, digest), row in zip(pending, rows):
            if old is None:
                inserts.append((rel, size, mtime, digest, row))
                summary["added"] += 1
            else:
                updates.append((old[0], rel, size, mtime, digest, row))
                summary["updated"] += 1
        index.commit(inserts=inserts, updates=updates, deletes=deletes, failed=failed, cleared=cleared,
                     decoder=decoder)
        done += len(batch)
        if progress:
            progress(done, total)
    forget = [e[0] for e in gone.values() if e[0] not in claimed]
    vanished = [rel for rel in failed_before if rel not in seen]
    if forget or vanished:
        index.commit(deletes=forget, cleared=vanished)
        summary["removed"] += len(forget)
    summary["skipped"] += known_bad
    summary["skipped_known"] = len(known_bad)
    if index.dead_rows() > max(COMPACT_MIN_DEAD, len(index)):
        index.compact()
    summary["indexed"] = len(index)
    index.touch_manifest(count=summary["indexed"])
    return summary
