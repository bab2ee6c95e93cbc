"""Training-step and evaluation speed of the `fast` net's whitening layouts, side by side.

    python benchmarks/fast_step.py                        # widths 32,64,128 (the CPU size under 10 minutes)
    python benchmarks/fast_step.py --widths 32,128,256 --rounds 7

Each layout gets the optimizer and channels_last layout that `lookalike train` gives it on this device, and
its steps are timed by the engine's own `time_training_steps` on one fixed random batch (a step's cost does
not depend on the pixels). The "pairs" whitening bias is frozen, as it is after the first 30% of a run. Rounds
alternate between the layouts so that a noisy, shared machine slows both alike; each figure is the median
round. Prints a Markdown table on stdout and appends it, with the command, the commit and the machine, to
benchmarks/results/fast_step.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from results_file import record


def build(whitening: str, widths: list[int], batch: int, device):
    import torch

    from lookalike.models import create_model
    from lookalike.train.config import TrainConfig, resolve
    from lookalike.train.optimizers import build_optimizer

    torch.manual_seed(0)
    cfg = resolve(TrainConfig(data="-", whitening=whitening, widths=widths, batch_size=batch), device.type, epochs=4)
    model = create_model("fast", num_classes=10, widths=widths, whitening=whitening)
    model.init_whitening(torch.randn(256, 3, 32, 32))
    model = model.to(device=device, memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    if model.whiten.bias is not None:
        model.whiten.bias.requires_grad_(False)
    return model, opt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    import torch

    from lookalike.device import resolve_device
    from lookalike.train.budget import time_training_steps

    device = resolve_device(args.device)
    widths = [int(w) for w in args.widths.split(",")]
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    layouts = {w: build(w, widths, args.batch, device) for w in ("pairs", "linear")}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def eval_passes(model, n: int) -> float:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            sync()
            t = time.perf_counter()
            for _ in range(n):
                model(x)
            sync()
        model.train()
        return (time.perf_counter() - t) / n

    def train_steps(model, opt, n: int) -> float:
        return time_training_steps(model, opt, lambda i: (x, y), warm=0, timed=n, device=device)

    for model, opt in layouts.values():  # warm-up: allocator and oneDNN caches
        train_steps(model, opt, 3)
        eval_passes(model, 2)
    step = {w: [] for w in layouts}
    ev = {w: [] for w in layouts}
    for _ in range(args.rounds):
        for w, (model, opt) in layouts.items():
            step[w].append(train_steps(model, opt, args.steps))
            ev[w].append(eval_passes(model, args.steps))

    threads = torch.get_num_threads()
    med = {w: (statistics.median(step[w]), statistics.median(ev[w])) for w in layouts}
    (ps, pe), (ls, le) = med["pairs"], med["linear"]
    report = [f"`fast` {args.widths}, batch {args.batch}, {device}, {threads} threads, median of {args.rounds} "
              f"rounds of {args.steps} steps", "",
              "| whitening | training step | training images/s | evaluation pass | evaluation images/s |",
              "|---|---|---|---|---|",
              *[f"| {w} | {s * 1e3:.1f} ms | {args.batch / s:.0f} | {e * 1e3:.1f} ms | {args.batch / e:.0f} |"
                for w, (s, e) in med.items()], "",
              f"linear against pairs: training steps {ps / ls:.2f}x as fast, evaluation {pe / le:.2f}x"]
    print("\n".join(report))
    print(f"\nrecorded in {record('fast_step', report)}", file=sys.stderr)

if __name__ == "__main__":
    main()
