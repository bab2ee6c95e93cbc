"""Search backends (`search/store/ann/`): recall against exact, incremental add / change / delete, the saved file
(damaged, stale, killed while written), and the automatic choice by size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike.errors import LookalikeError
from lookalike.search.store import ann
from lookalike.search.store.compact import Pca, as_float16


def clustered(n: int, dim: int = 64, clusters: int = 200, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: clustered like CNN features, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(20_200)
    base, queries = x[:20_000], x[20_000:]
    ids = np.arange(len(base), dtype=np.int64) * 2 + 5  # ids are not positions
    return ids, base, queries


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


FAST = {  # small structures for a 20k test set
    "hnsw": {"m": 16, "ef_construction": 40, "ef_search": 64},
    "ivf": {"nlist": 64, "nprobe": 8},
    "ivfpq": {"nlist": 64, "nprobe": 16, "pq_bytes": 16, "opq": False, "rerank": 8},
}


def test_exact_backend_matches_the_matrix_product(data):
    ids, base, queries = data
    dist, found = ann.build("exact", ids, base).search(queries, 10)
    sims = queries @ base.T
    top = np.argsort(-sims, axis=1)[:, :10]
    assert np.array_equal(found, ids[top])
    expected = np.sqrt(np.clip(2 - 2 * np.take_along_axis(sims, top, axis=1), 0, None))
    assert np.allclose(dist, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_ann_recall_against_exact(data, kind):
    ids, base, queries = data
    _, truth = ann.build("exact", ids, base).search(queries, 10)
    backend = ann.build(kind, ids, base, **FAST[kind])
    lookup = ann.vector_lookup(ids, base)
    dist, found = backend.search(queries, 10, lookup=lookup)
    assert recall_at(found, truth) >= 0.9
    assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first
    assert backend.params()["backend"] == kind and backend.params()["count"] == len(ids)


def test_pca_and_float16_keep_recall(data):
    ids, base, queries = data
    _, truth = ann.build("exact", ids, base).search(queries, 10)
    pca = Pca.fit(base, 32)
    reduced = pca.apply(base)
    assert reduced.shape == (len(base), 32) and np.allclose(np.linalg.norm(reduced, axis=1), 1, atol=1e-5)
    backend = ann.build("exact", ids, base, pca=32, rerank=4)
    # Isotropic noise in all 64 dimensions is the worst case for a PCA; CNN features have a decaying spectrum.
    assert recall_at(backend.search(queries, 10, lookup=ann.vector_lookup(ids, base))[1], truth) >= 0.85
    half = ann.build("exact", ids, base, storage="float16")
    assert recall_at(half.search(queries, 10)[1], truth) >= 0.98
    assert np.abs(as_float16(base).astype(np.float32) - base).max() < 1e-3


def test_sq8_codes_keep_recall_through_the_rerank_and_the_file(tmp_path, data):
    ids, base, queries = data
    _, truth = ann.build("exact", ids, base).search(queries, 10)
    lookup = ann.vector_lookup(ids, base)
    backend = ann.build("ivf", ids, base, nlist=64, nprobe=16, storage="sq8", rerank=4)
    assert backend._approximate()  # one-byte codes: the rerank judges candidates by the full vectors
    dist, found = backend.search(queries, 10, lookup=lookup)
    assert recall_at(found, truth) >= 0.9
    backend.save(tmp_path / "sq8.ann")
    again = ann.load(tmp_path / "sq8.ann")
    assert again.params()["storage"] == "sq8"
    assert np.array_equal(again.search(queries, 10, lookup=lookup)[1], found)
    # Per-dimension one-byte codes take a quarter of the float32 lists' bytes.
    flat = ann.build("ivf", ids, base, nlist=64, nprobe=16)
    assert backend.save(tmp_path / "a.ann") < 0.5 * flat.save(tmp_path / "b.ann")
    with pytest.raises(LookalikeError, match="float32 or float16"):
        ann.build("hnsw", ids[:100], base[:100], storage="sq8")
    with pytest.raises(LookalikeError, match="unknown storage"):
        ann.make("ivf", 64, storage="int4")


def test_pca_file_round_trip_and_damage(tmp_path, data):
    _, base, _ = data
    pca = Pca.fit(base[:2000], 16)
    pca.save(tmp_path / "pca.npz")
    again = Pca.load(tmp_path / "pca.npz")
    assert np.array_equal(pca.apply(base[:10]), again.apply(base[:10]))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(LookalikeError):
        Pca.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf", "ivfpq"])
def test_add_change_delete_reach_the_backend(tmp_path, data, kind):
    ids, base, _ = data
    n = 5000
    backend = ann.build(kind, ids[:n], base[:n], **FAST.get(kind, {}))
    lookup = {int(i): v for i, v in zip(ids[:n + 100], base[:n + 100])}
    fetch = lambda wanted: np.stack([lookup[int(i)] for i in wanted])  # noqa: E731

    # add: new images are found without a rebuild
    new_ids, new_vecs = ids[n:n + 100], base[n:n + 100]
    backend.add(new_ids, new_vecs)
    _, found = backend.search(new_vecs[:20], 1, lookup=fetch)
    assert (found[:, 0] == new_ids[:20]).mean() >= 0.9

    # delete: masked ids never come back
    gone = ids[:50]
    assert backend.remove(gone) == 50
    assert backend.dead == 50 and len(backend) == n + 100 - 50
    _, found = backend.search(base[:50], 5, lookup=fetch)
    assert not np.isin(found, gone).any()

    # change: the same id with a new vector answers at its new place only
    changed = int(ids[60])
    moved = base[n + 200]
    backend.remove([changed])
    backend.add([changed], moved[None])
    lookup[changed] = moved
    _, found = backend.search(moved[None], 1, lookup=fetch)
    assert found[0, 0] == changed
    _, found = backend.search(base[60][None], 3, lookup=fetch)
    assert changed not in found[0]

    # the mask survives the file
    backend.save(tmp_path / "b.ann", fingerprint="fp")
    again = ann.load(tmp_path / "b.ann", fingerprint="fp")
    assert again.dead == backend.dead and len(again) == len(backend)
    _, found = again.search(base[:50], 5, lookup=fetch)
    assert not np.isin(found, gone).any()
    assert again.params() == backend.params()


def test_needs_rebuild_counts_dead_entries(data):
    ids, base, _ = data
    backend = ann.build("hnsw", ids[:4000], base[:4000], **FAST["hnsw"])
    backend.remove(ids[:900])
    assert not backend.needs_rebuild()
    backend.remove(ids[900:1100])
    assert backend.needs_rebuild()


def test_damaged_truncated_and_stale_files_are_refused(tmp_path, data):
    ids, base, _ = data
    backend = ann.build("ivf", ids[:4000], base[:4000], nlist=32, nprobe=4)
    path = tmp_path / "ivf.ann"
    size = backend.save(path, fingerprint=ann.vectors_fingerprint(ids[:4000], base[:4000]))
    assert size == path.stat().st_size
    assert len(ann.load(path, fingerprint=ann.vectors_fingerprint(ids[:4000], base[:4000]))) == 4000

    with pytest.raises(ann.StaleAnnError):  # the index gained a vector since
        ann.load(path, fingerprint=ann.vectors_fingerprint(ids[:4001], base[:4001]))
    changed = base[:4000].copy()
    changed[0] = base[4000]
    with pytest.raises(ann.StaleAnnError):  # the first row changed
        ann.load(path, fingerprint=ann.vectors_fingerprint(ids[:4000], changed))

    raw = bytearray(path.read_bytes())
    for pos in (len(raw) // 3, len(raw) // 2, 20):  # inside the id map, inside FAISS's bytes, near the start
        bad = bytearray(raw)
        bad[pos] ^= 0x5A
        (tmp_path / "bad.ann").write_bytes(bytes(bad))
        with pytest.raises(ann.AnnFileError):
            ann.load(tmp_path / "bad.ann")
    (tmp_path / "short.ann").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ann.AnnFileError):
        ann.load(tmp_path / "short.ann")
    (tmp_path / "junk.ann").write_bytes(b"hello")
    with pytest.raises(ann.AnnFileError):
        ann.load(tmp_path / "junk.ann")
    with pytest.raises(ann.AnnFileError):
        ann.load(tmp_path / "missing.ann")
    assert issubclass(ann.AnnFileError, LookalikeError)


def test_the_file_layout_is_pinned(tmp_path):
    """Files already on disk must stay readable: magic, payload, JSON header, (header length, magic) trailer,
    the payload's CRC-32 and the header's own, read here without the package's reader."""
    import json
    import struct
    import zlib

    path = tmp_path / "layout.ann"
    vectors = clustered(5, dim=8)
    ann.build("exact", np.arange(5), vectors).save(path, fingerprint="fp")
    raw = path.read_bytes()
    assert raw[:8] == b"LKANN01\n"
    hlen, magic = struct.unpack("<Q8s", raw[-16:])
    assert magic == b"LKANN01\n"
    header = json.loads(raw[-16 - hlen:-16])
    assert header["version"] == ann.FILE_VERSION == 2 and header["kind"] == "exact" and header["fingerprint"] == "fp"
    assert header["payload_end"] == len(raw) - 16 - hlen
    assert header["crc32"] == zlib.crc32(raw[8:header["payload_end"]])
    rest = {k: v for k, v in header.items() if k != "header_crc32"}
    assert header["header_crc32"] == zlib.crc32(json.dumps(rest, sort_keys=True).encode())
    sections = {sec["name"]: sec for sec in header["sections"]}
    assert list(sections) == ["labels", "keys", "live", "vectors"]
    vec = sections["vectors"]
    stored = np.frombuffer(raw[vec["offset"]:vec["offset"] + vec["nbytes"]], np.dtype(vec["dtype"]))
    assert np.array_equal(stored.reshape(vec["shape"]), vectors)


