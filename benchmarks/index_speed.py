"""Indexing speed on 12-megapixel JPEG photos, measured side by side in one run.

    python benchmarks/index_speed.py [--n 200] [--lab-n 40] [--model efficientnet_lite0] [--keep DIR]

Makes N distinct 4000 x 3000 JPEGs (skimage photos upscaled, with per-image noise and shifts) in a temporary
folder, then measures, with the same backbone:

1. `lookalike index DIR` as a fresh process, start-up included (ONNX export already cached, as after the
   first run), with the default runtime and with `--runtime torch`;
2. the lab's approach: per image, full PIL decode, resize, centre crop, one forward pass (PyTorch eager,
   batch of 1), on the first `--lab-n` images (its per-image cost does not depend on N);
3. the forward-pass rate on ready tensors (batch 32), ONNX Runtime and PyTorch eager;
4. the steady-state rate of the indexing pipeline (first batch excluded) with each runtime, against (3).

Other processes sharing the cores make absolute numbers move; compare the ratios printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from results_file import record

BASES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera")
W, H = 4000, 3000


def make_photos(folder: Path, n: int) -> None:
    from PIL import Image

    from lookalike.search.sample_photos import load_photo

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(-12, 13, size=(H + 64, W + 64, 3), dtype=np.int16)
    bases = []
    for name in BASES:
        bases.append(np.asarray(load_photo(name).resize((W, H), Image.BICUBIC), dtype=np.int16))
    for i in range(n):
        dy, dx = rng.integers(0, 64, size=2)
        arr = bases[i % len(bases)] + noise[dy:dy + H, dx:dx + W] + int(rng.integers(-10, 11))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"photo{i:04d}.jpg", quality=90)


def run_index(folder: Path, home: Path, extra: list[str]) -> float:
    exe = Path(sys.executable).with_name("lookalike")
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    index = home / "bench-index"
    shutil.rmtree(index, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([str(exe), "index", str(folder), "--index", str(index), "--json", *extra], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return elapsed


def lab_rate(paths: list[Path], model: str) -> float:
    """The lab's loop: full decode, torchvision resize + centre crop, one forward pass per image."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from lookalike.models import create_model

    net = create_model(model).eval()
    pre = net.preprocess
    tf = transforms.Compose([transforms.Resize(pre["resize_size"]), transforms.CenterCrop(pre["input_size"]),
                             transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])])
    start = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
            net.forward_head(net.forward_features(x), pre_logits=True)
    return len(paths) / (time.perf_counter() - start)


def forward_rates(model: str, batch: int = 32, reps: int = 4) -> dict:
    """Images/s of the embedding net alone on ready uint8 crops (normalisation included), as `index` runs it."""
    from lookalike.search.describe.features import load_embedder

    out = {}
    for runtime in ("onnx", "torch"):
        try:
            emb = load_embedder(model, runtime=runtime)
        except Exception as exc:  # onnxruntime missing
            print(f"  {runtime}: unavailable ({exc})")
            continue
        size = emb.preprocess["input_size"]
        x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        emb.embed_arrays(x)  # warm-up
        best = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            emb.embed_arrays(x)
            best = max(best, batch / (time.perf_counter() - t))
        out[runtime] = best
    return out


def decode_ms(paths: list[Path], model: str) -> float:
    """CPU cost of one image's read + hash + draft decode + resize/crop, single thread, in ms."""
    from lookalike.models.pretrained import PREPROCESS
    from lookalike.search.describe.features import Embedder
    from lookalike.search.describe.file_results import Decoded

    emb = Embedder(None, model=model, pooling="avg", preprocess=PREPROCESS[model], dim=1)
    start = time.perf_counter()
    for p in paths:
        assert isinstance(emb.decode_file(p), Decoded)
    return (time.perf_counter() - start) / len(paths) * 1000


