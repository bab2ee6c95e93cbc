"""Bring an index up to date with its folder: extract only new or changed files, forget deleted ones, reuse
the vector of a renamed (or copied) file by content hash, and remember files that could not be decoded so that
they are not decoded again while unchanged. Work is committed batch by batch, so an interrupted run loses at
most the batch in flight and the next run resumes from there."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...errors import LookalikeError
from ...file_kinds import WalkReport, walk_images
from ...images import decoder_version, iter_image_files
from ..describe.features import DEFAULT_MODEL, INPUT_KEYS, Embedder, input_options, inputs_of, load_embedder
from ..describe.file_results import Reused, Skipped, Undecodable
from ..store.index import (MANIFEST, ImageIndex, IndexEntry, IndexWriter, default_index_path, describe_backbone,
                    same_backbone, storage_error)

# Compact the vector file once dead rows outnumber live ones (and are worth the rewrite).
COMPACT_MIN_DEAD = 1024


def whiten_request(whiten) -> str | None:
    """`index_folder`'s `whiten` as the manifest records it: "index", an absolute folder, or None (False)."""
    from ..describe.whitening import folder_key

    if whiten in (None, False):
        return None
    if whiten is True or whiten == "index":
        return "index"
    folder = Path(whiten).expanduser()
    if not folder.is_dir():
        raise LookalikeError(f"--whiten-on {whiten}: not a folder")
    return folder_key(folder)


def _check_request(index: ImageIndex, index_path: Path, model: str | None, pooling: str | None,
                   weights: str | None, inputs: dict | None = None, whiten=None) -> None:
    from ..describe.features import is_checkpoint_ref

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
    if inputs is not None:
        have = m.get("preprocess") or {}
        asked = {**inputs_of(have), **inputs}  # what was not asked for stays as the index has it
        wanted["preprocess"] = {**{k: v for k, v in have.items() if k not in INPUT_KEYS},
                                **input_options(asked.get("long_side"), asked.get("scales"), asked["trim"],
                                                asked.get("layers"))}
    from ..describe.model_digest import check_unchanged, digest_of

    check_unchanged(m, digest_of(wanted["model"], wanted.get("weights")), index_path,
                    rebuild_hint="pass --rebuild to index every image with the new weights")
    if any(wanted.get(k) != m.get(k) for k in ("model", "pooling", "weights", "preprocess")):
        index.close()
        raise LookalikeError(f"index {index_path} holds vectors from {describe_backbone(m)}, not "
                             f"{describe_backbone(wanted)}: pass --rebuild to start over with the new backbone")
    if whiten is not None:
        have = m.get("whiten")
        asked = whiten_request(whiten)
        if have is not None and asked != have:
            index.close()
            now = "without whitening" if asked is None else f"with a whitening fitted on {asked}"
            raise LookalikeError(f"index {index_path} holds vectors whitened by a fit on {have}; to index {now}, "
                                 "pass --rebuild to start over")


