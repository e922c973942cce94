"""``schema.json``: the single description of the data, inferred and validated by ingest.

Feature names in order, kind (numeric / categorical), dtype, observed bounds, categories, target
name and classes. Features, export, serving and monitoring read it; none re-derive it. Also holds
the one encoding every later part shares: categorical values -> their index in ``categories``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.errors import MlcycleError

LABEL = "_label"  # class index in prepared splits
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


@dataclasses.dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    target: str
    classes: tuple[Any, ...]
    image_shape: tuple[int, ...] | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [
                {k: v for k, v in dataclasses.asdict(f).items() if v is not None}
                for f in self.features
            ],
            "target": {"name": self.target, "classes": list(self.classes)},
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
        return cls(
            features,
            raw["target"]["name"],
            tuple(raw["target"]["classes"]),
            tuple(shape) if shape else None,
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
                    lambda v, lk=lookup: lk.get(str(v), np.nan) if pd.notna(v) else np.nan
                ).to_numpy(dtype=np.float64)
            else:
                out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        out[~np.isfinite(out)] = np.nan
        return out

    def encode_labels(self, target: pd.Series) -> np.ndarray:
        """Target values -> class index (int64); NaN-free input expected."""
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
    """numpy scalar -> Python scalar, so labels compare equal to the JSON-loaded classes."""
    return value.item() if isinstance(value, np.generic) else value


def infer_schema(
    df: pd.DataFrame,
    target: str,
    categorical: tuple[str, ...] | None,
    max_missing_share: float,
    max_categories: int,
    image_shape: tuple[int, ...] | None = None,
) -> tuple[pd.DataFrame, Schema]:
    """Validate ``df`` and describe it.

    Returns the cleaned frame (numeric columns as float64 with inf -> NaN, categoricals as
    strings) and its schema. Raises :class:`MlcycleError` naming the column and the problem.
    """
    if len(df) == 0:
        raise MlcycleError("data.source: the data has no rows")
    dupes = df.columns[df.columns.duplicated()].tolist()
    if dupes:
        raise MlcycleError(f"data.source: duplicate column name {dupes[0]!r}")
    if target not in df.columns:
        raise MlcycleError(
            f"data.target: column {target!r} not found; columns are {list(map(str, df.columns))}"
        )
    for name in df.columns:
        if str(name) in RESERVED:
            raise MlcycleError(f"column {name!r}: the name is reserved by mlcycle; rename it")
    categorical = tuple(categorical or ())
    for name in categorical:
        if name not in df.columns:
            raise MlcycleError(f"data.categorical: column {name!r} not found in the data")

    y = df[target]
    n_labelled = int(y.notna().sum())
    classes = sorted({_native(v) for v in y.dropna()}, key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        seen = classes[0] if classes else None
        raise MlcycleError(
            f"target column {target!r} has a single class {seen!r} in {n_labelled} labelled rows;"
            " a classifier needs at least 2"
        )

    clean: dict[str, pd.Series] = {}
    features: list[Feature] = []
    for name in df.columns:
        if name == target:
            continue
        col = df[name]
        is_cat = name in categorical or not (
            pd.api.types.is_numeric_dtype(col) or _mostly_numeric(col, name)
        )
        if is_cat:
            values = col.astype("string")
            missing_share = float(values.isna().mean())
            cats = sorted(values.dropna().unique().tolist())
            if len(cats) > max_categories:
                raise MlcycleError(
                    f"column {name!r} is categorical with {len(cats)} distinct values; at most "
                    f"data.max_categories = {max_categories} (is it numeric text or an id?)"
                )
            clean[name] = values
            features.append(
                Feature(str(name), "categorical", "string", categories=tuple(str(c) for c in cats))
            )
        else:
            dtype = str(col.dtype) if pd.api.types.is_numeric_dtype(col) else "float64"
            values = pd.to_numeric(col, errors="coerce").astype("float64")
            values = values.where(np.isfinite(values))
            missing_share = float(values.isna().mean())
            finite = values.dropna()
            clean[name] = values
            features.append(
                Feature(
                    str(name),
                    "numeric",
                    dtype,
                    min=float(finite.min()) if len(finite) else None,
                    max=float(finite.max()) if len(finite) else None,
                )
            )
        if missing_share > max_missing_share:
            raise MlcycleError(
                f"column {name!r} has {missing_share:.0%} missing or infinite values; at most "
                f"data.max_missing_share = {max_missing_share:.0%}"
            )
    if not features:
        raise MlcycleError("data.source: no feature columns besides the target")
    clean[target] = y
    schema = Schema(tuple(features), str(target), tuple(classes), image_shape)
    return pd.DataFrame(clean), schema


def _mostly_numeric(col: pd.Series, name: Any) -> bool:
    """True if a text column holds numbers; raise if it holds numbers *and* some text."""
    present = col.dropna()
    if len(present) == 0:
        return True
    parsed = pd.to_numeric(present, errors="coerce")
    bad = parsed.isna()
    share_numeric = 1.0 - float(bad.mean())
    if share_numeric == 1.0:
        return True
    if share_numeric >= 0.5:
        first = present[bad].index[0]
        raise MlcycleError(
            f"column {name!r} is numeric ({share_numeric:.0%} of its values are numbers) but holds "
            f"text {present[first]!r} at row {first}; fix the value or list the column in "
            "data.categorical"
        )
    return False