def steady_rate(folder: Path, home: Path, model: str, runtime: str) -> float:
    from lookalike.search.indexing.sync import index_folder

    os.environ["LOOKALIKE_HOME"] = str(home)
    stamps: list[tuple[float, int]] = []
    index = home / f"steady-{runtime}"
    shutil.rmtree(index, ignore_errors=True)
    index_folder(folder, index, model=model, runtime=runtime,
                 progress=lambda done, total: stamps.append((time.perf_counter(), done)))
    (t0, d0), (t1, d1) = stamps[1], stamps[-1]  # from the end of the first batch: pipeline full
    return (d1 - d0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="12-megapixel photos to index")
    ap.add_argument("--lab-n", type=int, default=40, help="photos timed with the lab's per-image loop")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--keep", type=Path, help="reuse/keep the photos in this folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = args.keep or tmp / "photos"
    home = tmp / "home"
    try:
        have = len(list(folder.glob("photo*.jpg"))) if folder.exists() else 0
        if have < args.n:
            print(f"making {args.n} photos of {W}x{H} in {folder} ...", flush=True)
            make_photos(folder, args.n)
        paths = sorted(folder.glob("photo*.jpg"))[: args.n]
        if len(paths) < len(list(folder.glob("photo*.jpg"))):
            sub = tmp / "subset"
            sub.mkdir()
            for p in paths:
                os.symlink(p, sub / p.name)
            folder = sub
        size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"{len(paths)} JPEGs, {W}x{H}, {size_mb:.1f} MB each; cores: {len(os.sched_getaffinity(0))}")

        warm = tmp / "warm"
        warm.mkdir()
        shutil.copy(paths[0], warm / "a.jpg")
        run_index(warm, home, ["--model", args.model])  # exports the ONNX graph once (a first run's cost)

        n = len(paths)
        results = {}
        results["index (default runtime)"] = n / run_index(folder, home, ["--model", args.model])
        results["index --runtime torch"] = n / run_index(folder, home, ["--model", args.model, "--runtime", "torch"])
        results["lab loop"] = lab_rate(paths[: args.lab_n], args.model)
        fw = forward_rates(args.model)
        for k, v in fw.items():
            results[f"forward only, {k}"] = v
        dec = decode_ms(paths[:30], args.model)
        for runtime in fw:
            results[f"index steady state ({runtime})"] = steady_rate(folder, home, args.model, runtime)

        lines: list[str] = []

        def out(line: str) -> None:
            print(line)
            lines.extend(line.strip("\n").splitlines())

        out(f"\n{'measure':44s} {'images/s':>9s}")
        for k, v in results.items():
            out(f"{k:44s} {v:9.2f}")
        lab = results["lab loop"]
        out("\nratios")
        out(f"  lookalike index (whole command, start-up included) / lab loop: "
            f"{results['index (default runtime)'] / lab:.2f}x   (target >= 3x)")
        out(f"  same with --runtime torch / lab loop: {results['index --runtime torch'] / lab:.2f}x")
        for runtime in fw:
            steady = results[f"index steady state ({runtime})"]
            out(f"  index steady state / forward only ({runtime}): {steady / fw[runtime]:.0%}   (target >= 70%)")
        out(f"  decode cost: {dec:.0f} ms of one core per photo (read, hash, draft decode, resize); forward: "
            + ", ".join(f"{k} {len(os.sched_getaffinity(0)) * 1000 / v:.0f} core-ms" for k, v in fw.items())
            + f" (on {len(os.sched_getaffinity(0))} cores, decode and forward share them)")
        cores = len(os.sched_getaffinity(0))
        for runtime in fw:
            # With every core busy either decoding or in the network, this is the most any pipeline can do.
            bound = cores * 1000 / (dec + cores * 1000 / fw[runtime])
            steady = results[f"index steady state ({runtime})"]
            out(f"  CPU bound with {runtime} (decode + forward work on {cores} cores): {bound:.1f} images/s; "
                f"steady state reaches {steady / bound:.0%} of it")
        if "onnx" in fw and "torch" in fw:
            out(f"  forward only: ONNX Runtime / PyTorch eager: {fw['onnx'] / fw['torch']:.2f}x")
        record("index_speed", ["```", *lines, "```"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
