"""Writes tests/data/run_v1: a run stopped after the first of its two epochs, as checkpoint format 1 stores it.

The files are kept in the repository so that a checkpoint written by an earlier version must still resume
(tests/e2e/test_train_resume.py). Run from the repository root: `python tests/data/make_run_v1.py`. The data path in
the run's config is relative ("data"): the test generates the same images there with `make_folder_dataset`.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/helpers: the dataset generator

from helpers.datasets import make_folder_dataset  # noqa: E402
from lookalike.train.config import TrainConfig  # noqa: E402
from lookalike.train.engine import fit  # noqa: E402

# sgd-sum brings lookahead weights, crop_fraction a small-crop phase: every part of the resume state is there.
CONFIG = dict(data="data", epochs=2, widths=[8, 8, 8], batch_size=12, device="cpu", seed=4, optimizer="sgd-sum",
              crop_size=24, crop_fraction=0.5, eval_batch_size=16)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOOKALIKE_HOME"] = str(Path(tmp) / "home")
        os.chdir(tmp)
        make_folder_dataset(Path("data"))

        def stop_after_first_epoch(kind, payload):
            if kind == "epoch":
                raise KeyboardInterrupt

        try:
            fit(TrainConfig(**CONFIG), Path("run"), on_event=stop_after_first_epoch)
        except KeyboardInterrupt:
            pass
        out = HERE / "run_v1"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for name in ("config.json", "metrics.csv", "last.pt", "best.pt"):
            shutil.copyfile(Path("run") / name, out / name)


if __name__ == "__main__":
    main()
