"""Label-free accuracy estimates: ATC's threshold and DoC reproduce the held-out accuracy they
were fit on, and follow a window whose confidence falls; COT charges a window for the classes it
no longer answers, and the default hands over to COTT only once ATC has dropped."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.contracts.estimate import (
    SHIFT_GATE,
    AccuracyEstimator,
    atc_threshold,
    negative_entropy,
    transport_costs,
)


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
    assert est.method == "atc_cott"  # the default: ATC here (nothing shifted), COTT under shift
    assert est.estimate(p) == got["atc_cott"] == got["atc_ne"]
    assert got["cott"] == pytest.approx(accuracy, abs=1 / 500)  # fit as ATC is
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


def test_transport_charges_the_classes_a_window_no_longer_answers() -> None:
    prior = np.full(4, 0.25)
    one_hot = np.eye(4)[[0, 1, 2, 3] * 5]
    assert transport_costs(one_hot, prior).sum() == pytest.approx(0.0)  # every class answered
    collapsed = np.tile([0.7, 0.1, 0.1, 0.1], (20, 1))  # everything answered as class 0
    costs = transport_costs(collapsed, prior)
    assert sorted(costs.round(6)) == [0.3] * 5 + [0.9] * 15  # 5 slots of class 0, 15 others


def test_the_default_hands_over_to_cott_only_when_atc_drops() -> None:
    p, y = held_out(1000, 0)
    est = AccuracyEstimator.fit(p, y)
    # A strong covariate shift as the digits' blur looks: less confident, and mostly one class.
    shifted = np.tile([0.55, 0.15, 0.15, 0.15], (200, 1))
    got = est.all(shifted)
    assert got["atc_ne"] < est.accuracy - SHIFT_GATE
    expected = float(np.dot(est.class_prior, shifted[0]))  # each class's slots at its p
    assert got["atc_cott"] == got["cott"] and got["cot"] == pytest.approx(expected, abs=0.01)
    # A prior shift: held-out rows of one class, as confident as ever. COT alone would call
    # that harm (three classes missing); the default stays with ATC.
    one_class = p[(y == 0) & (p.argmax(1) == 0)][:200]
    got = est.all(one_class)
    assert got["atc_ne"] >= est.accuracy - SHIFT_GATE
    assert got["atc_cott"] == got["atc_ne"] and got["cot"] < got["atc_ne"] - 0.3


def test_an_estimator_written_before_cott_reads_as_atc() -> None:
    p, y = held_out(300, 1)
    old = {
        k: v
        for k, v in AccuracyEstimator.fit(p, y).to_dict().items()
        if k not in ("class_prior", "cott_threshold")
    }
    est = AccuracyEstimator.from_dict({**old, "method": "atc_ne"})
    assert est.class_prior is None and est.estimate(p) == est.all(p)["atc_ne"]
    assert (
        AccuracyEstimator.from_dict({**old, "method": "atc_cott"}).estimate(p)
        == (est.all(p)["atc_ne"])
    )
