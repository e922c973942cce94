"""``schema.json``: the single description of the data, inferred and validated by ingest.

Feature names in order, kind (numeric / categorical), dtype, observed bounds, categories, the
task (classification or regression), the target's name and its classes (a classifier) or its
observed bounds (a regressor). Features, export, serving and monitoring read it; none re-derive
it. Also holds the one encoding every later part shares: categorical values -> their index in
``categories``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.contracts.errors import MlcycleError

LABEL = "_label"  # class index (a regressor: the target value) in prepared splits
WEIGHT = "_weight"  # de-biasing sample weight in prepared splits
ROW = "_row"  # row position in data/raw.parquet, kept for traceability
FEEDBACK = "_feedback"  # in raw.parquet: "request_id:index" of a production row, null for source
RESERVED = (LABEL, WEIGHT, ROW, FEEDBACK)


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None

    def decode(self, column: np.ndarray) -> np.ndarray:
        """Encoded values of this categorical feature (indices into ``categories``) as the
        category names, object dtype; a missing or unknown index is None."""
        col = np.asarray(column, dtype=np.float64)
        cats = np.array(list(self.categories or ()), dtype=object)
        ok = np.isfinite(col) & (col >= 0) & (col < len(cats))
        out = np.full(len(col), None, dtype=object)
        out[ok] = cats[col[ok].astype(np.int64)]
        return out

    def groups(self, column: np.ndarray) -> np.ndarray:
        """Encoded values as the group names ``data.sensitive`` reports (the evaluate stage and
        the monitor alike): a category's name, a number as written, "(missing)"."""
        if self.kind == "categorical":
            return np.array(
                ["(missing)" if v is None else str(v) for v in self.decode(column)], dtype=object
            )
        values = np.asarray(column, dtype=np.float64).tolist()
        return np.array(["(missing)" if v != v else f"{v:g}" for v in values], dtype=object)


TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    target: str
    classes: tuple[Any, ...]  # a regressor has none
    image_shape: tuple[int, ...] | None = None
    task: Literal["classification", "regression"] = "classification"
    target_min: float | None = None  # a regressor's observed target bounds
    target_max: float | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def label_dtype(self) -> type:
        """How a prepared split's labels load: class indices, or a regressor's values."""
        return np.float32 if self.regression else np.int64

    def to_dict(self) -> dict[str, Any]:
        target: dict[str, Any] = {"name": self.target}
        if self.regression:
            target.update(min=self.target_min, max=self.target_max)
        else:
            target["classes"] = list(self.classes)
        return {
            "task": self.task,
            "features": [
                {k: v for k, v in dataclasses.asdict(f).items() if v is not None}
                for f in self.features
            ],
            "target": target,
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Schema:
        features = tuple(
            Feature(
                name=f["name"],
                kind=f["kind"],
                dtype=f["dtype"],
                min=f.get("min"),
                max=f.get("max"),
                categories=tuple(f["categories"]) if "categories" in f else None,
            )
            for f in raw["features"]
        )
        shape = raw.get("image_shape")
        target = raw["target"]
        return cls(
            features,
            target["name"],
            tuple(target.get("classes", ())),
            tuple(shape) if shape else None,
            raw.get("task", "classification"),
            target.get("min"),
            target.get("max"),
        )

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Raw feature columns -> float64 matrix (batch, features) in schema order.

        Categorical values become their index in ``categories``; missing or unseen values
        become NaN, which the fitted feature transform imputes.
        """
        missing = [n for n in self.names if n not in df.columns]
        if missing:
            raise MlcycleError(f"feature column {missing[0]!r} is missing from the data")
        out = np.empty((len(df), len(self.features)), dtype=np.float64)
        for j, feat in enumerate(self.features):
            col = df[feat.name]
            if feat.kind == "categorical":
                lookup = {c: i for i, c in enumerate(feat.categories or ())}
                out[:, j] = col.map(
                    lambda v, lk=lookup: lk.get(str(v).strip(), np.nan) if pd.notna(v) else np.nan
                ).to_numpy(dtype=np.float64)
            else:
                out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        out[~np.isfinite(out)] = np.nan
        return out

    def encode_labels(self, target: pd.Series) -> np.ndarray:
        """Target values -> class index (int64), or a regressor's values (float64); NaN-free
        input expected."""
        if self.regression:
            values = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                raise MlcycleError(
                    f"target column {self.target!r}: value {_native(target[bad].iloc[0])!r} is "
                    "not a finite number (the task is regression)"
                )
            return values
        lookup = {c: i for i, c in enumerate(self.classes)}
        codes = target.map(lambda v: lookup.get(_native(v), -1)).to_numpy(dtype=np.int64)
        if (codes < 0).any():
            bad = _native(target[codes < 0].iloc[0])
            raise MlcycleError(
                f"target column {self.target!r}: value {bad!r} is not one of the schema's "
                f"classes {list(self.classes)}"
            )
        return codes

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed (low, high) per feature in encoded space; categoricals span their indices."""
        lo = np.array([f.min if f.kind == "numeric" else 0.0 for f in self.features])
        hi = np.array(
            [
                f.max if f.kind == "numeric" else float(len(f.categories or ()) - 1)
                for f in self.features
            ]
        )
        return lo.astype(np.float64), hi.astype(np.float64)


def _native(value: Any) -> Any:
    """numpy scalar -> Python scalar, so labels compare equal to the JSON-loaded classes; text
    without surrounding whitespace, so ``'yes '`` is the class ``'yes'``."""
    value = value.item() if isinstance(value, np.generic) else value
    return value.strip() if isinstance(value, str) else value
