"""Stratified row samples for searches that do not need every row (label-noise folds, the
feature search, the leak check), and a regression target's strata (its quantile bins). Shared by
the preprocess and features stages; not run alone."""

from __future__ import annotations

import numpy as np


def stratified_sample(idx: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """At most about ``n`` of ``idx`` (sorted), each class in proportion but never fewer than
    min(its count, 50) rows, so a rare class stays in the sample; all of ``idx`` when it is
    small or ``n`` is None."""
    if n is None or len(idx) <= n:
        return idx
    rng = np.random.default_rng(seed)
    labels = y[idx]
    picked = []
    for c in np.unique(labels):
        members = idx[labels == c]
        quota = max(min(len(members), 50), round(n * len(members) / len(idx)))
        picked.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def target_bins(y_source: np.ndarray, y: np.ndarray, bins: int = 10) -> np.ndarray:
    """A regression target's quantile bin per row of ``y`` (edges cut on the source rows, so the
    frozen test split does not move when feedback arrives): the strata of its splits."""
    k = int(max(2, min(bins, len(y_source) // 10)))
    edges = np.unique(np.quantile(y_source, np.linspace(0, 1, k + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right").astype(np.int64)
