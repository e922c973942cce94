"""How faithful the served explanations are (:mod:`pipeline.contracts.explain`): deletion curves
and agreement with Integrated Gradients.

    python bench/explain.py      # on the champion: the figures docs/serving.md quotes

- **Deletion curve** (Petsiuk et al., 2018, RISE): remove features one by one, most attributed
  first (missing: the graph imputes them, as occlusion does), and follow the answered class's
  probability; an explanation that names what the answer rests on makes it fall faster than
  removing the same number of features in random order. The area under the curve (mean over
  k = 0..features of the probability, per record) is the figure: lower is more faithful.
- **Integrated Gradients** (Sundararajan et al., 2017; captum's implementation) on the PyTorch
  twin of the served graph, from the graph's fill values (what occlusion removes a feature to)
  to the record: a path method that sees features act together. The Spearman rank correlation
  of the two attributions per record says how far occlusion's ranking agrees.

torch and captum load only when :func:`integrated_gradients` runs; the deletion curve needs
nothing but the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def deletion_curves(
    run: Callable[[np.ndarray], list[np.ndarray]], X: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """(records, features + 1): a classifier's probability of each record's answered class with
    the first k features of the row's ``order`` (records, features) missing, k = 0..features,
    in one call of the graph."""
    n, d = X.shape
    batch = np.repeat(np.asarray(X, np.float32)[:, None, :], d + 1, axis=1)  # (n, d + 1, d)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(d)[None, :].repeat(n, axis=0), axis=1)
    gone = ranks[:, None, :] < np.arange(d + 1)[None, :, None]  # (n, k, feature)
    batch[gone] = np.nan
    probs = run(batch.reshape(n * (d + 1), d))[0].astype(np.float64).reshape(n, d + 1, -1)
    served = probs[:, 0].argmax(axis=1)[:, None, None]
    return np.take_along_axis(probs, served, axis=2)[:, :, 0]


def deletion_areas(
    run: Callable[[np.ndarray], list[np.ndarray]],
    X: np.ndarray,
    attributions: np.ndarray,
    seeds: int = 5,
) -> tuple[float, float]:
    """(attributed, random): the mean area under the deletion curve, most attributed first and
    in random order (mean over ``seeds`` seeded permutations)."""
    attributed = deletion_curves(run, X, np.argsort(-attributions, axis=1)).mean()
    random = [
        deletion_curves(
            run, X, np.argsort(np.random.default_rng(s).random(attributions.shape), axis=1)
        ).mean()
        for s in range(seeds)
    ]
    return float(attributed), float(np.mean(random))


def integrated_gradients(
    served: Any, fill: np.ndarray, X: np.ndarray, steps: int = 64
) -> np.ndarray:
    """(records, features): captum's Integrated Gradients of the answered class's probability
    (``served``: the graph's PyTorch twin, raw features -> (probabilities, label)) from ``fill``
    (the graph's imputation values) to each record."""
    import torch
    from captum.attr import IntegratedGradients

    x = torch.as_tensor(np.asarray(X, np.float32))
    with torch.no_grad():
        target = served(x)[1]
    ig = IntegratedGradients(lambda inp: served(inp)[0])
    base = torch.as_tensor(np.asarray(fill, np.float32)).expand_as(x)
    return ig.attribute(x, baselines=base, target=target, n_steps=steps).detach().numpy()


def rank_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(records,) Spearman's rank correlation of two attributions, row by row (NaN where one
    row is constant)."""
    from scipy import stats

    return np.array([stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)])
