"""Stratified row samples for searches that do not need every row (label-noise folds, the
feature search, the leak check). Shared by the preprocess and features stages; not run alone."""

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
