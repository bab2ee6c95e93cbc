"""Index bookkeeping at scale: re-running `lookalike index` on an unchanged folder of 200k tiny files, and
opening a 1M-row index for `search` and the web service.

    python benchmarks/index_bookkeeping.py [--files 200000] [--rows 1000000] [--work /tmp/lookalike-bookkeeping]

1. Re-run. `--files` tiny PNGs (8 x 8 px, distinct bytes, 1,000 per sub-folder) are written under --work. Their
   index rows are written through the index's writer API exactly as `lookalike index` writes them (root-relative
   path, size, mtime, the SHA-256 content digest of the bytes, the row of a vector), with unit vectors drawn at
   random in place of embeddings: embedding 200k images on 2 cores would take hours, and an unchanged re-run
   never reads a vector. Then the real command, `lookalike index FOLDER --index IX --json`, runs in a fresh
   process, twice, timed end to end (start-up, model load, walk, stat, batched look-ups, the ANN check,
   manifest); both find every file unchanged. The index uses `--ann exact` (auto would build an HNSW of 200k
   vectors first, a one-off cost of the first run that the ann_scale benchmark measures).
2. Open. `--rows` rows are imported with `lookalike import` from a parquet file of the synthetic vectors that
   benchmarks/ann_scale.py caches (LOOKALIKE_HOME/bench/ann_scale/db.npy; random unit vectors when it is
   missing), with paths of files that do not exist here (imported rows are kept as they are). Timed: the import,
   then in fresh processes: opening the read-only snapshot, loading its backend, one query, and starting the
   web service's SearchService (the model excluded: it loads the same at any size). With `--ann-file`, a
   backend saved by ann_scale.py from the same vectors is relabelled with the index's ids and saved as the
   index's ANN file, so the open time includes loading a real ANN structure.

Writes benchmarks/results/index_bookkeeping.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def tiny_png(i: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_files(folder: Path, n: int) -> None:
    marker = folder / f".made-{n}"
    if marker.exists():
        return
    for i in range(n):
        sub = folder / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:07d}.png").write_bytes(tiny_png(i))
    marker.write_text("")


def make_rows(folder: Path, ix: Path, dim_from: dict) -> int:
    """Rows for every file under `folder`, through the writer API (`IndexWriter.append_vectors` + `commit`)."""
    from lookalike.search.describe.features import file_digest
    from lookalike.search.store.index import ImageIndex
    from lookalike.images import iter_image_files

    rng = np.random.default_rng(0)
    dim = int(dim_from["dim"])
    n = 0
    with ImageIndex.create(ix, root=folder, backbone=dim_from, ann="exact") as w:
        batch = []

        def flush():
            vecs = rng.standard_normal((len(batch), dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = w.append_vectors(vecs)
            w.commit(inserts=[(*b, r) for b, r in zip(batch, rows)])
            batch.clear()

        for path in iter_image_files(folder):
            st = path.stat()
            batch.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns,
                          file_digest(path.read_bytes())))
            n += 1
            if len(batch) == 10_000:
                flush()
        if batch:
            flush()
        w.touch_manifest(count=n)
    return n


PEAK = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nVmHWM ' + [l for l in "
        "open('/proc/self/status') if l.startswith('VmHWM')][0].split(':')[1].strip() + '\\n')); "
        "from lookalike.cli import main; main()")


def peak_rss(proc: subprocess.CompletedProcess) -> int:
    """The peak resident memory the command reported at exit (bytes)."""
    for line in reversed(proc.stderr.splitlines()):
        if line.startswith("VmHWM "):
            return int(line.split()[1]) * 1024
    return 0


def lookalike(*args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-c", PEAK, *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {}),
                                                                      "PYTHONPATH": str(REPO / "src")})
    took = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return took, proc


OPEN_CHILD = r"""
import json, sys, time, numpy as np
t0 = time.perf_counter()
from lookalike.search.store.index import ImageIndex
from lookalike.search.retrieve.query import search
t1 = time.perf_counter()
ix = ImageIndex.open(sys.argv[1])
t2 = time.perf_counter()
backend = ix.backend()
t3 = time.perf_counter()
q = ix.vector_of(int(ix.ids()[len(ix) // 2]))
hits = search(ix, q, k=10)
t4 = time.perf_counter()
ix.close()
from lookalike.web.service import SearchService
class NoModel:  # the model loads the same at any index size: left out
    dim = ix.dim
    min_decode_size = 224
t5 = time.perf_counter()
service = SearchService(sys.argv[1], embedder=NoModel())
stats = service.stats()
t6 = time.perf_counter()
rss = [l for l in open("/proc/self/status") if l.startswith(("VmRSS", "RssAnon"))]
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "backend_s": t3 - t2, "query_s": t4 - t3,
                  "service_s": t6 - t5, "backend": stats["ann"], "notes": stats["notes"],
                  "rss": {l.split(":")[0]: int(l.split()[1]) * 1024 for l in rss}}))
