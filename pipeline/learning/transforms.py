"""Feature transforms: fit with scikit-learn, apply with one torch module.

A :class:`FeatureTransform` follows scikit-learn's estimator contract (``__init__`` stores
parameters, ``fit`` learns ``*_`` state and returns ``self``). Fitting uses scikit-learn's
SimpleImputer, StandardScaler, QuantileTransformer and PCA; applying goes through
:class:`TransformModule`, a differentiable torch module rebuilt from plain arrays. The same module
scores candidates in the features stage, sits in front of the network in training and hardening
(the attack differentiates through it) and is exported inside the ONNX graph, so training and
serving cannot drift apart. Saved as ``.npz`` arrays plus JSON: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import skew
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import QuantileTransformer, StandardScaler
from torch import nn

KINDS = ("standardize", "quantile", "log_standardize")
_ARRAYS = (
    "fill_",
    "log_mask_",
    "log_shift_",
    "mean_",
    "scale_",
    "quantiles_",
    "references_",
    "pca_mean_",
    "pca_components_",
)


class FeatureTransform(TransformerMixin, BaseEstimator):
    """Impute -> (log) -> standardize | quantile -> one-hot categoricals -> (PCA).

    Args:
        kind: one of ``KINDS``; how numeric columns are scaled.
        n_categories: per input column, 0 for numeric or the number of categories (the input
            holds category indices, NaN for missing).
        n_components: PCA output size, or None for no projection.
        n_quantiles: knots of the quantile transform.
        skew_threshold: ``log_standardize`` logs numeric columns whose skew is above this.
        seed: PCA's random state.
    """

    def __init__(
        self,
        kind: str = "standardize",
        n_categories: tuple[int, ...] = (),
        n_components: int | None = None,
        n_quantiles: int = 100,
        skew_threshold: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.kind = kind
        self.n_categories = n_categories
        self.n_components = n_components
        self.n_quantiles = n_quantiles
        self.skew_threshold = skew_threshold
        self.seed = seed

    def fit(self, X: np.ndarray, y: Any = None) -> FeatureTransform:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r}; expected one of {KINDS}")
        X = np.asarray(X, dtype=np.float64)
        cats = np.asarray(self.n_categories or (0,) * X.shape[1])
        num, cat = np.flatnonzero(cats == 0), np.flatnonzero(cats > 0)
        self.fill_ = np.zeros(X.shape[1])
        if len(num):
            imp = SimpleImputer(strategy="median", keep_empty_features=True).fit(X[:, num])
            self.fill_[num] = imp.statistics_
        if len(cat):
            imp = SimpleImputer(strategy="most_frequent", keep_empty_features=True).fit(X[:, cat])
            self.fill_[cat] = imp.statistics_
        Xn = np.where(np.isnan(X), self.fill_, X)[:, num]

        self.log_mask_ = np.zeros(len(num))
        self.log_shift_ = Xn.min(axis=0) if len(num) else np.zeros(0)
        if self.kind == "log_standardize" and len(num):
            with np.errstate(all="ignore"):
                skews = np.nan_to_num(skew(Xn, axis=0))
            self.log_mask_ = (skews > self.skew_threshold).astype(np.float64)
            Xn = np.where(self.log_mask_ > 0, np.log1p(Xn - self.log_shift_), Xn)
        scaler = StandardScaler().fit(Xn)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        if self.kind == "quantile":
            qt = QuantileTransformer(
                n_quantiles=min(self.n_quantiles, len(X)), random_state=self.seed
            ).fit(Xn)
            self.quantiles_, self.references_ = qt.quantiles_.T.copy(), qt.references_
        else:
            self.quantiles_, self.references_ = np.zeros((len(num), 0)), np.zeros(0)
        self.pca_mean_ = self.pca_components_ = np.zeros((0,))
        self.n_features_out_ = len(num) + int(cats[cat].sum())
        if self.n_components is not None:
            Z = self.transform(X)
            k = min(self.n_components, Z.shape[1], len(X))
            pca = PCA(n_components=k, svd_solver="full", random_state=self.seed).fit(Z)
            self.pca_mean_, self.pca_components_ = pca.mean_, pca.components_
            self.n_features_out_ = k
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.module(torch.float64)(torch.as_tensor(np.asarray(X, dtype=np.float64)))
        return out.numpy()

    def module(self, dtype: torch.dtype = torch.float32) -> TransformModule:
        return TransformModule(self.state(), dtype)

    def state(self) -> dict[str, Any]:
        """Everything learned, as plain arrays and scalars."""
        state: dict[str, Any] = {k: getattr(self, k) for k in _ARRAYS}
        state["n_categories"] = np.asarray(self.n_categories or (0,) * len(self.fill_))
        return state

    def save(self, npz_path: str | Path, json_path: str | Path, extra: dict | None = None) -> None:
        """Write arrays to ``npz_path`` and parameters plus ``extra`` to ``json_path``."""
        with open(npz_path, "wb") as fh:  # np.savez would append .npz to a temp name
            np.savez(fh, **self.state())  # members carry a fixed 1980 timestamp: stable bytes
        meta = {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "n_features_out": self.n_features_out_,
            **(extra or {}),
        }
        meta["params"]["n_categories"] = list(self.n_categories)
        Path(json_path).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, npz_path: str | Path, json_path: str | Path) -> FeatureTransform:
        meta = json.loads(Path(json_path).read_text())
        params = dict(meta["params"], n_categories=tuple(meta["params"]["n_categories"]))
        obj = cls(**params)
        with np.load(npz_path) as arrays:
            for key in _ARRAYS:
                setattr(obj, key, arrays[key])
        obj.n_features_in_, obj.n_features_out_ = meta["n_features_in"], meta["n_features_out"]
        return obj


class TransformModule(nn.Module):
    """The fitted transform as a differentiable, ONNX-exportable module.

    ``forward``: (batch, features_in) raw values, categoricals as indices, NaN for missing ->
    (batch, features_out).
    """

    def __init__(self, state: dict[str, Any], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        cats = np.asarray(state["n_categories"])
        self.num_idx = [int(i) for i in np.flatnonzero(cats == 0)]
        self.cat_sizes = [(int(i), int(cats[i])) for i in np.flatnonzero(cats > 0)]
        self.use_log = bool(np.any(state["log_mask_"]))
        self.use_quantile = state["quantiles_"].shape[-1] > 0
        self.use_pca = state["pca_components_"].size > 0

        def buf(name: str, value: np.ndarray) -> None:
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=dtype))

        buf("fill", state["fill_"])
        buf("log_mask", state["log_mask_"])
        buf("log_shift", state["log_shift_"])
        buf("mean", state["mean_"])
        buf("scale", state["scale_"])
        if self.use_quantile:
            q = np.asarray(state["quantiles_"])  # (numeric, knots)
            r = np.asarray(state["references_"])  # (knots,)
            width = np.diff(q, axis=1)
            buf("q_lo", q[:, :1])
            buf("q_hi", q[:, -1:])
            buf("q_left", q[:, :-1])
            buf("q_width", np.where(width > 0, width, 1.0))
            buf("q_ramp", np.where(width > 0, np.diff(r), 0.0))  # rise over a knot interval
            buf("q_step", np.where(width > 0, 0.0, np.diff(r)))  # jump at a tied knot
            buf("r_lo", r[:1])
            buf("r_hi", r[-1:])
        if self.use_pca:
            buf("pca_mean", state["pca_mean_"])
            buf("pca_components", state["pca_components_"])  # (k, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.fill, x)
        parts = []
        if self.num_idx:
            num = x[:, self.num_idx]  # (batch, numeric)
            if self.use_log:
                logged = torch.log1p(torch.clamp(num - self.log_shift, min=0.0))
                num = torch.where(self.log_mask > 0, logged, num)
            num = self._quantile(num) if self.use_quantile else (num - self.mean) / self.scale
            parts.append(num)
        for col, size in self.cat_sizes:
            codes = x[:, col : col + 1]  # (batch, 1)
            levels = torch.arange(size, dtype=x.dtype, device=x.device)
            parts.append((codes == levels).to(x.dtype))  # (batch, size)
        z = torch.cat(parts, dim=1)
        if self.use_pca:
            z = (z - self.pca_mean) @ self.pca_components.T
        return z

    def _quantile(self, num: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear CDF as QuantileTransformer: ramps between knots, half steps at ties."""
        v = num.unsqueeze(-1)  # (batch, numeric, 1)
        ramps = torch.clamp((v - self.q_left) / self.q_width, 0.0, 1.0) * self.q_ramp
        steps = 0.5 * ((v > self.q_left).to(v.dtype) + (v >= self.q_left).to(v.dtype)) * self.q_step
        out = self.r_lo + (ramps + steps).sum(dim=-1)  # (batch, numeric)
        # As scikit-learn: at or past the ends -> 0 / 1; the lower end wins for a constant column.
        out = torch.where(num >= self.q_hi.squeeze(-1), self.r_hi, out)
        return torch.where(num <= self.q_lo.squeeze(-1), self.r_lo, out)
