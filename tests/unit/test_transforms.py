"""FeatureTransform: scikit-learn parity, categoricals, persistence, differentiability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from pipeline.contracts.schema import Schema
from pipeline.learning.transforms import FeatureTransform


@pytest.fixture(scope="module")
def X(  # noqa: N802 - a data matrix, named as in scikit-learn
    digits: tuple[pd.DataFrame, Schema],
) -> np.ndarray:
    df, schema = digits
    return schema.encode(df)


def test_quantile_matches_scikit_learn_on_ties_and_off_knot_values(X: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    shifted = X + rng.normal(0, 3, X.shape)  # values between, below and above the knots
    ours = FeatureTransform("quantile", n_quantiles=100).fit(X)
    ref = QuantileTransformer(n_quantiles=100, random_state=0).fit(X)
    for data in (X, shifted):
        np.testing.assert_allclose(ours.transform(data), ref.transform(data), atol=1e-12)


def test_standardize_and_pca_match_scikit_learn(X: np.ndarray) -> None:
    Z = StandardScaler().fit_transform(X)
    np.testing.assert_allclose(FeatureTransform("standardize").fit(X).transform(X), Z, atol=1e-10)
    ours = FeatureTransform("standardize", n_components=16).fit(X)
    ref = PCA(16, svd_solver="full").fit(Z)
    assert ours.n_features_out_ == 16
    np.testing.assert_allclose(ours.transform(X), ref.transform(Z), atol=1e-8)


def test_log_standardize_logs_only_skewed_columns(X: np.ndarray) -> None:
    tf = FeatureTransform("log_standardize", skew_threshold=1.0).fit(X)
    assert 0 < tf.log_mask_.sum() < X.shape[1]
    col = int(np.flatnonzero(tf.log_mask_)[0])
    logged = np.log1p(X[:, col] - X[:, col].min())
    expected = (logged - logged.mean()) / logged.std()
    np.testing.assert_allclose(tf.transform(X)[:, col], expected, atol=1e-10)


def test_categoricals_are_imputed_and_one_hot() -> None:
    X = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, np.nan], [np.nan, 2.0]])
    tf = FeatureTransform("standardize", n_categories=(0, 3)).fit(X)
    Z = tf.transform(X)
    assert Z.shape == (4, 1 + 3)
    # column 0 missing -> median 2.0 -> standardized 0; category NaN -> most frequent (2)
    np.testing.assert_allclose(Z[3, 0], 0.0, atol=1e-12)
    np.testing.assert_array_equal(Z[:, 1:], [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])


def test_save_load_round_trip(X: np.ndarray, tmp_path: Path) -> None:
    tf = FeatureTransform("quantile", n_components=8, n_quantiles=50).fit(X)
    tf.save(tmp_path / "f.npz", tmp_path / "f.json", {"chosen": "x"})
    back = FeatureTransform.load(tmp_path / "f.npz", tmp_path / "f.json")
    np.testing.assert_array_equal(back.transform(X), tf.transform(X))


def test_module_is_differentiable_in_raw_input_space(X: np.ndarray) -> None:
    module = FeatureTransform("standardize", n_components=8).fit(X).module()
    x = torch.tensor(X[:4], dtype=torch.float32, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
