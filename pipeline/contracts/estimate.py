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
- **COT / COTT** (Lu et al., NeurIPS 2023, "Characterizing Out-of-Distribution Error via
  Optimal Transport"): the window's probability vectors are transported onto one-hot labels in
  the held-out rows' class shares at cost ``1 - p[class]`` (half their L1 distance); COT's error
  is the mean cost, COTT's the share of costs above a threshold fit on the held-out rows as ATC
  fits its own. A model that answers a strong shift with a few classes, confidently, is charged
  for the classes it no longer answers; so is a window whose classes really are fewer (a prior
  shift), which is why it is not used alone:
- **atc_cott** (the default): ATC (negative entropy) while the window's rows look like the
  held-out ones one by one (ATC within ``SHIFT_GATE`` of the held-out accuracy: none, a mild
  covariate or a prior shift), COTT once they do not (bench/estimate.py, one champion: blur
  27.8 -> 2.0 points of error at 200 rows, translate 44.2 -> 10.6, the others as ATC; another
  champion's ATC falls just past the hand-over on blur, 9.6 against ATC's 2.8:
  docs/monitoring.md).

The evaluate stage fits :class:`AccuracyEstimator` on the validation split through the graph that
ships and writes it to the champion directory; the monitor reads it there. Torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

METHODS = ("confidence", "doc", "atc_mc", "atc_ne", "cot", "cott", "atc_cott")
SHIFT_GATE = 0.1  # atc_cott: ATC this far below the held-out accuracy hands over to COTT


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


def transport_costs(probabilities: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(rows,) each row's cost in the optimal transport of the rows' probability vectors onto
    one-hot labels in the shares ``prior`` (rounded to the row count by largest remainders)."""
    from scipy.optimize import linear_sum_assignment

    p = np.asarray(probabilities, dtype=np.float64)
    n = len(p)
    raw = np.asarray(prior, dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    cost = 1.0 - p[:, np.repeat(np.arange(len(counts)), counts)]
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols]


@dataclasses.dataclass(frozen=True)
class AccuracyEstimator:
    """Everything the estimates need from the held-out rows, and which one the monitor uses."""

    method: str  # one of METHODS
    rows: int
    accuracy: float  # on the held-out rows
    mean_confidence: float  # mean top probability there
    atc_mc_threshold: float
    atc_ne_threshold: float
    # COT / COTT: the held-out rows' class shares and COTT's threshold on the negative cost
    # (None in an estimator written before they existed: atc_cott is then ATC alone).
    class_prior: tuple[float, ...] | None = None
    cott_threshold: float | None = None

    @classmethod
    def fit(
        cls, probabilities: np.ndarray, labels: np.ndarray, method: str = "atc_cott"
    ) -> AccuracyEstimator:
        if method not in METHODS:
            raise ValueError(f"unknown estimate method {method!r}; expected one of {METHODS}")
        p = np.asarray(probabilities)
        correct = p.argmax(axis=1) == np.asarray(labels)
        prior = np.bincount(np.asarray(labels), minlength=p.shape[1]) / len(correct)
        return cls(
            method=method,
            rows=len(correct),
            accuracy=float(correct.mean()),
            mean_confidence=float(max_confidence(p).mean()),
            atc_mc_threshold=atc_threshold(max_confidence(p), correct),
            atc_ne_threshold=atc_threshold(negative_entropy(p), correct),
            class_prior=tuple(float(v) for v in prior),
            cott_threshold=atc_threshold(-transport_costs(p, prior), correct),
        )

    def all(self, probabilities: np.ndarray) -> dict[str, float]:
        """Every method's estimate of the accuracy on rows with these probabilities."""
        conf = max_confidence(probabilities)
        out = {
            "confidence": float(conf.mean()),
            "doc": float(np.clip(self.accuracy - (self.mean_confidence - conf.mean()), 0, 1)),
            "atc_mc": float((conf > self.atc_mc_threshold).mean()),
            "atc_ne": float((negative_entropy(probabilities) > self.atc_ne_threshold).mean()),
        }
        if self.class_prior is None or self.cott_threshold is None:
            return {**out, "atc_cott": out["atc_ne"]}
        costs = transport_costs(probabilities, np.asarray(self.class_prior))
        out["cot"] = 1.0 - float(costs.mean())
        out["cott"] = float((-costs > self.cott_threshold).mean())
        shifted = out["atc_ne"] < self.accuracy - SHIFT_GATE
        out["atc_cott"] = out["cott"] if shifted else out["atc_ne"]
        return out

    def estimate(self, probabilities: np.ndarray) -> float:
        """The chosen method's estimate (COT / COTT without their fit: ATC's)."""
        got = self.all(probabilities)
        return got.get(self.method, got["atc_ne"])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.class_prior is not None:
            out["class_prior"] = list(self.class_prior)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AccuracyEstimator:
        """Also an estimator written before COT / COTT existed (their fields absent)."""
        fields = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw}
        if fields.get("class_prior") is not None:
            fields["class_prior"] = tuple(fields["class_prior"])
        return cls(**fields)
