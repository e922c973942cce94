"""Label-free accuracy estimates for production windows, fit on labelled held-out rows.

Until labels arrive, the monitor can only guess how well the champion does from its own
probabilities. Mean confidence (mean top probability) is calibrated on held-out data from the
training distribution and over-confident under shift. Two estimators made for this:

- **ATC** (Garg et al., ICLR 2022, "Leveraging Unlabeled Data to Predict Out-of-Distribution
  Performance"): a threshold ``t`` on a confidence score, fit on labelled held-out rows so that
  the share of rows scoring above ``t`` equals the accuracy there; on a window, the estimate is
  the share above ``t``. Scores: the top probability (``atc_mc``) or the negative entropy
  (``atc_ne``).
- **DoC** (Guillory et al., ICCV 2021, "Predicting with Confidence on Unseen Distributions"):
  held-out accuracy minus the drop in mean confidence from held-out rows to the window.

The evaluate stage fits :class:`AccuracyEstimator` on the validation split through the graph that
ships and writes it to the champion directory; the monitor reads it there. Torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

METHODS = ("confidence", "doc", "atc_mc", "atc_ne")


def max_confidence(probabilities: np.ndarray) -> np.ndarray:
    """(rows,) the top probability of each row."""
    return np.asarray(probabilities, dtype=np.float64).max(axis=1)


def negative_entropy(probabilities: np.ndarray) -> np.ndarray:
    """(rows,) sum p log p of each row (0 for a one-hot row, -log classes for a uniform one)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


def atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """The ``t`` for which the share of ``scores`` strictly above it is closest to the accuracy
    ``correct`` gives (tied scores cannot be split; the lower threshold wins a tie)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    candidates = np.concatenate([[s[0] - 1.0], np.unique(s)])
    share = (len(s) - np.searchsorted(s, candidates, side="right")) / len(s)
    return float(candidates[np.argmin(np.abs(share - float(np.mean(correct))))])


@dataclasses.dataclass(frozen=True)
class AccuracyEstimator:
    """Everything the estimates need from the held-out rows, and which one the monitor uses."""

    method: str  # one of METHODS
    rows: int
    accuracy: float  # on the held-out rows
    mean_confidence: float  # mean top probability there
    atc_mc_threshold: float
    atc_ne_threshold: float

    @classmethod
    def fit(
        cls, probabilities: np.ndarray, labels: np.ndarray, method: str = "atc_ne"
    ) -> AccuracyEstimator:
        if method not in METHODS:
            raise ValueError(f"unknown estimate method {method!r}; expected one of {METHODS}")
        correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
        return cls(
            method=method,
            rows=len(correct),
            accuracy=float(correct.mean()),
            mean_confidence=float(max_confidence(probabilities).mean()),
            atc_mc_threshold=atc_threshold(max_confidence(probabilities), correct),
            atc_ne_threshold=atc_threshold(negative_entropy(probabilities), correct),
        )

    def all(self, probabilities: np.ndarray) -> dict[str, float]:
        """Every method's estimate of the accuracy on rows with these probabilities."""
        conf = max_confidence(probabilities)
        return {
            "confidence": float(conf.mean()),
            "doc": float(np.clip(self.accuracy - (self.mean_confidence - conf.mean()), 0, 1)),
            "atc_mc": float((conf > self.atc_mc_threshold).mean()),
            "atc_ne": float((negative_entropy(probabilities) > self.atc_ne_threshold).mean()),
        }

    def estimate(self, probabilities: np.ndarray) -> float:
        """The chosen method's estimate."""
        return self.all(probabilities)[self.method]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AccuracyEstimator:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})
