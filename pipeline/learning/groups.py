"""How a model does for each group of ``data.sensitive``: per-group figures and the largest gap.

    python -m pipeline.evaluate ...   # with data.sensitive set: metrics/evaluate.json "groups"

Computed with fairlearn's ``MetricFrame`` on the frozen test split and on the production
holdout, for the candidate and the champion alike, from the graph that ships:

- a classifier: accuracy, and per class (one against the rest) the selection rate and the true
  and false positive rates; the demographic parity and equalized odds differences (the largest
  over the classes of fairlearn's binary differences);
- a regressor: MAE, R², and the interval's coverage and mean width;

each group with its row count. :func:`gap` is the largest between-group difference of the
task's main figure (accuracy, R²), best group against worst, with a permutation test of the
two groups' rows: with small groups a difference that chance alone makes often is not evidence,
and the gate (``gate.max_group_gap``) says so instead of refusing. With ``data.sensitive: null``
(the digits default) nothing here runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.schema import Schema
from pipeline.release.gate import GroupGap

PERMUTATIONS = 2000  # the gap test's resamples (a p-value's resolution: 1 / 2001)
MIN_ROWS = 5  # a group with fewer test rows is reported, not compared (its figure is a few rows')


def labels(frame: pd.DataFrame, schema: Schema, column: str) -> np.ndarray:
    """Each row's group as text (:meth:`~pipeline.contracts.schema.Feature.groups`)."""
    feature = next(f for f in schema.features if f.name == column)
    return feature.groups(frame[column].to_numpy(np.float64))


def _rates(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, float]:
    """One-vs-rest selection rate, TPR and FPR of class ``k``."""
    pos, sel = y == k, pred == k
    return {
        "selection_rate": float(sel.mean()),
        "tpr": float(sel[pos].mean()) if pos.any() else float("nan"),
        "fpr": float(sel[~pos].mean()) if (~pos).any() else float("nan"),
    }


def classes(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, n: int) -> dict[str, Any]:
    """A classifier's per-group figures (``n`` classes) and its parity differences."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
    )

    frame = MetricFrame(
        metrics={"rows": lambda t, p: len(t), "accuracy": lambda t, p: float(np.mean(t == p))},
        y_true=y,
        y_pred=pred,
        sensitive_features=groups,
    )
    by_group: dict[str, Any] = {
        str(g): {"rows": int(row["rows"]), "accuracy": float(row["accuracy"])}
        for g, row in frame.by_group.iterrows()
    }
    for g in by_group:
        mine = groups == g
        per = [_rates(y[mine], pred[mine], k) for k in range(n)]
        for key in ("selection_rate", "tpr", "fpr"):
            by_group[g][key] = [r[key] for r in per]
    parity = [
        demographic_parity_difference(y == k, pred == k, sensitive_features=groups)
        for k in range(n)
        if (y == k).any()
    ]
    odds = [
        equalized_odds_difference(y == k, pred == k, sensitive_features=groups)
        for k in range(n)
        if (y == k).any() and (y != k).any()
    ]
    return {
        "by_group": by_group,
        "demographic_parity_difference": float(np.nanmax(parity)) if parity else 0.0,
        "equalized_odds_difference": float(np.nanmax(odds)) if odds else 0.0,
    }


def values(
    y: np.ndarray, pred: np.ndarray, lower: np.ndarray, upper: np.ndarray, groups: np.ndarray
) -> dict[str, Any]:
    """A regressor's per-group figures: MAE, R², the interval's coverage and mean width."""
    from fairlearn.metrics import MetricFrame

    bounds = np.stack([pred, lower, upper], axis=1)

    def r2(t: np.ndarray, p: np.ndarray) -> float:
        ss = float(np.sum((t - t.mean()) ** 2))
        return 1.0 - float(np.sum((t - p[:, 0]) ** 2)) / ss if ss > 0 else float("nan")

    frame = MetricFrame(
        metrics={
            "rows": lambda t, p: len(t),
            "mae": lambda t, p: float(np.mean(np.abs(t - p[:, 0]))),
            "r2": r2,
            "coverage": lambda t, p: float(np.mean((t >= p[:, 1]) & (t <= p[:, 2]))),
            "mean_width": lambda t, p: float(np.mean(p[:, 2] - p[:, 1])),
        },
        y_true=np.asarray(y, np.float64),
        y_pred=bounds.astype(np.float64),
        sensitive_features=groups,
    )
    return {
        "by_group": {
            str(g): {k: (int(v) if k == "rows" else float(v)) for k, v in row.items()}
            for g, row in frame.by_group.iterrows()
        }
    }


def gap(
    column: str,
    figure: str,
    score: Callable[[np.ndarray], float],
    groups: np.ndarray,
    min_rows: int = MIN_ROWS,
    seed: int = 0,
) -> GroupGap | None:
    """The largest difference of ``score`` (rows' indices -> the figure) between two groups of
    at least ``min_rows`` rows, with the permutation test's p-value (the two groups' rows
    reshuffled between them :data:`PERMUTATIONS` times). None with fewer than two groups."""
    names = [g for g in dict.fromkeys(groups.tolist()) if (groups == g).sum() >= min_rows]
    if len(names) < 2:
        return None
    rows = {g: np.flatnonzero(groups == g) for g in names}
    scores = {g: score(rows[g]) for g in names}
    worst = min(names, key=lambda g: scores[g])
    best = max(names, key=lambda g: scores[g])
    observed = scores[best] - scores[worst]
    both = np.concatenate([rows[worst], rows[best]])
    k = len(rows[worst])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(PERMUTATIONS):
        shuffled = rng.permutation(both)
        if abs(score(shuffled[k:]) - score(shuffled[:k])) >= observed - 1e-12:
            hits += 1
    return GroupGap(
        column=column,
        figure=figure,
        value=float(observed),
        worst=str(worst),
        best=str(best),
        worst_value=float(scores[worst]),
        best_value=float(scores[best]),
        worst_rows=len(rows[worst]),
        best_rows=len(rows[best]),
        p=(hits + 1) / (PERMUTATIONS + 1),
    )
