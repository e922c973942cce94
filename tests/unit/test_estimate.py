"""Label-free accuracy estimates: ATC's threshold and DoC reproduce the held-out accuracy they
were fit on, and follow a window whose confidence falls."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.contracts.estimate import AccuracyEstimator, atc_threshold, negative_entropy


def held_out(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities over 4 classes whose top class is right about 80 % of the time."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (rows, 4))
    labels = rng.integers(0, 4, rows)
    right = rng.random(rows) < 0.8
    logits[right, labels[right]] += 3.0
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_the_rows_it_was_fit_on_every_estimate_is_their_accuracy(seed: int) -> None:
    p, y = held_out(500, seed)
    est = AccuracyEstimator.fit(p, y)
    accuracy = float((p.argmax(1) == y).mean())
    got = est.all(p)
    assert got["atc_mc"] == pytest.approx(accuracy, abs=1 / 500)
    assert got["atc_ne"] == pytest.approx(accuracy, abs=1 / 500)
    assert got["doc"] == pytest.approx(accuracy)
    assert got["confidence"] == pytest.approx(est.mean_confidence)
    assert est.estimate(p) == got["atc_ne"]  # the default method
    assert AccuracyEstimator.from_dict(est.to_dict()) == est


def test_the_threshold_puts_the_accuracy_share_above_it_including_the_extremes() -> None:
    scores = np.array([0.1, 0.3, 0.4, 0.7, 0.9])
    t = atc_threshold(scores, np.array([1, 1, 1, 0, 0]))  # 60 % right
    assert (scores > t).mean() == pytest.approx(0.6)
    assert (scores > atc_threshold(scores, np.ones(5))).all()
    assert not (scores > atc_threshold(scores, np.zeros(5))).any()


def test_a_less_confident_window_is_estimated_lower() -> None:
    p, y = held_out(1000, 0)
    est = AccuracyEstimator.fit(p, y)
    flatter = p**0.3 / (p**0.3).sum(1, keepdims=True)  # same argmax, far less confident
    assert np.array_equal(flatter.argmax(1), p.argmax(1))
    assert negative_entropy(flatter).mean() < negative_entropy(p).mean()
    got = est.all(flatter)
    assert got["atc_ne"] < est.accuracy - 0.2 and got["doc"] < est.accuracy - 0.2


def test_an_unknown_method_is_refused() -> None:
    p, y = held_out(50, 0)
    with pytest.raises(ValueError, match="unknown estimate method 'oracle'"):
        AccuracyEstimator.fit(p, y, method="oracle")
