"""Sharded indexing under torchrun: every process decodes and embeds a share of the files, rank 0 alone writes.

Rank 0 runs `sync.index_folder` as one process would: it holds the index's write lock, walks the folder and
makes the incremental check (what is new, changed, renamed or gone). Only the embedding is shared: the files to
embed are cut into batches of --batch-size, and batch c goes to rank c % world. In each round every rank embeds
its next batch and the results are gathered to rank 0 (`torch.distributed.gather`: vectors as float32, the
per-file outcome as JSON, never pickled), which commits them in the order of the file list, batch by batch,
through the same code as a single process. So the index is the one a single process writes, a kill -9 of any
rank loses at most the batches of the round in flight, and the next run resumes from the committed ones.

Why gather rather than per-rank part files merged at the end: SQLite keeps one writer, and committing each
batch as it arrives keeps the single-process promise (committed work survives a crash) with no extra files
for the index to own, find again after a crash and clean up; the traffic is one vector (a few kB) per image,
small next to decoding the image.

Files another rank read are checked for reuse (a rename or copy of an indexed file) on rank 0, which alone can
look the index up: the vector is then taken from the index, as a single process would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...distributed import Group, _collective
from ...errors import LookalikeError
from ..describe.file_results import Embedded, Reused, StreamResult, Undecodable, Unread


def index_sharded(folder, index_path=None, *, group: Group, device: str = "cpu", runtime: str = "auto",
                  **options: Any) -> dict | None:
    """`sync.index_folder(folder, index_path, **options)` across the processes of `group`: the summary on rank
    0, None on the others (which only embed)."""
    from .sync import index_folder

    device = _rank_device(device, group)
    if not group.is_main:
        _work(group, device, runtime)
        return None
    shared = ShardedStream(group)
    try:
        return index_folder(folder, index_path, device=device, runtime=runtime, stream=shared, **options)
    except LookalikeError:
        if not shared.sent:  # stopped before the files were handed out (a bad option, another backbone...)
            shared.send({"stop": True})
        raise


def _rank_device(device: str, group: Group) -> str:
    """Each process on its own GPU."""
    if device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{group.local_rank}"
    return "cpu" if device == "auto" else device


class ShardedStream:
    """`stream` for `index_folder` on rank 0: `Embedder.stream`'s batches, embedded across the group."""

    def __init__(self, group: Group):
        self.group, self.sent = group, False  # sent: the job (or a stop) went out; the others wait for one

    def send(self, job: dict) -> None:
        self.sent = True
        self.group.same(job)

    def __call__(self, embedder) -> Callable:
        """What replaces `embedder.stream`."""
        return _bind_stream(self, embedder)


def _bind_stream(shared: ShardedStream, embedder) -> Callable:
    world = shared.group.size

    def stream(items, batch_size: int | None = None, workers: int | None = None, reuse=None,
               path_of: Callable | None = None) -> Iterator[list]:
        items = list(items)
        bs = batch_size or embedder.batch_size
        chunks = [items[i:i + bs] for i in range(0, len(items), bs)]
        paths = [str(path_of(it) if path_of else it) for it in items]
        shared.send({"paths": paths, "batch_size": bs, "backbone": _backbone(embedder)})
        mine = [it for c in range(0, len(chunks), world) for it in chunks[c]]
        own = embedder.stream(mine, batch_size=bs, workers=workers, reuse=reuse, path_of=path_of)
        try:
            for first in range(0, len(chunks), world):
                batch = next(own)
                received = _gather(shared.group, [], embedder.dim)
                yield batch
                for r in range(1, min(world, len(chunks) - first)):
                    yield [(item, _outcome(res, reuse, embedder)) for item, res in zip(chunks[first + r], received[r])]
        finally:
            own.close()

    return stream


def _outcome(res: StreamResult, reuse, embedder) -> StreamResult:
    """A result another rank computed, as `Embedder.stream` would have returned it on rank 0, which alone can
    look the index up for a stored vector to reuse, and alone holds the index's whitening (the other ranks send
    the backbone's plain vectors)."""
    if isinstance(res, Embedded):
        if reuse is not None:
            found = reuse(res.digest)
            if found is not None:
                return Reused(res.digest, found)
        if embedder.whitening is not None:
            return Embedded(res.digest, embedder.whitening(res.vector[None])[0])
    return res


