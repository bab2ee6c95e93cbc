"""Load test of `lookalike serve`: N concurrent clients searching for a fixed time, on 127.0.0.1 only.

Builds a gallery of real photos (scikit-image's bundled ones, with random crops, rotations, tints and JPEG
re-saves) in a temporary folder, indexes it with `lookalike index`, starts the real server (`lookalike serve`,
uvicorn, separate process), then runs the clients in threads of this process. By default each client alternates
uploading a query image (`POST /api/search`: decode + forward pass) and searching from an indexed image
(`GET /api/search?id=`: stored vector, one matrix product); `--mode` runs only one kind. Prints p50/p99 latency
per kind, requests/s and the error count, then first-request and cached thumbnail latency.

    python benchmarks/serve_load.py                       # 8 clients, 30 s, 200 images
    python benchmarks/serve_load.py --seconds 10 --mode upload
    python benchmarks/serve_load.py --canvas 4 --seconds 0  # 4 clients sending big-canvas PNGs to compare
    python benchmarks/serve_load.py --big 60 --against cd9bc7a --seconds 20  # 12-MP library, two codes

`--big N` indexes N photos of 4000x3000 px instead (search_speed.py's), then has the clients upload 1600x1200
crops of them for verified search (the server's default), first with the code of `--against` (checked out with
`git worktree`, its server run with PYTHONPATH at its src), then with this checkout's, one after the other in the
same run; each side also times the first upload search of its fresh server.

`--canvas N` first runs N clients that each post 8 copies of a 10900x10900 grayscale PNG (about 120 kB, just
under the pixel limit) to `POST /api/compare`, 3 times, and reports the answers and the server's peak resident
memory (VmHWM), in benchmarks/results/serve_canvas.txt as well.

Everything (clients included) shares this machine's cores, so the figures are for the whole box.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lookalike.search.sample_photos import jpeg_bytes, load_photo
from results_file import record

REPO = Path(__file__).resolve().parent.parent

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "coins", "retina", "colorwheel", "moon"]


def _edit(img, rng: random.Random):
    from PIL import Image

    w, h = img.size
    f = rng.uniform(0.6, 0.95)
    x0, y0 = rng.randint(0, int(w * (1 - f))), rng.randint(0, int(h * (1 - f)))
    img = img.crop((x0, y0, x0 + int(w * f), y0 + int(h * f))).rotate(rng.uniform(-12, 12))
    shift = np.array([rng.randint(-25, 25) for _ in range(3)], np.int16)
    arr = np.clip(np.asarray(img).astype(np.int16) + shift, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    side = rng.randint(200, 480)
    img.thumbnail((side, side))
    return img


def make_gallery(folder: Path, count: int, seed: int = 0) -> list[bytes]:
    """`count` images under `folder`; returns a few JPEG query uploads that are not in the gallery."""
    rng = random.Random(seed)
    originals = [load_photo(n) for n in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _edit(originals[i % len(originals)], rng).save(folder / f"img{i:05d}.jpg", quality=rng.randint(60, 92))
    queries = []
    for img in originals:
        queries.append(jpeg_bytes(_edit(img, rng).resize((640, 480)), 85))  # a typical phone-sized upload
    return queries


def lookalike_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from lookalike.cli import main; main()", *args]


def wait_ready(log: Path, proc: subprocess.Popen, timeout: float = 180) -> tuple[str, dict]:
    """The server's URL, read from the line `lookalike serve --port 0` prints once it listens and has loaded
    the model, and its /api/stats."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        found = re.search(r"open http://[^/\s]+:(\d+)/", log.read_text())
        if found:
            url = f"http://127.0.0.1:{found.group(1)}"
            return url, httpx.get(f"{url}/api/stats", timeout=60, trust_env=False).json()
        time.sleep(0.2)
    raise SystemExit("the server did not come up")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(url: str, clients: int, seconds: float, queries: list[bytes], ids: list[int], k: int,
                mode: str = "mixed") -> dict:
    import httpx

    lat: dict[str, list[float]] = {"upload": [], "by_id": []}
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client(n: int) -> None:
        rng = random.Random(n)
        mine = {"upload": [], "by_id": []}
        bad = []
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
            start_gate.wait()
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                kind = mode if mode != "mixed" else ("upload" if (i + n) % 2 == 0 else "by_id")
                i += 1
                t0 = time.perf_counter()
                try:
                    if kind == "upload":
                        r = http.post("/api/search", files={"image": ("q.jpg", rng.choice(queries), "image/jpeg")},
                                      data={"k": str(k)})
                    else:
                        r = http.get("/api/search", params={"id": rng.choice(ids), "k": k})
                    ok = r.status_code == 200 and len(r.json()["results"]) == min(k, len(ids) - (kind == "by_id"))
                    if not ok:
                        bad.append(f"{kind}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    bad.append(f"{kind}: {exc!r}")
                mine[kind].append(time.perf_counter() - t0)
        with lock:
            for key in lat:
                lat[key] += mine[key]
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latency": lat, "errors": errors, "wall": wall}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_peak_rss(pid: int) -> int:
    """The server process's peak resident memory in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def canvas_attack(url: str, pid: int, clients: int, rounds: int = 3, copies: int = 8) -> dict:
    """`clients` threads, each posting `copies` big-canvas PNGs to /api/compare `rounds` times."""
    import collections

    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10900, 10900), 128).save(buf, format="PNG")
    png = buf.getvalue()
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    before = server_peak_rss(pid)

    def client() -> None:
        with httpx.Client(timeout=300, trust_env=False) as http:
            for _ in range(rounds):
                files = [("images", (f"c{i}.png", png, "image/png")) for i in range(copies)]
                code = http.post(f"{url}/api/compare", files=files).status_code
                with lock:
                    statuses[code] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"png_bytes": len(png), "statuses": dict(statuses), "seconds": time.perf_counter() - t0,
            "peak_before": before, "peak_after": server_peak_rss(pid)}


def _serve(index: Path, env: dict, work: Path) -> tuple[subprocess.Popen, str]:
    log = work / f"server-{len(list(work.glob('server-*.log')))}.log"
    server = subprocess.Popen(lookalike_cmd("serve", "--index", str(index), "--host", "127.0.0.1", "--port", "0"),
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"), env={**env, "COLUMNS": "200"})
    return server, wait_ready(log, server)[0]


def big_side(src: Path, photos: Path, queries: list[bytes], work: Path, args) -> dict:
    """Index `photos` with the code under `src`, serve it, time the first upload search, then the clients."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(src), "LOOKALIKE_HOME": str(work / "home")}
    index = work / "index"
    subprocess.run(lookalike_cmd("index", str(photos), "--index", str(index), "--json"), check=True,
                   stdout=subprocess.DEVNULL, env=env)
    server, url = _serve(index, env, work)
    try:
        t = time.perf_counter()
        r = httpx.post(f"{url}/api/search", files={"image": ("q.jpg", queries[-1], "image/jpeg")},
                       data={"k": str(args.k)}, trust_env=False, timeout=120)
        first = time.perf_counter() - t
        verified = any(h.get("inliers") is not None for h in r.json()["results"])
        # Uploads expect min(k, len(ids)) results: the ids stand for the library's size here.
        cpu = process_cpu_s(server.pid)
        run = run_clients(url, args.clients, args.seconds, queries, list(range(args.big)), args.k, "upload")
        cpu = process_cpu_s(server.pid) - cpu
        return {"first": first, "verified": verified, "server_cpu": cpu, **run}
    finally:
        server.terminate()
        server.wait(timeout=30)


def compare_big(args) -> None:
    """`--big`: the same 12-MP library and crops served by the code of `--against`, then by this checkout's."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from search_speed import make_photos

    work = Path(tempfile.mkdtemp(prefix="lookalike-serve-big-"))
    old_tree = work / "old"
    try:
        make_photos(work / "photos", work / "queries", args.big, args.big)
        queries = [q.read_bytes() for q in sorted((work / "queries").iterdir())]
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.against],
                       check=True, capture_output=True)
        rev = {name: subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for name, tree in (("old", old_tree), ("new", REPO))}
        load = [os.getloadavg()[0]]
        sides = {}
        for name, src in (("old", old_tree / "src"), ("new", REPO / "src")):
            (work / f"side-{name}").mkdir()
            sides[name] = big_side(src, work / "photos", queries, work / f"side-{name}", args)
        load.append(os.getloadavg()[0])
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{args.big} photos of 4000x3000 px indexed with the default settings; {args.clients} clients for "
             f"{args.seconds:g} s each uploading 1600x1200 crops of them (JPEG q90, {len(queries)} different) to "
             f"POST /api/search, k={args.k}, the server verifying its default shortlist.", "",
             "| Code | searches/s | p50 ms | p99 ms | errors | first search of a fresh server, ms | verified | "
             "server CPU ms / search |",
             "|---|---|---|---|---|---|---|---|"]
    for name, label in (("old", f"{rev['old']} (before)"), ("new", rev["new"])):
        r = sides[name]
        up = r["latency"]["upload"]
        lines.append(f"| {label} | {len(up) / r['wall']:.1f} | {1000 * percentile(up, 50):.0f} | "
                     f"{1000 * percentile(up, 99):.0f} | {len(r['errors'])} | {1000 * r['first']:.0f} | "
                     f"{'yes' if r['verified'] else 'no'} | {1000 * r['server_cpu'] / max(1, len(up)):.0f} |")
    rate = [len(sides[n]["latency"]["upload"]) / sides[n]["wall"] for n in ("old", "new")]
    lines += ["", f"Rate new/old: {rate[1] / rate[0]:.2f}x. Load average (1 min) at the start and the end: "
              f"{', '.join(f'{x:.1f}' for x in load)} ({os.cpu_count()} CPUs visible)."]
    for r in sides.values():
        lines += [f"  error: {e}" for e in r["errors"][:3]]
    print("\n".join(lines))
    record("serve_load", ["Verified uploads on a 12-MP library, side by side:", "", *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the clients run (default 30)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--images", type=int, default=200, help="gallery size (default 200)")
    ap.add_argument("-k", type=int, default=10, help="results per search (default 10)")
    ap.add_argument("--mode", choices=["mixed", "upload", "by_id"], default="mixed",
                    help="mixed: each client alternates uploads and by-id searches (default); or only one kind")
    ap.add_argument("--keep", action="store_true", help="keep the temporary gallery and index")
    ap.add_argument("--canvas", type=int, default=0, metavar="N",
                    help="first, N clients posting big-canvas PNGs to /api/compare (see above)")
    ap.add_argument("--big", type=int, default=0, metavar="N",
                    help="N photos of 4000x3000 px and verified uploads of their crops, two codes (see above)")
    ap.add_argument("--against", default="cd9bc7a", help="with --big: the code to compare (default cd9bc7a)")
    args = ap.parse_args()
    if args.big:
        compare_big(args)
        return

    work = Path(tempfile.mkdtemp(prefix="lookalike-serve-load-"))
    server = None
    try:
        t0 = time.perf_counter()
        queries = make_gallery(work / "photos", args.images)
        # Caches (thumbnails, any model export) go to the temporary folder too, so nothing is left behind.
        env = {**os.environ, "LOOKALIKE_HOME": str(work / "home")}
        subprocess.run(lookalike_cmd("index", str(work / "photos"), "--index", str(work / "index"), "--json"),
                       check=True, stdout=subprocess.DEVNULL, env=env)
        print(f"gallery of {args.images} images generated and indexed in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        server_log = open(work / "server.log", "w")  # a file, not a pipe: a chatty server never blocks on it
        # Port 0: the server binds a free port and prints it, so no other process can take it in between.
        server = subprocess.Popen(lookalike_cmd("serve", "--index", str(work / "index"), "--host", "127.0.0.1",
                                                "--port", "0"),
                                  stdout=subprocess.DEVNULL, stderr=server_log, env={**env, "COLUMNS": "200"})
        url, stats = wait_ready(work / "server.log", server)
        print(f"server ready in {time.perf_counter() - t0:.1f} s: {stats['count']} images, {stats['model']}, "
              f"{os.cpu_count()} CPUs visible")

        import httpx

        if args.canvas:
            got = canvas_attack(url, server.pid, args.canvas)
            report = [f"{args.canvas} clients x 3 posts of 8 copies of a 10900x10900 grayscale PNG "
                      f"({got['png_bytes']:,} bytes) to /api/compare, {got['seconds']:.1f} s",
                      f"answers: {got['statuses']}",
                      f"server peak RSS: {got['peak_before'] / 2**20:.0f} MiB before, "
                      f"{got['peak_after'] / 2**20:.0f} MiB after"]
            print("\n".join(report))
            record("serve_load", ["Big canvases:", "", "```", *report, "```"])
            if args.seconds <= 0:
                return

        ids = [r["id"] for r in httpx.post(f"{url}/api/search", files={"image": ("q.jpg", queries[0], "image/jpeg")},
                                           data={"k": "100"}, trust_env=False, timeout=60).json()["results"]]
        run = run_clients(url, args.clients, args.seconds, queries, ids, args.k, args.mode)
        lat, errors, wall = run["latency"], run["errors"], run["wall"]
        total = sum(len(v) for v in lat.values())

        lines: list[str] = []

        def out(*parts) -> None:
            print(*parts)
            lines.append(" ".join(map(str, parts)).strip("\n"))

        out(f"\n{args.clients} clients for {args.seconds:g} s (wall {wall:.1f} s), k={args.k}, mode={args.mode}")
        out(f"{'requests':<24}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}")
        rows = [("POST /api/search (upload)", lat["upload"]), ("GET /api/search?id=", lat["by_id"]),
                ("all", lat["upload"] + lat["by_id"])]
        for name, values in rows:
            if not values:
                continue
            out(f"{name:<24}{len(values):>7}{1000 * percentile(values, 50):>10.1f}"
                f"{1000 * percentile(values, 99):>10.1f}{len(values) / wall:>9.1f}")
        out(f"errors: {len(errors)} of {total} requests")
        for line in errors[:10]:
            out("  ", line)

        # Thumbnails, one client: first request (decode + shrink + JPEG) against the cached answer.
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
            timings = {"first": [], "cached": []}
            for phase in timings:
                for image_id in ids[:50]:
                    t = time.perf_counter()
                    r = http.get(f"/api/images/{image_id}/thumbnail", params={"size": 256})
                    timings[phase].append(time.perf_counter() - t)
                    if r.status_code != 200:
                        errors.append(f"thumbnail {image_id}: {r.status_code}")
        out(f"thumbnails 256 px, {len(timings['first'])} images: first request p50 "
            f"{1000 * percentile(timings['first'], 50):.1f} ms, cached p50 {1000 * percentile(timings['cached'], 50):.1f} ms")
        record("serve_load", ["Load:", "", "```", *lines, "```"])
        if server.poll() is not None:
            print(f"the server died: {(work / 'server.log').read_text()[-2000:]}")
            sys.exit(1)
        if errors:
            sys.exit(1)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
