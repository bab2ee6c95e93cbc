"""What reading one file for the index comes to (`search.file_results`): each outcome of `decode_file`, the
order and vectors of `stream`, and how `index_folder` treats a file that could not be read as opposed to one
that could not be decoded."""

from __future__ import annotations

import os

import numpy as np

from lookalike.images import MAX_FILE_BYTES
from lookalike.search.store.index import ImageIndex
from lookalike.search.indexing.sync import index_folder

from helpers.search import photo, write_originals
from lookalike.search.sample_photos import jpeg_bytes


def _failures(index_path) -> dict:
    with ImageIndex.open(index_path, readonly=False) as ix:
        return ix.failures()


def test_a_failure_that_becomes_unreadable_is_forgotten_and_tried_again(home, embedder, tmp_path):
    folder = tmp_path / "photos"
    write_originals(folder, ["coffee", "camera"])
    odd = folder / "odd.jpg"
    odd.write_bytes(b"not a picture")
    emb = embedder
    first = index_folder(folder, embedder=emb)
    assert set(_failures(first["index_path"])) == {"odd.jpg"}  # read, not decodable: remembered

    odd.unlink()
    with open(odd, "wb") as f:  # now too large to read at all (sparse: no disk used)
        f.truncate(MAX_FILE_BYTES + 1)
    second = index_folder(folder, embedder=emb)
    assert [(os.path.basename(s["path"]), "limit" in s["reason"]) for s in second["skipped"]] == [("odd.jpg", True)]
    assert second["skipped_known"] == 0 and _failures(first["index_path"]) == {}  # a read error is not remembered

    third = index_folder(folder, embedder=emb)  # so it is looked at again (a stat, no read), not "unchanged"
    assert third["skipped_known"] == 0 and [os.path.basename(s["path"]) for s in third["skipped"]] == ["odd.jpg"]

    odd.unlink()
    odd.write_bytes(jpeg_bytes(photo("rocket")))
    fourth = index_folder(folder, embedder=emb)
    assert (fourth["added"], fourth["indexed"], fourth["skipped"]) == (1, 3, [])


def test_decode_file_outcomes(home, embedder, tmp_path):
    from lookalike.search.describe.file_results import Decoded, Reused, Undecodable, Unread

    emb = embedder
    good = write_originals(tmp_path, ["coins"])[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")

    missing = emb.decode_file(tmp_path / "missing.jpg")
    assert isinstance(missing, Unread) and missing.digest is None and "no such file" in missing.reason
    assert "missing.jpg" not in missing.reason  # the reason without the path, which the caller names

    broken = emb.decode_file(bad)
    assert isinstance(broken, Undecodable) and len(broken.digest) == 32 and "not an image" in broken.reason

    decoded = emb.decode_file(good)
    assert isinstance(decoded, Decoded) and decoded.array.shape == (224, 224, 3)

    asked = []
    reused = emb.decode_file(good, reuse=lambda digest: asked.append(digest) or "row 7")
    assert reused == Reused(digest=decoded.digest, found="row 7") and asked == [decoded.digest]
    assert isinstance(emb.decode_file(good, reuse=lambda digest: None), Decoded)  # nothing to reuse: decoded


def test_stream_keeps_input_order_and_embeds_what_decoded(home, embedder, tmp_path):
    from lookalike.search.describe.file_results import Embedded, Undecodable, Unread

    emb = embedder
    good = write_originals(tmp_path, ["coffee", "camera", "rocket"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    items = [("a", good[0]), ("b", bad), ("c", tmp_path / "gone.jpg"), ("d", good[1]), ("e", good[2])]
    batches = list(emb.stream(items, batch_size=2, path_of=lambda item: item[1]))
    assert [len(b) for b in batches] == [2, 2, 1]
    results = [(item[0], res) for batch in batches for item, res in batch]
    assert [name for name, _ in results] == ["a", "b", "c", "d", "e"]
    kinds = [type(res) for _, res in results]
    assert kinds == [Embedded, Undecodable, Unread, Embedded, Embedded]
    vectors = np.stack([res.vector for _, res in results if isinstance(res, Embedded)])
    assert np.allclose(vectors, emb.embed_paths(good)[0], atol=1e-5)