def _backbone(embedder) -> dict:
    from ..describe.features import inputs_of

    return {"model": embedder.model, "pooling": embedder.pooling, "weights": embedder.weights,
            "inputs": inputs_of(embedder.preprocess),
            "dim": embedder.dim}


def _work(group: Group, device: str, runtime: str) -> None:
    """A rank other than 0: embed the batches rank 0 hands out, send each back."""
    from ..describe.features import load_embedder

    job = group.same(None)
    if job.get("stop"):
        return
    b = job["backbone"]
    embedder = load_embedder(b["model"], device=device, pooling=b["pooling"], weights=b["weights"],
                             runtime=runtime, inputs=b["inputs"])
    if embedder.dim != b["dim"]:
        raise LookalikeError(f"process {group.rank} built a {embedder.dim}-d backbone, rank 0 a {b['dim']}-d one")
    paths, bs, world, rank = job["paths"], job["batch_size"], group.size, group.rank
    n_chunks = -(-len(paths) // bs)
    mine = [Path(p) for c in range(rank, n_chunks, world) for p in paths[c * bs:(c + 1) * bs]]
    batches = embedder.stream(mine, batch_size=bs)
    try:
        for first in range(0, n_chunks, world):
            batch = next(batches) if first + rank < n_chunks else []
            _gather(group, [res for _, res in batch], embedder.dim)
    finally:
        batches.close()


def _gather(group: Group, results: list[StreamResult], dim: int) -> list[list[StreamResult]]:
    """Every rank's `results` (`Embedder.stream` outcomes) on rank 0, in rank order ([] elsewhere). Vectors
    travel as one float32 block, the rest as JSON."""
    import torch
    import torch.distributed as dist

    meta = json.dumps([_meta(res) for res in results]).encode()
    vectors = [res.vector for res in results if isinstance(res, Embedded)]
    world = group.size
    with _collective():
        sizes = torch.tensor([len(meta), len(vectors)], dtype=torch.long)
        all_sizes = [torch.zeros(2, dtype=torch.long) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        max_meta = max(int(s[0]) for s in all_sizes)
        max_vec = max(1, max(int(s[1]) for s in all_sizes))
        meta_t = torch.zeros(max_meta, dtype=torch.uint8)
        meta_t[:len(meta)] = torch.frombuffer(bytearray(meta), dtype=torch.uint8)
        vec_t = torch.zeros(max_vec, dim, dtype=torch.float32)
        if vectors:
            vec_t[:len(vectors)] = torch.from_numpy(np.stack(vectors).astype(np.float32, copy=False))
        main = group.is_main
        metas = [torch.empty_like(meta_t) for _ in range(world)] if main else None
        vecs = [torch.empty_like(vec_t) for _ in range(world)] if main else None
        dist.gather(meta_t, metas, dst=0)
        dist.gather(vec_t, vecs, dst=0)
    if not main:
        return []
    out = []
    for r in range(world):
        n_meta, _ = (int(v) for v in all_sizes[r])
        rows = json.loads(bytes(metas[r][:n_meta].numpy()).decode())
        block, j, got = vecs[r].numpy(), 0, []
        for row in rows:
            if row["kind"] == "embedded":
                got.append(Embedded(row["digest"], block[j].copy()))
                j += 1
            elif row["kind"] == "undecodable":
                got.append(Undecodable(row["digest"], row["reason"]))
            else:
                got.append(Unread(row["reason"]))
        out.append(got)
    return out


def _meta(res: StreamResult) -> dict:
    """What travels as JSON of one outcome (its vector travels in the float32 block). Other ranks stream without
    `reuse`, so their outcomes are never `Reused`."""
    if isinstance(res, Embedded):
        return {"kind": "embedded", "digest": res.digest}
    if isinstance(res, Undecodable):
        return {"kind": "undecodable", "digest": res.digest, "reason": res.reason}
    if isinstance(res, Unread):
        return {"kind": "unread", "reason": res.reason}
    raise TypeError(f"cannot send a {type(res).__name__} outcome between processes")
