"""Training on real photos (Imagenette): a pretrained linear probe, from-scratch runs under time budgets, and the
throughput of the cached photo pipeline against a per-image PIL ImageFolder + DataLoader loop.

    tar xzf ../shared/datasets/imagenette-160.tar.gz -C /tmp
    flock /work/wt/bench.lock python benchmarks/train_photos.py --data /tmp/imagenette-160 --parts probe,throughput,scratch --budgets 10m,30m

Every training run is `lookalike train ... --json` in its own process, timed from the outside. The probe runs with
an empty cache folder (LOOKALIKE_HOME under --out), so its total time includes decoding every photo once; the
from-scratch runs share one warm cache, built (and timed) before them. The load average is recorded before and after
each part: other work on the machine slows every step, and a time-budgeted run then trains fewer epochs.
Appends a Markdown section, with the command, the commit and the machine, to benchmarks/results/train_photos.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from results_file import record
from train_cifar10 import run_train, time_to

LEADERBOARD_128 = "fastai leaderboard at 128 px (GPU, xse_resnext50, random init): 87.43% after 5 epochs, 91.57% after 20"
CAVEAT = ("ImageNet-overlap caveat: almost every Imagenette photo (3,791 of the 3,925 val images) is an ImageNet "
          "training image, so an ImageNet-pretrained backbone has seen them: the probe and fine-tuning accuracies "
          "are optimistic, unlike the from-scratch ones.")


def load() -> str:
    return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def cached_throughput(data: str, size: int, steps: int, batch: int) -> float:
    """Training images/s of the photo recipe fed by Lookalike's pipeline: the memory-mapped uint8 cache, batched
    random-resized crops and flips, normalisation, one Muon step."""
    import torch
    import torch.nn.functional as F

    from lookalike.datasets import load_data
    from lookalike.models import create_model
    from lookalike.train.batches import Batches
    from lookalike.train.config import TrainConfig, resolve
    from lookalike.train.optimizers import build_optimizer

    bundle = load_data(data, size)
    cfg = resolve(TrainConfig(data=data, model="photo", batch_size=batch), "cpu", size)
    batches = Batches(bundle.train, cfg, batch, bundle.mean, bundle.std, torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("photo", num_classes=len(bundle.classes)).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    order, generator = batches.shuffle(0, batches.steps_per_epoch)
    t = 0.0
    for i in range(steps + 3):
        if i == 3:
            t = time.perf_counter()
        x, y = batches.take(order[i * batch : (i + 1) * batch], generator)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def imagefolder_throughput(data: str, size: int, steps: int, batch: int, workers: int) -> float:
    """The same model and optimizer fed the usual way: torchvision ImageFolder with per-image PIL transforms
    (RandomResizedCrop to the same side, flip, ToTensor, Normalize) and a DataLoader with `workers` processes."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from lookalike.models import create_model
    from lookalike.train.config import TrainConfig, resolve
    from lookalike.train.optimizers import build_optimizer

    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0)), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.46, 0.45, 0.42], [0.27, 0.26, 0.28])])
    ds = datasets.ImageFolder(str(Path(data) / "train"), tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    cfg = resolve(TrainConfig(data=data, model="photo", batch_size=batch), "cpu", size)
    torch.manual_seed(0)
    model = create_model("photo", num_classes=len(ds.classes))
    opt = build_optimizer(model, cfg)
    t = 0.0
    for i, (x, y) in enumerate(loader):
        if i == 3:
            t = time.perf_counter()
        if i == steps + 3:
            break
        loss = F.cross_entropy(model(x), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def parse_minutes(text: str) -> float:
    text = text.strip().lower()
    return float(text[:-1]) / 60 if text.endswith("s") else float(text[:-1]) * 60 if text.endswith("h") else \
        float(text.rstrip("m"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/imagenette-160")
    p.add_argument("--parts", default="probe,throughput,scratch", help="any of probe, finetune, throughput, scratch")
    p.add_argument("--budgets", default="10m,30m", help="time budgets of the from-scratch runs")
    p.add_argument("--image-size", type=int, default=128, help="side of the from-scratch runs")
    p.add_argument("--probe-model", default="efficientnet_lite0")
    p.add_argument("--probe-args", default="", help="extra options for the probe run, e.g. '--image-size 160'")
    p.add_argument("--finetune-budget", default="15m")
    p.add_argument("--train-args", default="", help="extra options for the from-scratch runs")
    p.add_argument("--throughput-steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes of the ImageFolder loop")
    p.add_argument("--out", default="runs/benchmark-photos")
    p.add_argument("--deadline", default="", help="UTC HH:MM: skip (and say so) any part that cannot end by then")
    args = p.parse_args()
    skipped: list[str] = []

    def fits(part: str, seconds: float) -> bool:
        """Whether `part`, taking about `seconds`, ends before --deadline; a part that does not is named."""
        if not args.deadline:
            return True
        h, m = (int(v) for v in args.deadline.split(":"))
        now = time.gmtime()
        left = (h * 60 + m) * 60 - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec)
        if seconds <= left:
            return True
        skipped.append(f"{part} (about {seconds / 60:.0f} min; {max(0, left) / 60:.0f} min were left)")
        return False

    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    def flush_part() -> None:  # each finished part goes on record at once: a later one may be cut short
        if report:
            print(f"recorded in {record('train_photos', report)}", file=sys.stderr, flush=True)
            report.clear()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    say(f"Imagenette ({args.data}), {cores} cores shared with other work (load averages 1/5/15 min below).\n")

    if "probe" in parts or "finetune" in parts:
        env = dict(os.environ, LOOKALIKE_HOME=str(out / "home-probe"))  # cold cache: decoding is in the total
        if "probe" in parts and fits("linear probe", 420):
            before = load()
            r = run_train(args.data, out / "probe", ["--model", args.probe_model, "--pretrained",
                                                     *args.probe_args.split()], env)
            size = json.load(open(out / "probe" / "config.json"))["input_size"]
            say(f"**Linear probe** (`--model {args.probe_model} --pretrained {args.probe_args}`, {size} px, cold "
                f"cache): **{100 * r['test_acc']:.2f}%** val accuracy, **{r['outside_wall_s']:.0f} s** total "
                f"(process start to exit: decoding every photo once, embedding train and val, "
                f"fitting the head). Load before/after: {before} / {load()}.")
            say(f"- {CAVEAT}\n")
            flush_part()
        if "finetune" in parts and fits("fine-tuning", parse_minutes(args.finetune_budget) * 60 + 420):
            before = load()
            r = run_train(args.data, out / "finetune", ["--model", args.probe_model, "--pretrained", "--finetune",
                                                        "--time-budget", args.finetune_budget,
                                                        *args.probe_args.split()], env)
            trend = " -> ".join(f"{100 * float(x['test_acc']):.2f}" for x in r["rows"])
            say(f"**Probe then full fine-tuning** (`--pretrained --finetune --time-budget {args.finetune_budget}`): "
                f"**{100 * r['test_acc']:.2f}%** (TTA), {r['epochs'] - 1} fine-tuning epochs, "
                f"{r['outside_wall_s']:.0f} s total; val accuracy probe -> epochs: {trend}. Load before/after: "
                f"{before} / {load()}.")
            say(f"- {CAVEAT}\n")
            flush_part()

    if "throughput" in parts and fits("throughput", 300):
        from lookalike.datasets import load_data

        load_data(args.data, args.image_size)  # the cache exists before timing, as for every run after the first
        before = load()
        ours = cached_throughput(args.data, args.image_size, args.throughput_steps, 128)
        theirs = imagefolder_throughput(args.data, args.image_size, args.throughput_steps, 128, args.workers)
        say(f"**Training throughput**, `photo` net at {args.image_size} px, batch 128, {args.throughput_steps} "
            f"steps after 3 warm-up steps, side by side: cached pipeline (memory-mapped uint8, batched "
            f"random-resized crops + flips) **{ours:.1f} images/s**; torchvision ImageFolder + per-image PIL "
            f"transforms (RandomResizedCrop, flip, ToTensor, Normalize) + DataLoader with {args.workers} workers "
            f"**{theirs:.1f} images/s** ({ours / theirs:.2f}x). Load before/after: {before} / {load()}.\n")
        flush_part()

    if "scratch" in parts:
        from lookalike.datasets import load_data

        t = time.time()
        load_data(args.data, args.image_size)
        say(f"From scratch at {args.image_size} px: photo cache ready in {time.time() - t:.0f} s before the runs "
            f"(built once; later runs map it). {LEADERBOARD_128}.\n")
        budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
        for budget in budgets:
            if not fits(f"from scratch, --time-budget {budget}", parse_minutes(budget) * 60 + 90):
                continue
            say("| budget | model | epochs (steps) | wall (outside) | training only | final val acc (TTA) | "
                "last-epoch acc | time to 80% | time to 85% | load before / after |")
            say("|---|---|---|---|---|---|---|---|---|---|")
            before = load()
            r = run_train(args.data, out / f"scratch-{budget}", ["--image-size", str(args.image_size),
                                                                 "--time-budget", budget, *args.train_args.split()],
                          dict(os.environ))
            say(f"| `--time-budget {budget}` | {r['model']} | {r['epochs']} ({r['steps']}) | "
                f"{r['outside_wall_s']:.0f} s | {r['train_seconds']:.0f} s | {100 * r['test_acc']:.2f}% | "
                f"{100 * r['last_epoch_test_acc']:.2f}% | {time_to(r, 0.80)} | {time_to(r, 0.85)} | "
                f"{before} / {load()} |")
            say(f"\n`{budget}` val accuracy by epoch (plain, %): "
                + " -> ".join(f"{100 * float(x['test_acc']):.1f}" for x in r["rows"]) + "\n")
            flush_part()
    if skipped:
        say("Not run here, for lack of time before --deadline: " + "; ".join(skipped) + ".")
    flush_part()


if __name__ == "__main__":
    main()
