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


def plot_regression(
    y: np.ndarray,
    pred: np.ndarray,
    target: str,
    path: Path,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> None:
    """A regressor on the test split: predicted against true (with the intervals, if given) and
    the residuals against the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5))
    if lower is not None and upper is not None:
        a.errorbar(
            y, pred, yerr=[pred - lower, upper - pred], fmt="none", ecolor="lightgrey", zorder=1
        )
    a.scatter(y, pred, s=10, zorder=2)
    ends = [float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))]
    a.plot(ends, ends, color="grey", linestyle="--", label="predicted = true")
    a.set(xlabel=f"true {target}", ylabel=f"predicted {target}", title="test split")
    a.legend()
    b.scatter(pred, y - pred, s=10)
    b.axhline(0.0, color="grey", linestyle="--")
    b.set(xlabel=f"predicted {target}", ylabel="true - predicted", title="residuals (test)")
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
    score = "val_r2" if "val_r2" in h else "val_accuracy"
    name = "R²" if score == "val_r2" else "accuracy"
    b.plot(h.epoch, h[score])
    b.set(xlabel="epoch", ylabel=name, title=f"validation {name}")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_robustness(table: pd.DataFrame, eps: float, path: Path, axes: dict[str, Any]) -> None:
    """The robust figure against eps, trained and hardened; ``axes``: the task's labels (its
    ``robustness_axes``: ylabel, title and perhaps ylim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, colour in (("trained", "tab:blue"), ("hardened", "tab:orange")):
        ax.plot(table.eps, table[name], marker="o", color=colour, label=f"{name}: worst case")
        if f"{name}_pgd" in table:
            ax.plot(
                table.eps, table[f"{name}_pgd"], linestyle="--", color=colour, label=f"{name}: PGD"
            )
    ax.axvline(eps, color="grey", linestyle=":", label=f"harden.eps = {eps:g}")
    ax.set(xlabel="eps (fraction of each feature's range)", **axes)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, one line per
    ``name -> (labels, probabilities)``, with each curve's ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.learning.metrics import expected_calibration_error

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, 16)
    for name, (y, proba) in curves.items():
        confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == y
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, 14)
        xs, ys = [], []
        for b in range(15):
            inside = which == b
            if inside.any():
                xs.append(confidence[inside].mean())
                ys.append(correct[inside].mean())
        ece = expected_calibration_error(y, proba)
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title="reliability on the test split",
        xlim=(0, 1.0),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