_WRITER = """
import sys, numpy as np
from lookalike.search.store import ann
rng = np.random.default_rng(1)
x = rng.normal(size=(60000, 64)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
b = ann.build("exact", np.arange(60000), x)
print("ready", flush=True)
n = 0
while True:
    n += 1
    b.save(sys.argv[1], fingerprint=f"gen-{n}")
"""


def test_kill_while_the_file_is_written_leaves_a_whole_file(tmp_path):
    path = tmp_path / "kill.ann"
    ann.build("exact", np.arange(10), clustered(10)).save(path, fingerprint="gen-0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(lookalike.__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH", "")] if p)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        start = path.stat().st_mtime_ns
        deadline = time.monotonic() + 60
        while path.stat().st_mtime_ns == start and time.monotonic() < deadline:  # at least one save landed
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    backend = ann.load(path)  # whatever moment the kill hit: the old file or a new one, whole
    assert backend.fingerprint.startswith("gen-") and len(backend) in (10, 60000)


def test_auto_choice_switches_at_its_thresholds():
    d = 1280
    assert ann.choose(ann.EXACT_MAX_ROWS, d)[0] == "exact"
    assert ann.choose(ann.EXACT_MAX_ROWS + 1, d)[0] == "hnsw"
    assert ann.choose(ann.HNSW_FULL_MAX_ROWS, d) == ("hnsw", {"m": ann.HNSW_M})
    kind, params = ann.choose(ann.HNSW_FULL_MAX_ROWS + 1, d)
    assert kind == "ivf" and params["pca"] == 256 and params["rerank"] > 1
    assert params["storage"] == "sq8"
    assert ann.choose(1_000_000, d)[0] == "ivf"
    assert ann.choose(10_000_000, d)[0] == "ivf"  # 10M x (256 one-byte codes + an id) fits 3 GB
    assert ann.choose(20_000_000, d)[0] == "ivfpq"
    kind, params = ann.choose(1_000_000, d, memory_budget=200 * 2**20)
    assert kind == "ivfpq" and params["nlist"] >= 1024
    kind, params = ann.choose(100_000_000, d)
    assert kind == "ivfpq" and params["pq_bytes"] + 8 <= ann.DEFAULT_MEMORY_BUDGET / 100_000_000 + 8

    small = ann.build("auto", np.arange(100), clustered(100))
    assert small.kind == "exact"


