"""Occlusion against a graph: each feature's attribution is the answer's fall without it.

A stand-in graph (numpy, imputing NaN with a fill vector as the exported graphs do) whose answer
is known in closed form, so the attributions can be checked exactly; the real graph's are
checked over HTTP in tests/serving/test_service.py and for faithfulness in tests/model.
"""

from __future__ import annotations

import numpy as np

from pipeline.contracts.explain import occluded, occlusion, records
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks.classification import ServedClassification
from pipeline.contracts.tasks.regression import ServedRegression

FILL = np.array([1.0, -2.0, 0.5, 0.0])
W = np.array([[2.0, -1.0, 0.0, 0.5], [-1.0, 1.0, 3.0, 0.0], [0.0, 0.0, -2.0, 1.0]])


def imputed(X: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(X), FILL, X)


def classifier(X: np.ndarray) -> list[np.ndarray]:
    logits = imputed(X) @ W.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return [p.astype(np.float32), p.argmax(axis=1)]


def regressor(X: np.ndarray) -> list[np.ndarray]:
    pred = imputed(X) @ np.array([1.0, 2.0, -3.0, 0.5])
    return [pred.astype(np.float32), (pred - 1).astype(np.float32), (pred + 1).astype(np.float32)]


def test_each_copy_misses_one_feature() -> None:
    X = np.arange(8, dtype=np.float32).reshape(2, 4)
    batch = occluded(X).reshape(2, 5, 4)
    assert np.array_equal(batch[:, 0], X)
    for j in range(4):
        assert np.isnan(batch[:, j + 1, j]).all()
        others = np.delete(np.arange(4), j)
        assert np.array_equal(batch[:, j + 1, others], X[:, others])


def margin(probs: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Class ``cls``'s log-odds against the strongest other class, per row."""
    logp = np.log(probs.astype(np.float64))
    own = logp[np.arange(len(cls)), cls]
    logp[np.arange(len(cls)), cls] = -np.inf
    return own - logp.max(axis=1)


def test_a_classifiers_attribution_is_the_fall_of_its_answered_class() -> None:
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    done = occlusion(classifier, X, ServedClassification())
    probs, labels = classifier(X)
    np.testing.assert_array_equal(done.outputs[1], labels)
    np.testing.assert_allclose(done.figure, margin(probs, labels), rtol=1e-6)
    assert (done.figure > 0).all()  # the answered class leads
    for j in range(4):
        Xj = X.copy()
        Xj[:, j] = np.nan
        without = margin(classifier(Xj)[0], labels)  # the same class, not the new answer
        np.testing.assert_allclose(done.attributions[:, j], done.figure - without, atol=1e-5)


def test_a_regressors_attribution_is_its_weight_times_the_distance_from_the_fill() -> None:
    X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    done = occlusion(regressor, X, ServedRegression())
    w = np.array([1.0, 2.0, -3.0, 0.5])
    np.testing.assert_allclose(done.attributions, w * (X - FILL), rtol=1e-5, atol=1e-5)
    schema = Schema.from_dict(
        {
            "features": [
                {"name": f"f{j}", "kind": "numeric", "dtype": "float64", "min": -9.0, "max": 9.0}
                for j in range(4)
            ],
            "target": {"name": "y", "min": -50.0, "max": 50.0},
            "image_shape": [2, 2],
        }
    )
    out = records(done, schema)
    assert list(out[0]["attributions"]) == ["f0", "f1", "f2", "f3"]
    assert out[0]["heatmap"] == [
        done.attributions[0, :2].tolist(),
        done.attributions[0, 2:].tolist(),
    ]
    assert out[3]["explained_value"] == float(done.figure[3])
