"""Training curves and the confusion matrix as PNG files (matplotlib, headless, imported only here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from ..atomic import atomic_write


def load_pyplot():
    """matplotlib's pyplot on the headless Agg backend (its first import takes a second or two)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=100)


def plot_curves(history: Sequence[dict], path: os.PathLike) -> None:
    """Loss and accuracy per epoch, train against test (as in the lab report)."""
    plt = load_pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: os.PathLike,
                   title: str = "Confusion matrix (test)") -> None:
    """Rows: true class; columns: predicted class; counts written in the cells when the grid is small."""
    import numpy as np

    plt = load_pyplot()
    cm = np.asarray(matrix)
    k = len(classes)
    size = max(5, min(16, 0.6 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
