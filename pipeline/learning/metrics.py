"""Classification metrics shared by train, harden and evaluate. Pure functions on arrays."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, log loss, ECE and per-class recall of predicted probabilities."""
    labels = list(range(n_classes))
    pred = proba.argmax(axis=1)
    clipped = np.clip(proba, 1e-12, 1.0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
        "ece": expected_calibration_error(y, proba),
        "per_class_recall": {
            str(c): float(r)
            for c, r in zip(
                labels,
                recall_score(y, pred, labels=labels, average=None, zero_division=0),
                strict=True,
            )
        },
    }
