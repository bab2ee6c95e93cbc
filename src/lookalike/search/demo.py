"""`lookalike demo`: a search benchmark that needs no download.

The gallery (`sample_photos`) is built from the real photos shipped with this package (scikit-image's sample
data: public domain, CC0 or BSD-3-Clause) plus edited copies of each (crop, rotation, rescale, JPEG re-compression,
colour shift) whose original is known. Every edited copy is used as a query against the index of all images; a
hit is relevant when it comes from the same photo. The figures: precision@1 and precision@5, and how far apart
same-photo and different-photo images sit (which is what the near-duplicate threshold is chosen from).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# The gallery's photos and edits: `sample_photos` (PHOTOS is read at run time, so it can be narrowed).
from ..models.registry import DEFAULT_MODEL
from .sample_photos import EDITS, PHOTOS, build_gallery, photo_of


def run_demo(out_dir, model: str = DEFAULT_MODEL, photos=None, k: int = 5, write_report: bool = True,
             embedder=None, verify: int = 0) -> dict:
    """Build the gallery under `out_dir/gallery`, index it, query with every edited copy, write the report.

    `photos`: names of sample photos [default: PHOTOS]; `embedder`: another descriptor than `model`'s
    default one (e.g. `load_embedder(inputs=...)`); `verify`: the first results re-ranked by spatial
    verification, as `lookalike search` does (0: the descriptor alone)."""
    photos = tuple(photos or PHOTOS)
    from .store.index import ImageIndex
    from .retrieve.query import compare, search
    from .indexing.sync import index_folder

    start = time.perf_counter()
    verifier = None
    if verify:  # a bad number fails before the gallery is built
        from .retrieve.verify import Verifier

        verifier = Verifier(verify)
    out_dir = Path(out_dir).expanduser().resolve()
    gallery = out_dir / "gallery"
    queries = build_gallery(gallery, photos)
    summary = index_folder(gallery, out_dir / "index", model=None if embedder else model, rebuild=True,
                           embedder=embedder)
    with ImageIndex.open(out_dir / "index") as ix:
        ids = [ix.id_of(q["path"]) for q in queries]
        qvec = np.stack([ix.vector_of(i) for i in ids])
        results = search(ix, qvec, k=max(k, verify), exclude_ids=[[i] for i in ids])
        if verifier is not None:
            results = [verifier.rerank(hits, verifier.features_of(q["path"]))[:k]
                       for q, hits in zip(queries, results)]
        vectors, all_ids = ix.vectors(), ix.ids()
        all_paths = [ix.path_of(int(i)) for i in all_ids]
    p1, p5, rows = [], [], []
    for q, hits in zip(queries, results):
        relevant = [photo_of(Path(h["path"])) == q["photo"] for h in hits]
        p1.append(float(relevant[0]) if relevant else 0.0)
        p5.append(sum(relevant) / k)
        rows.append({"query": str(q["path"]), "photo": q["photo"], "edit": q["edit"],
                     "results": [{**{key: h[key] for key in ("rank", "path", "distance", "similarity")},
                                  "relevant": rel} for h, rel in zip(hits, relevant)]})
    dist, _ = compare(vectors)
    families = np.asarray([photo_of(p) for p in all_paths])
    same = families[:, None] == families[None, :]
    off_diag = ~np.eye(len(families), dtype=bool)
    by_edit = {}
    for edit in EDITS:
        sel = [r for r in rows if r["edit"] == edit]
        by_edit[edit] = sum(r["results"][0]["relevant"] for r in sel if r["results"]) / max(1, len(sel))
    result = {
        "model": embedder.model if embedder else model,
        "gallery": str(gallery),
        "originals": len(photos),
        "queries": len(queries),
        "indexed": summary["indexed"],
        "verify": verify,
        "precision_at_1": float(np.mean(p1)),
        "precision_at_5": float(np.mean(p5)),
        "precision_at_1_by_edit": by_edit,
        "same_photo_distance_max": float(dist[same & off_diag].max()),
        "same_photo_distance_median": float(np.median(dist[same & off_diag])),
        "different_photo_distance_min": float(dist[~same].min()),
        "different_photo_distance_median": float(np.median(dist[~same])),
        "report": None,
    }
    result["seconds"] = time.perf_counter() - start
    if write_report:
        from .retrieve.report import write_report as _write

        # Heat map rows grouped by photo (original, then its copies), so each photo is one bright block.
        order = sorted(range(len(all_paths)), key=lambda i: (families[i], all_paths[i].parent.name == "edited",
                                                             all_paths[i].name))
        result["report"] = str(_write(out_dir / "report.html", rows, dist[np.ix_(order, order)],
                                      [str(all_paths[i]) for i in order], gallery, result))
        result["seconds"] = time.perf_counter() - start
    return result