"""


def write_parquet(out: Path, n: int, backbone: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.paths import home

    db = home() / "bench" / "ann_scale" / "db.npy"
    vecs = np.load(db, mmap_mode="r") if db.is_file() else None
    dim = int(backbone["dim"])
    if vecs is not None and (vecs.shape[0] < n or vecs.shape[1] != dim):
        vecs = None
    rng = np.random.default_rng(1)
    schema = pa.schema([pa.field("path", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))],
                       metadata={b"lookalike": json.dumps(backbone).encode()})
    tmp = out.with_suffix(".tmp")
    with pq.ParquetWriter(str(tmp), schema, compression="none") as w:
        for s in range(0, n, 50_000):
            m = min(50_000, n - s)
            if vecs is not None:
                part = np.asarray(vecs[s:s + m], np.float32)
            else:
                part = rng.standard_normal((m, dim)).astype(np.float32)
                part /= np.linalg.norm(part, axis=1, keepdims=True)
            paths = pa.array([f"/elsewhere/shop/{i // 1000:04d}/item{i:07d}.jpg" for i in range(s, s + m)])
            flat = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), dim)
            w.write_table(pa.Table.from_arrays([paths, flat], schema=schema))
    os.replace(tmp, out)
    return "synthetic set of benchmarks/ann_scale.py" if vecs is not None else "random unit vectors"


def relabel_ann(ix: Path, ann_file: Path) -> str:
    """Give the index a backend saved by ann_scale.py from the same vectors, relabelled with the index's ids."""
    from lookalike.search.store import ann
    from lookalike.search.store.index import ImageIndex, ann_fingerprint

    backend = ann.load(ann_file)
    with ImageIndex.open(ix, readonly=False) as w:
        ids, rows = w._id_rows_by_row()
        if len(ids) != len(backend.labels):
            raise SystemExit(f"{ann_file} holds {len(backend.labels)} entries, the index {len(ids)}")
        backend.labels, backend.keys = ids[backend.labels], rows[backend.labels]
        params = {k: v for k, v in backend.params().items() if k not in ("backend", "dim", "count", "dead",
                                                                            "storage")}
        w.touch_manifest(ann=backend.kind)
        w._save_ann(backend, ann_fingerprint(w._vector_file().name, w.generation, backend.kind, params))
    return backend.kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/lookalike-bookkeeping")
    ap.add_argument("--ann-file", default=None, help="an ann_scale.py backend file of the same --rows vectors")
    ap.add_argument("--skip", default="", help="stages to skip: rerun,open")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "index_bookkeeping.md"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from lookalike.search.describe.features import load_embedder

    backbone = load_embedder().describe()
    lines = ["# Index bookkeeping at scale", "",
             f"Command: `python benchmarks/index_bookkeeping.py --files {args.files} --rows {args.rows}"
             + (f" --ann-file {args.ann_file}" if args.ann_file else "") + "`  ",
             f"Commit: {git_commit()}  ", f"Machine: {machine()}; other jobs shared the cores.", ""]
    results: dict = {}
    if "rerun" not in args.skip:
        folder, ix = work / "photos", work / "ix-rerun"
        t = time.perf_counter()
        make_files(folder, args.files)
        made = time.perf_counter() - t
        t = time.perf_counter()
        n = make_rows(folder, ix, backbone)
        rows_s = time.perf_counter() - t
        runs = []
        for _ in range(2):
            took, proc = lookalike("index", str(folder), "--index", str(ix), "--json")
            summary = json.loads(proc.stdout)
            assert summary["unchanged"] == n and summary["added"] == summary["updated"] == 0, summary
            runs.append((took, peak_rss(proc)))
        t = time.perf_counter()
        lookalike("--help")
        startup = time.perf_counter() - t
        results["rerun"] = {"files": n, "runs_s": runs, "startup_s": startup}
        lines += ["## Re-running `lookalike index` on an unchanged folder", "",
                  f"{n:,} files of {args.files:,} tiny PNGs ({made:.0f} s to write; index rows written through the "
                  f"writer API in {rows_s:.0f} s, random vectors in place of embeddings, `--ann exact`).", "",
                  "| run | wall time (whole command) | peak resident memory | files unchanged |", "|---|---|---|---|"]
        for i, (took, peak) in enumerate(runs, 1):
            lines.append(f"| {i} | {took:.1f} s | {peak / 2**20:.0f} MB | {n:,} |")
        lines += ["", f"`lookalike --help` (process start-up alone) took {startup:.1f} s in the same conditions.", ""]
    if "open" not in args.skip:
        ix = work / "ix-open"
        pq_path = work / f"rows-{args.rows}.parquet"
        source = "existing file"
        if not pq_path.is_file():
            t = time.perf_counter()
            source = write_parquet(pq_path, args.rows, {k: backbone.get(k) for k in
                                                        ("model", "pooling", "dim", "preprocess", "weights")})
            print(f"parquet written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        imported = None
        if not (ix / "manifest.json").is_file():
            took, proc = lookalike("import", str(pq_path), "--index", str(ix), "--root", str(work), "--ann", "exact",
                                   "--json")
            imported = (took, json.loads(proc.stdout)["added"], peak_rss(proc))
        kind = "exact"
        if args.ann_file:
            kind = relabel_ann(ix, Path(args.ann_file))
        opens = []
        for _ in range(2):
            _, proc = lookalike_child(str(ix))
            opens.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        lines += ["## Opening a 1M-row index", "",
                  f"{args.rows:,} rows imported from parquet ({source}; paths of files that are not on this "
                  f"machine)" + (f": `lookalike import` took {imported[0]:.0f} s for {imported[1]:,} rows, peak "
                                 f"resident memory {imported[2] / 2**20:.0f} MB." if imported else "."),
                  f"Backend: {kind}.", "",
                  "| run | import lookalike | open snapshot | load backend | first query (k=10) | SearchService start "
                  "(no model) | RSS after (anon) |", "|---|---|---|---|---|---|---|"]
        for i, o in enumerate(opens, 1):
            lines.append(f"| {i} | {o['import_s']:.2f} s | {o['open_s']:.2f} s | {o['backend_s']:.2f} s | "
                         f"{o['query_s'] * 1e3:.0f} ms | {o['service_s']:.2f} s | {o['rss']['VmRSS'] / 2**20:.0f} MB "
                         f"({o['rss']['RssAnon'] / 2**20:.0f} MB) |")
        lines += ["", f"Backend as the service reports it: `{json.dumps(opens[-1]['backend'])}`", ""]
        results["open"] = opens
    lines += ["Every figure is one process, timed end to end with the cores shared; the second run of each finds "
              "the files in the page cache.", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def lookalike_child(ix: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", OPEN_CHILD, ix], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if proc.returncode:
        raise SystemExit(f"open failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def machine() -> str:
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.platform()}, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
