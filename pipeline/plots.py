"""Figures the stages write for people: confusion matrix, training curves, robustness vs eps.

Matplotlib with the Agg backend, chosen inside each function (nothing at import time). PNGs carry
no timestamp, so the same data gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: tuple[Any, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(
        y,
        pred,
        labels=list(range(len(classes))),
        display_labels=[str(c) for c in classes],
        ax=ax,
        colorbar=False,
    )
    ax.set_title("test split")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = pd.DataFrame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(h.epoch, h.train_loss, label="train")
    a.plot(h.epoch, h.val_loss, label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(h.epoch, h.val_accuracy)
    b.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_robustness(table: pd.DataFrame, eps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("trained", "hardened"):
        ax.plot(table.eps, table[name], marker="o", label=name)
    ax.axvline(eps, color="grey", linestyle=":", label=f"harden.eps = {eps:g}")
    ax.set(
        xlabel="eps (fraction of each feature's range)",
        ylabel="test accuracy under PGD",
        title="robustness vs eps",
        ylim=(0, 1.02),
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