def test_bad_requests_are_one_line_errors(data):
    ids, base, _ = data
    with pytest.raises(LookalikeError, match="unknown search backend"):
        ann.build("annoy", ids[:10], base[:10])
    with pytest.raises(LookalikeError, match="too few"):
        ann.build("ivf", ids[:100], base[:100], nlist=64)
    backend = ann.build("exact", ids[:10], base[:10])
    with pytest.raises(LookalikeError, match="shape"):
        backend.search(np.zeros((1, 3), np.float32), 5)
    dist, found = backend.search(base[:1], 20)  # k > entries: padded
    assert (found[0, 10:] == -1).all() and np.isinf(dist[0, 10:]).all()


def test_a_file_behind_the_index_catches_up(tmp_path, data):
    ids, base, _ = data
    rows = np.arange(3000, dtype=np.int64)  # the vector-file row of each id: a new row means a new vector
    backend = ann.build("hnsw", ids[:3000], base[:3000], keys=rows, **FAST["hnsw"])
    backend.save(tmp_path / "h.ann")
    # since then: 10 deleted, one changed (new vector at a new row), 20 added
    now_ids = np.concatenate([ids[10:3000], ids[3000:3020]])
    now_rows = np.concatenate([rows[10:3000], np.arange(3000, 3020)])
    now_vecs = np.concatenate([base[10:3000], base[3000:3020]])
    now_rows[0], now_vecs[0] = 5000, base[5000]  # ids[10] changed
    loaded = ann.load(tmp_path / "h.ann")
    assert loaded.catch_up(now_ids, now_rows, now_vecs) == (21, 11)
    assert len(loaded) == len(now_ids)
    _, found = loaded.search(base[5000][None], 1)
    assert found[0, 0] == ids[10]
    _, found = loaded.search(base[:10], 3)
    assert not np.isin(found, ids[:10]).any()
    assert loaded.catch_up(now_ids, now_rows, now_vecs) == (0, 0)
