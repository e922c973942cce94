"""Temperature scaling finds the temperature that generated the labels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learning.calibration import fit_temperature, softmax
from pipeline.learning.metrics import expected_calibration_error


@pytest.mark.parametrize("true_t", [0.3, 1.0, 3.0])
def test_fit_temperature_recovers_the_generating_one(true_t: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20000, 4))
    p = softmax(logits, true_t)
    y = (rng.random((len(p), 1)) > p.cumsum(axis=1)).sum(axis=1)  # y ~ softmax(logits / T)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.05)
    assert expected_calibration_error(y, softmax(logits, t)) < 0.02
    if true_t != 1.0:
        assert expected_calibration_error(y, softmax(logits)) > 0.05  # uncalibrated before
