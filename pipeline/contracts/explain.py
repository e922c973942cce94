"""Why the served graph answered as it did: per-feature occlusion in one onnxruntime call.

    POST /explain   (serving/routes.py; the same records as /predict)
    python bench/explain.py   # faithfulness: deletion curves, agreement with Integrated Gradients

Each record is answered beside a copy of itself per feature with that feature missing (NaN, which
the graph imputes exactly as it does a null in a request: the training fill value), all in one
batch of ``records x (features + 1)`` rows. A feature's attribution is how much the task's figure
(:attr:`~pipeline.contracts.task.ServedTask.explained`: the answered class's log-odds against
the runner-up, a regressor's prediction) falls when the graph does not know it: positive where
the feature supports the answer, negative where it argues against it, in the answer's own
units, from the graph that serves (no torch, no second model). For image-shaped data (schema.json's
``image_shape``) the attributions also come as a heatmap, row by row, for a browser to draw.

Occlusion is exact for what it measures (one feature at a time, against the model's own notion
of "unknown"); it misses what features do only together. bench/explain.py measures how faithful
it is: removing the top-k attributed features must lower the answer's probability faster than
removing k random ones, and its ranking is compared with captum's Integrated Gradients on the
PyTorch twin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.contracts.schema import Schema
from pipeline.contracts.task import ServedTask

MAX_ROWS = 65_536  # graph rows one /explain call may run: records x (features + 1)


@dataclasses.dataclass(frozen=True)
class Explained:
    """Records' answers and their attributions.

    ``outputs``: the graph's outputs for the records themselves (as /predict gets them);
    ``figure``: (records,) the explained figure of each answer; ``attributions``: (records,
    features) the figure's fall with each feature missing, schema order.
    """

    outputs: list[np.ndarray]
    figure: np.ndarray
    attributions: np.ndarray


def occluded(X: np.ndarray) -> np.ndarray:
    """(records x (features + 1), features) float32: each record, then one copy per feature
    with that feature NaN."""
    n, d = X.shape
    batch = np.repeat(np.asarray(X, np.float32)[:, None, :], d + 1, axis=1)  # (n, d + 1, d)
    j = np.arange(d)
    batch[:, j + 1, j] = np.nan
    return batch.reshape(n * (d + 1), d)


def occlusion(
    run: Callable[[np.ndarray], list[np.ndarray]], X: np.ndarray, task: ServedTask
) -> Explained:
    """Explain the answers of ``run`` (the graph: encoded rows -> its outputs) to ``X``."""
    d = X.shape[1]
    outputs = run(occluded(X))
    figure = task.explained_figure(outputs, d + 1).astype(np.float64)  # (n, d + 1)
    own = [o[:: d + 1] for o in outputs]  # the records' own rows
    return Explained(own, figure[:, 0], figure[:, :1] - figure[:, 1:])


def records(explained: Explained, schema: Schema) -> list[dict[str, Any]]:
    """Each record's attributions as the response gives them: by feature name, and as a
    heatmap (rows of the image) where the data is image-shaped."""
    names = schema.names
    out = []
    for i, row in enumerate(explained.attributions.tolist()):
        item: dict[str, Any] = {
            "index": i,
            "explained_value": float(explained.figure[i]),
            "attributions": dict(zip(names, row, strict=True)),
        }
        if schema.image_shape is not None and len(schema.image_shape) == 2:
            h, w = schema.image_shape
            item["heatmap"] = [row[r * w : (r + 1) * w] for r in range(h)]
        out.append(item)
    return out
