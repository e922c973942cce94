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
- **atc_cott** (the default before knn): ATC (negative entropy) while the window's rows look like
  the held-out ones one by one (ATC within ``SHIFT_GATE`` of the held-out accuracy: none, a mild
  covariate or a prior shift), COTT once they do not (bench/estimate.py, one champion: blur
  27.8 -> 2.0 points of error at 200 rows, translate 44.2 -> 10.6, the others as ATC; another
  champion's ATC falls just past the hand-over on blur, 9.6 against ATC's 2.8:
  docs/monitoring.md).
- **knn**: agreement with a second model that does not share the network's failure modes, as
  disagreement-based estimates do (Jiang et al., ICLR 2022, "Assessing Generalization of SGD
  via Disagreement"): a ``NEIGHBOURS``-nearest-neighbour vote over the labelled held-out rows
  (numeric columns scaled to their held-out range, categorical ones one-hot, missing cells at
  the held-out median), leaving out the columns the monitor's drift test flagged that read one
  value or none across the window (a stuck or a dead sensor).
  The vote thus answers from the columns that still work, where a confident network misled by
  the broken ones disagrees with it. The estimate is the share of the window's rows where the
  network's answer is the vote, scaled by the held-out accuracy over the same agreement
  measured there leave-one-out (the vote is itself wrong on some in-range rows).
- **atc_knn** (the default): ``atc_cott`` while the drift test flags no column, ``knn`` once it
  flags one (bench/estimate.py, 200-row windows: a breast-cancer table under noise, ATC 40.5
  points off, the vote 5.6; an earlier digits champion's translate 15.0 -> 7.2 and blur
  9.6 -> 3.8; docs/monitoring.md has every scenario).

The evaluate stage fits :class:`AccuracyEstimator` on the validation split through the graph that
ships and writes it to the champion directory; the monitor reads it there. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

METHODS = ("confidence", "doc", "atc_mc", "atc_ne", "cot", "cott", "atc_cott", "knn", "atc_knn")
SHIFT_GATE = 0.1  # atc_cott: ATC this far below the held-out accuracy hands over to COTT
NEIGHBOURS = 20  # knn: the vote's neighbours (bench/estimate.py: 5 and 10 were worse on translate)
VOTE_ROWS = 1000  # knn: at most this many held-out rows kept (a seeded sample of larger splits)


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
class Vote:
    """knn's second model: the labelled held-out rows, and how to place a row among them."""

    rows: tuple[tuple[float, ...], ...]  # raw feature values, schema order (NaN: missing)
    labels: tuple[int, ...]
    lows: tuple[float, ...]  # numeric columns: held-out minimum and range (0: constant, unused)
    spans: tuple[float, ...]
    medians: tuple[float, ...]  # a missing numeric cell's value
    categories: tuple[int, ...]  # per column: 0 numeric, else the categorical's category count
    ratio: float  # held-out accuracy / the held-out leave-one-out agreement

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        labels: np.ndarray,
        predicted: np.ndarray,
        categories: Sequence[int],
        seed: int = 0,
    ) -> Vote:
        X = np.asarray(X, dtype=np.float64)
        labels, predicted = np.asarray(labels), np.asarray(predicted)
        if len(X) > VOTE_ROWS:
            keep = np.sort(np.random.default_rng(seed).choice(len(X), VOTE_ROWS, replace=False))
            X, labels, predicted = X[keep], labels[keep], predicted[keep]
        with np.errstate(all="ignore"):
            lows, highs = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
            medians = np.nanmedian(X, axis=0)
        known = np.isfinite(lows)  # an all-missing column: constant
        lows, spans = np.where(known, lows, 0.0), np.where(known, highs - lows, 0.0)
        vote = cls(
            rows=tuple(tuple(float(v) for v in row) for row in X),
            labels=tuple(int(v) for v in labels),
            lows=tuple(float(v) for v in lows),
            spans=tuple(float(v) for v in spans),
            medians=tuple(float(v) if np.isfinite(v) else 0.0 for v in medians),
            categories=tuple(int(c) for c in categories),
            ratio=1.0,
        )
        agree = float(np.mean(vote.answers(X, leave_one_out=True) == predicted))
        correct = float(np.mean(predicted == labels))
        return dataclasses.replace(vote, ratio=correct / agree if agree > 0 else 1.0)

    def placed(self, X: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Rows in the vote's space: numeric columns scaled to [0, 1] over the held-out range,
        categorical ones one-hot at 1/sqrt(2) (a different category is 1 apart), only
        ``columns`` (a boolean mask over the schema's)."""
        X = np.asarray(X, dtype=np.float64)
        parts = []
        for j in np.flatnonzero(columns):
            col, n = X[:, j], self.categories[j]
            if n:
                codes = np.where(np.isnan(col), -1, col).astype(int)
                parts.append((codes[:, None] == np.arange(n)) / np.sqrt(2.0))
            elif self.spans[j] > 0:
                filled = np.where(np.isnan(col), self.medians[j], col)
                parts.append(((filled - self.lows[j]) / self.spans[j])[:, None])
        return np.hstack(parts) if parts else np.zeros((len(X), 1))

    def answers(
        self, X: np.ndarray, skip: Collection[int] = (), leave_one_out: bool = False
    ) -> np.ndarray:
        """(rows,) the vote's class for each row of ``X``: the most common label among its
        ``NEIGHBOURS`` nearest held-out rows, without the ``skip`` columns.
        ``leave_one_out``: ``X`` are the held-out rows, each voted on by the others."""
        from scipy.spatial import cKDTree  # the monitor's: the service's image has no scipy

        columns = np.ones(len(self.categories), dtype=bool)
        columns[list(skip)] = False
        held = self.placed(np.array(self.rows, dtype=np.float64), columns)
        k = min(NEIGHBOURS + leave_one_out, len(held))
        near = cKDTree(held).query(self.placed(X, columns), k=k)[1].reshape(len(X), k)
        if leave_one_out:  # drop each row itself (wherever ties put it)
            near = np.array([[i for i in r if i != own][: k - 1] for own, r in enumerate(near)])
        labels = np.asarray(self.labels)[near]
        n_classes = int(max(self.labels)) + 1
        counts = (labels[:, :, None] == np.arange(n_classes)).sum(axis=1)
        return counts.argmax(axis=1)

    def agreement(
        self, X: np.ndarray, predicted: np.ndarray, drifted: Collection[int] = ()
    ) -> float:
        """knn's estimate: the share of rows whose ``predicted`` class is the vote's, times
        ``ratio``, at most 1. Of the ``drifted`` columns, those that read one value or none
        across the window (a stuck or dead sensor: nothing left to vote on) are left out;
        a drifted column that still varies (a brighter image, a noisier sensor) still votes."""
        X = np.asarray(X, dtype=np.float64)
        broken = [j for j in drifted if len(np.unique(X[~np.isnan(X[:, j]), j])) <= 1]
        agree = float(np.mean(self.answers(X, broken) == np.asarray(predicted)))
        return min(agree * self.ratio, 1.0)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows"] = [[None if np.isnan(v) else v for v in row] for row in self.rows]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Vote:
        rows = np.array(raw["rows"], dtype=np.float64)  # None -> NaN
        return cls(
            rows=tuple(tuple(float(v) for v in row) for row in rows),
            **{k: tuple(raw[k]) for k in ("labels", "lows", "spans", "medians", "categories")},
            ratio=float(raw["ratio"]),
        )


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
    # knn: the held-out rows' vote (None in an estimator written before it, or fit without the
    # rows: atc_knn is then atc_cott).
    vote: Vote | None = None

    @classmethod
    def fit(
        cls,
        probabilities: np.ndarray,
        labels: np.ndarray,
        method: str = "atc_knn",
        X: np.ndarray | None = None,
        categories: Sequence[int] | None = None,
    ) -> AccuracyEstimator:
        """From the held-out rows' probabilities and labels; with their raw inputs ``X`` (and
        per column 0 for numeric or its category count: ``categories``, all numeric if None)
        also knn's vote."""
        if method not in METHODS:
            raise ValueError(f"unknown estimate method {method!r}; expected one of {METHODS}")
        p = np.asarray(probabilities)
        correct = p.argmax(axis=1) == np.asarray(labels)
        prior = np.bincount(np.asarray(labels), minlength=p.shape[1]) / len(correct)
        vote = None
        if X is not None:
            cats = [0] * np.shape(X)[1] if categories is None else categories
            vote = Vote.fit(X, np.asarray(labels), p.argmax(axis=1), cats)
        return cls(
            method=method,
            rows=len(correct),
            accuracy=float(correct.mean()),
            mean_confidence=float(max_confidence(p).mean()),
            atc_mc_threshold=atc_threshold(max_confidence(p), correct),
            atc_ne_threshold=atc_threshold(negative_entropy(p), correct),
            class_prior=tuple(float(v) for v in prior),
            cott_threshold=atc_threshold(-transport_costs(p, prior), correct),
            vote=vote,
        )

    def all(
        self,
        probabilities: np.ndarray,
        X: np.ndarray | None = None,
        drifted: Collection[int] = (),
    ) -> dict[str, float]:
        """Every method's estimate of the accuracy on rows with these probabilities; knn's
        (and atc_knn's hand-over to it) only with the rows' raw inputs ``X`` and a vote, the
        columns the drift test flagged in ``drifted`` (schema indices)."""
        conf = max_confidence(probabilities)
        out = {
            "confidence": float(conf.mean()),
            "doc": float(np.clip(self.accuracy - (self.mean_confidence - conf.mean()), 0, 1)),
            "atc_mc": float((conf > self.atc_mc_threshold).mean()),
            "atc_ne": float((negative_entropy(probabilities) > self.atc_ne_threshold).mean()),
        }
        if self.class_prior is None or self.cott_threshold is None:
            return {**out, "atc_cott": out["atc_ne"], "atc_knn": out["atc_ne"]}
        costs = transport_costs(probabilities, np.asarray(self.class_prior))
        out["cot"] = 1.0 - float(costs.mean())
        out["cott"] = float((-costs > self.cott_threshold).mean())
        shifted = out["atc_ne"] < self.accuracy - SHIFT_GATE
        out["atc_cott"] = out["cott"] if shifted else out["atc_ne"]
        out["atc_knn"] = out["atc_cott"]
        if self.vote is not None and X is not None:
            predicted = np.asarray(probabilities).argmax(axis=1)
            out["knn"] = self.vote.agreement(X, predicted, drifted)
            if drifted:
                out["atc_knn"] = out["knn"]
        return out

    def estimate(
        self, probabilities: np.ndarray, X: np.ndarray | None = None, drifted: Collection[int] = ()
    ) -> float:
        """The chosen method's estimate (COT / COTT without their fit: ATC's; knn without the
        rows or a vote: atc_knn's hand-over is then atc_cott's)."""
        got = self.all(probabilities, X, drifted)
        return got.get(self.method, got["atc_ne"])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.class_prior is not None:
            out["class_prior"] = list(self.class_prior)
        if self.vote is not None:
            out["vote"] = self.vote.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AccuracyEstimator:
        """Also an estimator written before COT / COTT or the vote existed (their fields absent)."""
        fields = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw}
        if fields.get("class_prior") is not None:
            fields["class_prior"] = tuple(fields["class_prior"])
        if fields.get("vote") is not None:
            fields["vote"] = Vote.from_dict(fields["vote"])
        return cls(**fields)