def index_folder(folder, index_path=None, *, model: str | None = None, pooling: str | None = None,
                 weights: str | None = None, rebuild: bool = False, device: str = "cpu", runtime: str = "auto",
                 batch_size: int | None = None, embedder: Embedder | None = None,
                 progress: Callable[[int, int], None] | None = None, ann: str | None = None,
                 ann_progress: Callable[[int, int], None] | None = None, stream: Callable | None = None,
                 inputs: dict | None = None, whiten=None,
                 facts_progress: Callable[[int, int], None] | None = None,
                 keypoints_progress: Callable[[int, int], None] | None = None) -> dict:
    """Index the images under `folder`. Returns {"indexed", "added", "updated", "removed", "renamed",
    "unchanged", "skipped": [{"path", "reason"}], "skipped_known", "index_path", "ann", "notes"}; "ann" is the
    search backend's kind and parameters (`ann.Backend.params()`, with "requested"); "notes" are lines
    on what opening the index found and repaired (`ImageIndex.notes`). Paths are `str` of the file system's
    names, so a name that is not valid UTF-8 holds surrogate escapes (`paths.printable` shows it).

    A file that could not be decoded is remembered with its size and mtime; while both stay the same (and so do
    the decoder's versions, `images.decoder_version`), later runs skip it without reading it, and list it last in
    "skipped" with "(unchanged since it failed)" after its reason; "skipped_known" counts those.

    `ann` (auto, exact, hnsw, ivf or ivfpq) is stored in the manifest; None keeps the index's (new ones: auto,
    which picks by size and switches as the index grows, `ann.choose`). The ANN file is saved once per run.

    With no `model`/`pooling`/`inputs`, an existing index keeps its backbone; a new one uses EfficientNet-Lite0,
    the backbone's centre crop and average pooling. `inputs` (`features.input_options`: the whole photo at a
    size, at several scales) is part of the descriptor. Asking for another descriptor than the index's raises
    LookalikeError unless `rebuild`.

    `whiten`: None keeps the index's choice (a new index: none); False: none; True or "index": PCA-whitening
    (`whitening.py`) fitted on the index's own vectors; a folder: fitted on that folder's images. It is fitted
    at the end of the first run that asks for it, stored in the index (`whitening-<sha>.npz`, recorded with the
    vectors in the database and in the manifest), applied to every stored vector in one atomic switch of the
    vector file, and from then on to every new vector and to every query (`features.embedder_for_index`).
    Turning it off, or fitting it on something else, needs `rebuild` (the unwhitened vectors are gone).
    `progress(done, total)` is called after each committed batch, `ann_progress(done, total)` while the ANN
    structure is built (vectors added), `facts_progress(done, total)` while the headers of images whose facts
    the index lacks are read (`facts.fill_facts`: "facts_read" counts them), `keypoints_progress(done, total)`
    while the local features of images indexed before they were stored are taken from their renditions
    (`keypoints.fill_keypoints`: "keypoints_stored" counts them). `stream(embedder)` gives what
    replaces `embedder.stream` (same arguments, same batches): `sharded.ShardedStream` embeds across the
    processes of a torchrun group.
    """
    from ..store.ann import CHOICES
    from .facts import fill_facts
    from .keypoints import fill_keypoints

    if ann is not None and ann not in CHOICES:
        raise LookalikeError(f"unknown search backend {ann!r}: use one of {', '.join(CHOICES)}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LookalikeError(f"{folder} is not a folder")
    root = root.resolve()
    index_path = Path(index_path).expanduser().resolve() if index_path else default_index_path(root)
    index, embedder = _open_writer(index_path, root, rebuild, embedder, model, pooling, weights, device, runtime,
                                   inputs, whiten, ann)
    with index:
        try:
            summary = _sync(index, root, embedder, batch_size, progress, ann, ann_progress, stream)
            summary["facts_read"] = fill_facts(index, facts_progress)
            summary["keypoints_stored"] = fill_keypoints(index, keypoints_progress)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise
            # A full disk met outside the index's own writes (which name it themselves).
            raise storage_error(exc, index.path, writing=True) from None
        summary["notes"] = list(index.notes)
        return summary


def _open_writer(index_path: Path, root: Path, rebuild: bool, embedder: Embedder | None, model: str | None,
                 pooling: str | None, weights: str | None, device: str, runtime: str, inputs: dict | None, whiten,
                 ann: str | None) -> tuple[IndexWriter, Embedder]:
    """The index's writer (reopened, or started with the run's descriptor) and the embedder of the run, checked
    against the index's descriptor, with the index's whitening; the manifest records a new `whiten` request."""
    # The lock first: whether to open or start the index is decided under it, so a writer that started one in
    # this folder meanwhile (another `index`, an `import`) is reopened, never replaced. Only --rebuild replaces.
    writer = IndexWriter.take(index_path)
    try:
        existing = writer if not rebuild and writer.reopen() else None
        if existing is not None and Path(existing.manifest["root"]) != root:
            raise LookalikeError(f"index {index_path} belongs to {existing.manifest['root']}, not {root}: "
                                 "choose another --index, or pass --rebuild")
        request = whiten_request(whiten) if whiten is not None else None  # a missing folder fails first
        if existing is not None:
            _reconcile_whitening(existing)
            if embedder is None:  # before the seconds a model load takes
                _check_request(existing, index_path, model, pooling, weights, inputs, whiten)
        embedder = embedder or _embedder_for(existing, model, pooling, weights, device, runtime, inputs)
        if existing is not None and existing.whitening is not None and embedder.whitening is None:
            from ..describe.whitening import load_for_index

            embedder.with_whitening(load_for_index(existing.path, existing.whitening), existing.whitening)
        backbone = embedder.describe()
        if existing is not None and "model_digest" not in existing.manifest and backbone.get("model_digest"):
            existing.touch_manifest(model_digest=backbone["model_digest"])  # an index made before digests
        if existing is not None and not same_backbone(existing.manifest, backbone):
            raise LookalikeError(f"index {index_path} holds vectors from {describe_backbone(existing.manifest)}, "
                                 f"not {describe_backbone(backbone)}: pass --rebuild to start over with the new "
                                 "backbone")
        if existing is None:
            writer.start(root=root, backbone=backbone, ann=ann, replace=rebuild)
        if whiten is not None and writer.manifest.get("whiten") != request:
            writer.touch_manifest(whiten=request)
    except BaseException:
        writer.close()
        raise
    return writer, embedder


def _embedder_for(existing: IndexWriter | None, model: str | None, pooling: str | None, weights: str | None,
                  device: str, runtime: str, inputs: dict | None) -> Embedder:
    """The embedder a run asks for: the index's own descriptor where the run leaves it open, else the defaults."""
    if existing is None:
        return load_embedder(model or DEFAULT_MODEL, device=device, pooling=pooling or "avg", weights=weights,
                             runtime=runtime, inputs=inputs)
    m = existing.manifest
    return load_embedder(model or m["model"], device=device, pooling=pooling or m["pooling"],
                         weights=weights if model else (weights or m.get("weights")), runtime=runtime,
                         inputs={**inputs_of(m.get("preprocess")), **(inputs or {})})


WALK_BATCH = 2000  # walked files looked up in the database per batch


def _walk(root: Path, skipped: list[dict], report: WalkReport) -> Iterator[list[tuple[Path, str, int, int]]]:
    """Batches of (absolute path, root-relative '/'-separated path, size, mtime_ns) of the image files under
    `root`; files that cannot be stat'ed go to `skipped`, photos it cannot decode and other files to `report`."""
    prefix = len(str(root).rstrip(os.sep)) + 1
    batch: list[tuple[Path, str, int, int]] = []
    for path in walk_images(root, report):
        text = str(path)
        rel = text[prefix:] if os.sep == "/" else text[prefix:].replace(os.sep, "/")
        try:
            st = os.stat(text)
        except OSError as exc:
            skipped.append({"path": text, "reason": f"cannot read ({exc.strerror})"})
            continue
        batch.append((path, rel, st.st_size, st.st_mtime_ns))
        if len(batch) >= WALK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _reconcile_whitening(index: IndexWriter) -> None:
    """The manifest's copy of the whitening record follows the database's (a kill between the two writes)."""
    if index.manifest.get("whitening") != index.whitening:
        index.touch_manifest(whitening=index.whitening)


# Vectors (or images of a --whiten-on folder) a whitening is fitted on, at most: a seeded sample beyond that.
MAX_FIT_VECTORS = 20_000


def _apply_whitening(index: IndexWriter, embedder: Embedder, request: str) -> None:
    """Fit the whitening asked for, store it, rewrite the stored vectors whitened (one atomic switch that also
    records it) and make `embedder` apply it to the vectors still to come."""
    import json

    from ..describe.whitening import fit_whitening, power_for, store_for_index

    rng = np.random.default_rng(0)
    if request == "index":
        ids = index.ids()
        if len(ids) < 2:
            return  # nothing to fit on yet: the next run tries again
        if len(ids) > MAX_FIT_VECTORS:
            ids = ids[np.sort(rng.choice(len(ids), MAX_FIT_VECTORS, replace=False))]
        # One vector at a time: memory stays at the sample's, whatever the index's size.
        fit_on = np.stack([np.asarray(index.vector_of(int(i)), np.float32) for i in ids])
    else:
        files = [str(p) for p in iter_image_files(Path(request))]
        if len(files) > MAX_FIT_VECTORS:
            files = [files[i] for i in np.sort(rng.choice(len(files), MAX_FIT_VECTORS, replace=False))]
        fit_on, _ = embedder.embed_paths(files)
        if len(fit_on) < 2:
            raise LookalikeError(f"--whiten-on {request}: fewer than two readable images to fit the whitening on")
    whitening = fit_whitening(fit_on, power=power_for(index.manifest.get("pooling"))).padded(index.dim)
    record = store_for_index(index.path, whitening, {"fitted_on": request, "vectors": int(len(fit_on))})
    index.compact(transform=whitening, meta={"whitening": json.dumps(record, sort_keys=True)})
    index.touch_manifest(whitening=record)
    embedder.with_whitening(whitening, record)


@dataclass
class _Walked:
    """What the walk found: files to read, rows of the root it did not find, and failed files left alone."""

    todo: list = field(default_factory=list)  # (absolute path, rel, size, mtime_ns, old entry or None)
    gone: dict = field(default_factory=dict)  # id -> entry of a root row the walk did not find
    known_bad: list = field(default_factory=list)  # skipped rows of files unchanged since they failed
    failures_seen: set = field(default_factory=set)
    failed_before: dict = field(default_factory=dict)  # rel path -> FailureEntry (files that failed: few)
    decoder: str = ""
    claimed: set = field(default_factory=set)  # ids of gone rows a renamed file took over


def _sync(index: IndexWriter, root: Path, embedder: Embedder, batch_size: int | None,
          progress: Callable[[int, int], None] | None, ann: str | None = None,
          ann_progress: Callable[[int, int], None] | None = None, stream: Callable | None = None) -> dict:
    """Walk, look the files up in batches, embed what is new or changed, forget what is gone (only rows the
    root owns: imported rows stay), compact, then bring the ANN file in step. Memory: the walk's paths and the
    files to read, never a dict of every row."""
    summary = {"indexed": 0, "added": 0, "updated": 0, "removed": 0, "renamed": 0, "unchanged": 0,
               "skipped": [], "skipped_known": 0, "index_path": str(index.path)}
    report = WalkReport()
    walked = _walk_index(index, root, summary, report)
    # Content hash -> entry whose vector a new file may reuse: deleted ones first (a rename moves the row).
    gone_by_digest = {e.digest: e for e in walked.gone.values() if e.digest}
    has_digest = index.digest_checker() if walked.todo else None

    def reusable(digest: str):
        return True if digest in gone_by_digest or (has_digest is not None and has_digest(digest)) else None

    done = 0
    total = len(walked.todo)
    if progress:
        progress(0, total)
    embedder.keep_renditions = True  # from the decode the vector needs anyway (`store/renditions.py`)
    batches = stream(embedder) if stream else embedder.stream
    for batch in batches(walked.todo, batch_size=batch_size, reuse=reusable, path_of=lambda t: t[0]):
        _store_batch(index, batch, walked, gone_by_digest, summary)
        done += len(batch)
        if progress:
            progress(done, total)
    if has_digest is not None:
        has_digest.close()
    _finish(index, embedder, walked, summary, report)
    summary["ann"] = index.update_ann(ann, progress=ann_progress)
    summary["indexed"] = len(index)
    index.touch_manifest(count=summary["indexed"])
    return summary


def _walk_index(index: IndexWriter, root: Path, summary: dict, report: WalkReport) -> _Walked:
    """Walk `root`, sorting each file into unchanged (counted), failed and unchanged since (`known_bad`) or to
    read (`todo`), and collect the root's rows the walk did not find."""
    walked = _Walked(failed_before=index.failures(), decoder=decoder_version())
    # An upgraded decoder may read what the old one could not.
    trust_failures = index.failures_decoder() == walked.decoder
    with index.walk_table() as mark_seen:
        for batch in _walk(root, summary["skipped"], report):
            known = index.lookup_paths([rel for _, rel, _, _ in batch])
            mark_seen([rel for _, rel, _, _ in batch])
            for path, rel, size, mtime in batch:
                entry = known.get(rel)
                failure = walked.failed_before.get(rel)
                if failure is not None:
                    walked.failures_seen.add(rel)
                if entry is not None and entry.size == size and entry.mtime_ns == mtime:
                    summary["unchanged"] += 1
                elif trust_failures and failure is not None and (failure.size, failure.mtime_ns) == (size, mtime):
                    walked.known_bad.append({"path": str(path),
                                             "reason": f"{failure.reason} (unchanged since it failed)"})
                else:
                    walked.todo.append((path, rel, size, mtime, entry))
        # Rows of the root that the walk did not find; rows brought in by `lookalike import` are kept.
        walked.gone = dict(index.unseen_entries())
    return walked


def _store_batch(index: IndexWriter, batch: list, walked: _Walked, gone_by_digest: dict, summary: dict) -> None:
    """Commit one embedded batch: new and changed files' vectors, renames (a gone row moves to its new path),
    files that failed, and failures that no longer apply."""
    new_vectors, pending = [], []  # pending[i] is the row that will reference new_vectors[i]
    updates, deletes, failed, cleared = [], [], [], []
    kept = []  # (rel, size, mtime, None): rows whose bytes, and so whose rendition, stay the same
    for (path, rel, size, mtime, old), res in batch:
        digest = res.digest
        if rel in walked.failed_before and not isinstance(res, Undecodable):
            cleared.append(rel)  # fixed, or unreadable for now: either way the old failure no longer applies
        if isinstance(res, Skipped):
            summary["skipped"].append({"path": str(path), "reason": res.reason})
            if isinstance(res, Undecodable):
                # Read but not decodable: that lasts until the file changes. A read error (permissions, a
                # file gone since the walk) may not, so those are tried again next time.
                failed.append((rel, size, mtime, res.reason))
            if old is not None:  # changed into something unreadable: its old vector no longer applies
                deletes.append(old.id)
                summary["removed"] += 1
            continue
        if old is not None and digest == old.digest:  # touched, same bytes
            updates.append((old.id, rel, size, mtime, digest, old.row))
            kept.append((rel, size, mtime, None))
            summary["unchanged"] += 1
            continue
        if isinstance(res, Reused):
            donor = gone_by_digest.get(digest)
            if donor is not None and donor.id not in walked.claimed and old is None:
                walked.claimed.add(donor.id)  # a rename: the row keeps its id and vector, under the new path
                updates.append((donor.id, rel, size, mtime, digest, donor.row))
                kept.append((rel, size, mtime, None))
                summary["renamed"] += 1
                continue
            vector = _donor_vector(index, donor, digest)
            if vector is None:  # cannot happen while rows are only deleted at the end of a run
                summary["skipped"].append({"path": str(path), "reason": "its vector could not be reused: "
                                           "run `lookalike index` again"})
                continue
            new_vectors.append(vector)
        else:
            new_vectors.append(res.vector)
        pending.append((old, rel, size, mtime, digest))
    rows = index.append_vectors(np.stack(new_vectors)) if new_vectors else []
    # Renditions of the files decoded now; a row that kept its bytes (touched, renamed) keeps its rendition,
    # restamped (jpeg None) so that the stat check accepts it.
    renditions = [(rel, size, mtime, res.rendition) for (path, rel, size, mtime, old), res in batch
                  if getattr(res, "rendition", None)]
    renditions += kept
    inserts = []
    for (old, rel, size, mtime, digest), row in zip(pending, rows):
        if old is None:
            inserts.append((rel, size, mtime, digest, row))
            summary["added"] += 1
        else:
            updates.append((old.id, rel, size, mtime, digest, row))
            summary["updated"] += 1
    index.commit(inserts=inserts, updates=updates, deletes=deletes, failed=failed, cleared=cleared,
                 decoder=walked.decoder)
    if renditions or deletes:
        index.store_renditions(renditions, drop_orphans=bool(deletes))


def _donor_vector(index: IndexWriter, donor, digest: str):
    """The stored vector of a file of the same content (`donor`, else any row with `digest`), or None."""
    if donor is None:
        found = index.entry_by_digest(digest)
        donor = found[1] if found is not None else None
    if donor is None:
        return None
    # Vector rows are append-only during a run, so the donor's row is still valid: copy it.
    return index.read_rows([donor.row])[0]


def _finish(index: IndexWriter, embedder: Embedder, walked: _Walked, summary: dict, report: WalkReport) -> None:
    """After the last batch: forget the gone rows no rename took and the failures of vanished files, complete
    the summary, then whiten (a first fit) or compact when dead rows outnumber live ones."""
    forget = [e.id for e in walked.gone.values() if e.id not in walked.claimed]
    vanished = [rel for rel in walked.failed_before if rel not in walked.failures_seen]
    if forget or vanished:
        index.commit(deletes=forget, cleared=vanished)
        if forget:
            index.store_renditions((), drop_orphans=True)
        summary["removed"] += len(forget)
    summary["skipped"] += walked.known_bad
    summary["skipped_known"] = len(walked.known_bad)
    summary["unsupported"] = report.unsupported  # photos in formats this install cannot decode
    summary["other_files"] = dict(sorted(report.other.items()))  # counted only
    request = index.manifest.get("whiten")
    if request is not None and index.whitening is None:
        _apply_whitening(index, embedder, request)  # compacts on the way
    elif index.dead_rows() > max(COMPACT_MIN_DEAD, len(index)):
        index.compact()
