"""The drift test on the digits: calibrated on unshifted windows, sensitive to every scenario.

Reference: 1,163 rows (as the training split); windows: held-out rows drawn without replacement.
Measured over 100 windows per cell before the floors were set (bench/drift.py prints the table):
0-1 % false alarms at 25-100 rows and 100 % detection of every covariate shift at 25 rows and
more, 95 % of a 3-class prior shift at 50 rows. Floors sit below: these are seeded, so they
cannot flake, and a regression in the test's statistics moves them by far more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitoring.detector import Reference, cached_reference, ks_statistic
from monitoring.shifts import clip_to_schema, draw_rows, shift_inputs, true_labels
from pipeline.contracts.params import overlay
from pipeline.contracts.schema import LABEL, WEIGHT
from tests.monitoring.conftest import Digits, simulate_config


def rates(d: Digits, scenario: str, window: int, n: int = 100) -> float:
    ref = Reference.from_rows(d.X_ref, d.schema)
    cfg = simulate_config(scenario=scenario)
    hits = 0
    for seed in range(n):
        rng = np.random.default_rng(seed)
        pool = np.arange(len(d.y_held))
        if scenario == "prior":
            pool = pool[np.isin(d.y_held, cfg.prior_classes)]
        idx = rng.choice(pool, window, replace=False)
        hits += ref.test(shift_inputs(d.X_held[idx], d.schema, cfg, rng), 0.05).drifted
    return hits / n


def test_the_ks_statistic_matches_scipy_on_tied_samples() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = np.sort(rng.integers(0, 17, rng.integers(5, 300)).astype(float))
        b = np.sort(rng.integers(0, 17, rng.integers(5, 60)).astype(float) + rng.integers(0, 2))
        assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize("window", [25, 50, 100])
def test_unshifted_windows_rarely_alarm(split: Digits, window: int) -> None:
    assert rates(split, "none", window) <= 0.05


@pytest.mark.parametrize("scenario", ["intensity", "noise", "translate", "blur", "prior"])
def test_every_shift_is_detected_at_the_default_window(split: Digits, scenario: str) -> None:
    assert rates(split, scenario, 50) >= 0.9


def test_a_value_never_seen_in_a_constant_column_is_drift(split: Digits) -> None:
    ref = Reference.from_rows(split.X_ref, split.schema)
    window = split.X_held[100:150].copy()
    assert not ref.test(window, 0.05).drifted
    window[:5, 0] = 3.0  # pixel_0_0 is 0 in every training row
    result = ref.test(window, 0.05)
    assert result.drifted and result.features[0] == "pixel_0_0"


def test_the_reference_file_is_read_by_schema_name_and_order(split: Digits, tmp_path: Path) -> None:
    """A reference.parquet with mlcycle's reserved columns beside the features, in another
    order, gives the same reference as the features in schema order."""
    names = split.schema.names
    frame = pd.DataFrame(split.X_ref, columns=names)[names[::-1]]
    frame.insert(0, LABEL, np.arange(len(frame)) % 10)
    frame.insert(0, WEIGHT, 1.0)
    frame.to_parquet(tmp_path / "reference.parquet", index=False)
    ref = cached_reference(tmp_path / "reference.parquet", split.schema, tmp_path / "cache", "1")
    assert ref.names == names
    window = split.X_held[100:150]  # a window that does not drift (the test above)
    expected = Reference.from_rows(split.X_ref, split.schema).test(window, 0.05)
    got = ref.test(window, 0.05)
    assert list(got.p_values) == list(expected.p_values) and got.p_min == expected.p_min
    assert not got.drifted
    # Read as the file lays it out (reversed), the same window would drift.
    mislaid = Reference.from_rows(frame[names[::-1]].to_numpy(), split.schema)
    assert mislaid.test(window, 0.05).drifted


def test_shifted_rows_are_valid_requests_and_concept_shift_remaps_labels(split: Digits) -> None:
    d = split
    low, high = d.schema.bounds
    rng = np.random.default_rng(0)
    for scenario in ("intensity", "noise", "translate", "blur"):
        X = shift_inputs(d.X_held[:40], d.schema, simulate_config(scenario=scenario), rng)
        assert X.shape == (40, 64) and np.array_equal(np.clip(X, low, high), X)
        assert not np.array_equal(X, d.X_held[:40])
    assert np.array_equal(clip_to_schema(d.X_held, d.schema), d.X_held)
    cfg = simulate_config(scenario="concept", concept_shift=3)
    assert np.array_equal(true_labels(d.y_held, cfg, d.schema), (d.y_held + 3) % 10)
    prior = overlay(cfg, "simulate", scenario="prior", prior_classes=(0, 1, 2))
    assert set(d.y_held[draw_rows(d.y_held, 300, prior, d.schema, rng)]) == {0, 1, 2}
    # Shuffled passes: every row once before any comes again (production sends an input once).
    n = len(d.y_held)
    order = draw_rows(d.y_held, 2 * n + 7, cfg, d.schema, rng)
    assert len(order) == 2 * n + 7 and not np.array_equal(order[:n], np.arange(n))
    for part in (order[:n], order[n : 2 * n]):
        assert np.array_equal(np.sort(part), np.arange(n))
