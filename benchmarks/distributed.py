"""One process against N processes (torchrun, gloo on CPU) on this machine: training and indexing images/s, and
what synchronised BatchNorm costs against per-rank BatchNorm.

    python benchmarks/distributed.py --train-data /tmp/cifar10-jpeg --photos /tmp/imagenette-160/val
        [--nproc 2] [--epochs 1] [--per-class 1000] [--index-n 400] [--bn-steps 30]

1. Training: `lookalike train --data DIR --epochs E --device cpu --json` on `--per-class` training images and a
   fifth as many test images of each class (links into DIR, so that the run stays short; the pace of a step
   does not depend on the dataset's size), after one untimed warm-up run that fills the tensor cache, then the
   same with `--nproc N`; the
   figure is training images/s (steps x global batch / the optimisation's seconds, without evaluation and files)
   and the whole command's wall time; test accuracy beside it (same global batch, synchronised BatchNorm; no
   test-time augmentation, to keep the run short).
2. Indexing: `lookalike index DIR --json` on the first `--index-n` photos (copied into a temporary folder),
   into a fresh index, then the same with `--nproc N`; images/s of the whole command, start-up included (the
   ONNX export is made before the timed runs).
3. BatchNorm: N torchrun processes time `--bn-steps` training steps of the `fast` net (the CPU recipe's size,
   batch 256 global) under DDP with BatchNorm synchronised (what `lookalike train` does) and per rank.

On a machine with fewer cores than 2 x N the processes split the cores, so little or no gain is expected: the
figures show the overhead. Record the load average beside them (other jobs share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import record


def lookalike(*args: str, env=None) -> tuple[dict, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lookalike", *args, "--json"], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"lookalike {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def subset(data: Path, per_class: int, folder: Path) -> Path:
    """`folder`/train and /test with links to the first `per_class` (and per_class / 5) images of each class."""
    for split, n in (("train", per_class), ("test", max(1, per_class // 5))):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (folder / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (folder / split / cls.name / f.name).symlink_to(f.resolve())
    return folder


def bench_train(data: str, nproc: int, epochs: float, work: Path) -> list[dict]:
    lookalike("train", "--data", data, "--epochs", "0.05", "--device", "cpu", "--tta", "0", "--out",
              str(work / "warm-up"))  # fills the tensor cache: no timed run pays for decoding
    rows = []
    for n in (1, nproc):
        out = work / f"train-{n}"
        extra = ["--nproc", str(n)] if n > 1 else []
        res, wall = lookalike("train", "--data", data, "--epochs", str(epochs), "--device", "cpu", "--tta", "0",
                              "--out", str(out), *extra)
        config = json.loads((out / "config.json").read_text())
        images = res["steps"] * config["batch_size"]
        rows.append({"processes": n, "images_per_s": images / res["train_seconds"], "train_seconds": res["train_seconds"],
                     "wall": wall, "test_acc": res["test_acc"], "batch": config["batch_size"], "steps": res["steps"]})
        print(rows[-1], flush=True)
    return rows


def bench_index(photos: Path, nproc: int, n: int, work: Path) -> list[dict]:
    folder = work / "photos"
    folder.mkdir()
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    for i, p in enumerate(files):
        shutil.copy(p, folder / f"{i:05d}{p.suffix.lower()}")
    lookalike("index", str(folder), "--index", str(work / "warm"))  # the ONNX export, outside the timings
    rows = []
    for k in (1, nproc):
        extra = ["--nproc", str(k)] if k > 1 else []
        res, wall = lookalike("index", str(folder), "--index", str(work / f"index-{k}"), *extra)
        rows.append({"processes": k, "images": res["added"], "wall": wall, "images_per_s": res["added"] / wall})
        print(rows[-1], flush=True)
    return rows


def bn_worker(steps: int) -> None:
    """Run by torchrun: seconds a step with synchronised and with per-rank BatchNorm, printed by rank 0."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from lookalike.distributed import join
    from lookalike.models import create_model
    from lookalike.train.distributed import _options, sync_batchnorm

    group = join("cpu")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // group.local_size))
    per_rank = 256 // group.size
    x = torch.randn(per_rank, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (per_rank,))
    out = {}
    for mode in ("per-rank", "synchronised", "per-rank", "synchronised"):  # twice each, the second timed
        torch.manual_seed(0)
        model = create_model("fast", num_classes=10, widths=[32, 128, 256]).to(memory_format=torch.channels_last)
        if mode == "synchronised":
            sync_batchnorm(model)
        ddp = DistributedDataParallel(model, **_options(first=True))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for i in range(steps + 3):
            if i == 3:
                group.barrier()
                t = time.perf_counter()
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        group.barrier()
        out[mode] = (time.perf_counter() - t) / steps
    if group.is_main:
        print(json.dumps(out))
    group.close()


def bench_bn(nproc: int, steps: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), __file__, "--bn-worker", "--bn-steps", str(steps)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"BatchNorm timing failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-data", help="CIFAR-10 style train/ and test/ class folders")
    ap.add_argument("--photos", type=Path, help="a folder of photos to index")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class (0: all)")
    ap.add_argument("--index-n", type=int, default=400)
    ap.add_argument("--bn-steps", type=int, default=30)
    ap.add_argument("--bn-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bn_worker:
        bn_worker(args.bn_steps)
        return
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="lookalike-ddp-bench-"))
    lines = [f"Load average at the start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min).", ""]
    try:
        if args.train_data:
            data = Path(args.train_data)
            if args.per_class:
                data = subset(data, args.per_class, work / "train-data")
            rows = bench_train(str(data), args.nproc, args.epochs, work)
            share = f"{args.per_class} images per class" if args.per_class else "all images"
            lines += [f"Training, `fast` CPU recipe, {args.epochs:g} epoch(s) of {share}, global batch "
                      f"{rows[0]['batch']}, {rows[0]['steps']} steps:", "",
                      "| processes | training images/s | optimisation s | whole command s | test accuracy |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['processes']} | {r['images_per_s']:.0f} | {r['train_seconds']:.1f} | {r['wall']:.1f} | "
                      f"{100 * r['test_acc']:.2f}% |" for r in rows]
            lines.append("")
        if args.photos:
            rows = bench_index(args.photos, args.nproc, args.index_n, work)
            lines += [f"Indexing {rows[0]['images']} photos (EfficientNet-Lite0, ONNX Runtime), whole command:", "",
                      "| processes | images/s | seconds |", "|---|---|---|"]
            lines += [f"| {r['processes']} | {r['images_per_s']:.1f} | {r['wall']:.1f} |" for r in rows]
            lines.append("")
        if args.bn_steps:
            bn = bench_bn(args.nproc, args.bn_steps)
            lines += [f"BatchNorm under DDP, {args.nproc} processes, `fast` net 32,128,256, global batch 256, "
                      f"{args.bn_steps} timed steps:", "",
                      "| BatchNorm | seconds a step |", "|---|---|"]
            lines += [f"| {mode} | {s:.3f} |" for mode, s in bn.items()]
            lines += ["", f"Synchronised BatchNorm costs {100 * (bn['synchronised'] / bn['per-rank'] - 1):+.1f}% a step "
                      "here."]
        end = os.getloadavg()
        lines += ["", f"Load average at the end: {end[0]:.2f}, {end[1]:.2f}, {end[2]:.2f}."]
        print(f"written to {record('distributed', lines)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
