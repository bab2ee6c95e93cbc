"""What the README's first command costs: a fresh virtual environment in /tmp, `pip install -e .` from this
machine's package sources (pip's own cache and configured indexes), its size on disk (`du -s`) and wall time,
then `lookalike demo` in it and the precision it reports. `--full` measures the full install (`.[test]`, what
CI runs: PyTorch included) the same way, side by side.

    python benchmarks/install_size.py [--full] [--warm] [--keep] [--out benchmarks/results/install_size.md]

`--warm` installs once untimed first, so the timed install reads every wheel from pip's cache (a machine that
has installed the project before). The venvs are removed afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def make_venv(where: Path, target: str) -> float:
    """A fresh venv at `where` with `pip install -e TARGET`; returns the install's wall time in seconds."""
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    start = time.perf_counter()
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", "-e", target], check=True, cwd=ROOT)
    return time.perf_counter() - start


def demo(venv: Path, work: Path) -> dict:
    """`lookalike demo --json` in `venv`, with a fresh cache (the ONNX graph found or exported anew)."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LOOKALIKE_HOME": str(work / "home"), "HOME": str(work)}
    start = time.perf_counter()
    done = subprocess.run([str(venv / "bin" / "lookalike"), "demo", "--out", str(work / "demo"), "--json"],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo failed in {venv}: {done.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(done.stdout)
    return {"demo_s": seconds, "p1": figures["precision_at_1"], "p5": figures["precision_at_5"]}


def has_torch(venv: Path) -> bool:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                           "print(u.find_spec('torch') is not None)"], capture_output=True, text=True)
    return done.stdout.strip() == "True"


def measure(name: str, target: str, warm: bool, keep: bool) -> dict:
    base = Path(tempfile.mkdtemp(prefix=f"lookalike-install-{name}-", dir="/tmp"))
    venv = base / "venv"
    try:
        if warm:
            make_venv(venv, target)
        seconds = make_venv(venv, target)
        row = {"install": name, "command": f"pip install -e {target}", "install_s": seconds, "mb": du_mb(venv),
               "torch": has_torch(venv)}
        row.update(demo(venv, base))
        print(json.dumps(row), file=sys.stderr)
        return row
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def table(rows: list[dict]) -> str:
    lines = ["| install | command | size on disk | install time | torch | demo time | P@1 | P@5 |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['install']} | `{r['command']}` | {r['mb']:.0f} MB | {r['install_s']:.0f} s | "
                     f"{'yes' if r['torch'] else 'no'} | {r['demo_s']:.0f} s | {r['p1']:.3f} | {r['p5']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also measure the full install (.[test])")
    parser.add_argument("--warm", action="store_true", help="install once untimed first (pip's cache warm)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs under /tmp")
    parser.add_argument("--out", type=Path, help="write the table as markdown here")
    args = parser.parse_args()
    rows = [measure("lean", ".", args.warm, args.keep)]
    if args.full:
        rows.append(measure("full", ".[test]", args.warm, args.keep))
    text = (f"Python {platform.python_version()}, {platform.machine()}, {platform.system()}; "
            f"pip cache {'warm (one untimed install first)' if args.warm else 'as found'}.\n\n{table(rows)}\n")
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
