"""Schema inference for the ingest stage: a source table's columns -> :class:`Schema`.

Column kinds (numeric, categorical, datetime as days since 1970), observed bounds and
categories, the task (``data.task``: classification, regression, or ``auto``), the target's
classes or bounds, and every check that names a bad column (nested values, too many missing
cells, too many categories, a continuous target asked to be classes). Only ingest runs it; the
contracts keep the schema itself (:mod:`pipeline.contracts.schema`), which the service ships.
"""

from __future__ import annotations

import datetime
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.schema import RESERVED, Feature, Schema, _native

DATETIME_DTYPE = "datetime: days since 1970-01-01 UTC"  # the dtype schema.json gives such columns
ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
)


def infer_schema(
    df: pd.DataFrame,
    target: str,
    categorical: tuple[str, ...] | None,
    max_missing_share: float,
    max_categories: int,
    image_shape: tuple[int, ...] | None = None,
    row_name: Callable[[int], str] | None = None,
    task: str = "auto",
) -> tuple[pd.DataFrame, Schema]:
    """Validate ``df`` and describe it.

    ``task`` (``data.task``): ``classification``, ``regression``, or ``auto``: regression when
    the target looks continuous (numeric with fractional values or mostly distinct ones).

    Returns the cleaned frame (numeric columns as float64 with inf -> NaN, datetimes as float days
    since 1970-01-01 with NaT -> NaN, categoricals as stripped strings, row-index columns dropped)
    and its schema. Raises :class:`MlcycleError` naming the column and the problem; warnings
    (dropped index columns, labels differing only in case) go to stderr. ``row_name(i)`` names
    the i-th row (0-based) in messages the way the user's file counts it.
    """
    row_name = row_name or (lambda i: f"row {i + 1}")
    if len(df) == 0:
        raise MlcycleError("data.source: the data has no rows")
    df = df.reset_index(drop=True)
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
    for name in index_columns(df, target, categorical):
        warn(f"column {name!r} is a row index (unique increasing integers); dropped")
        df = df.drop(columns=[name])
    for name in df.columns:
        reject_nested(df[name], name, row_name)

    y = strip_text(df[target])
    n_labelled = int(y.notna().sum())
    if task == "auto":
        task = "regression" if looks_continuous(y) is not None else "classification"
    classes: list[Any] = []
    bounds: tuple[float | None, float | None] = (None, None)
    if task == "regression":
        y, bounds = regression_target(y, target, row_name)
    else:
        reject_continuous(y, target)
        classes = sorted({_native(v) for v in y.dropna()}, key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            seen = classes[0] if classes else None
            raise MlcycleError(
                f"target column {target!r} has a single class {seen!r} in {n_labelled} labelled "
                "rows; a classifier needs at least 2"
            )
        warn_case_variants(classes, f"target column {target!r}", "classes")

    clean: dict[str, pd.Series] = {}
    features: list[Feature] = []
    for name in df.columns:
        if name == target:
            continue
        col = df[name]
        as_dates = None if name in categorical else datetime_days(col)
        is_cat = as_dates is None and (
            name in categorical
            or not (pd.api.types.is_numeric_dtype(col) or _mostly_numeric(col, name, row_name))
        )
        if is_cat:
            values = strip_text(col).astype("string")
            missing_share = float(values.isna().mean())
            cats = sorted(values.dropna().unique().tolist())
            if len(cats) > max_categories:
                raise MlcycleError(
                    f"column {name!r} is categorical with {len(cats)} distinct values; at most "
                    f"data.max_categories = {max_categories} (is it numeric text or an id?)"
                )
            warn_case_variants(cats, f"column {name!r}", "categories")
            clean[name] = values
            features.append(
                Feature(str(name), "categorical", "string", categories=tuple(str(c) for c in cats))
            )
        else:
            if as_dates is not None:
                dtype, values = DATETIME_DTYPE, as_dates
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
                f"column {name!r} has {_pct(missing_share)} missing or infinite values; at most "
                f"data.max_missing_share = {_pct(max_missing_share)}"
            )
    if not features:
        raise MlcycleError("data.source: no feature columns besides the target")
    clean[target] = y
    schema = Schema(
        tuple(features), str(target), tuple(classes), image_shape, task, bounds[0], bounds[1]
    )  # type: ignore[arg-type]
    return pd.DataFrame(clean), schema


def warn(message: str) -> None:
    print(f"ingest: warning: {message}", file=sys.stderr)


def _pct(share: float) -> str:
    """A share as a percentage that never rounds up to a boundary: 0.9975 -> '99.7%'."""
    floored = math.floor(share * 1000) / 10
    return f"{floored:g}%"


def strip_text(col: pd.Series) -> pd.Series:
    """Surrounding whitespace removed from text values; a value that was only spaces is missing."""
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return col
    stripped = col.map(lambda v: v.strip() if isinstance(v, str) else v)
    return stripped.mask(stripped.map(lambda v: isinstance(v, str) and v == ""))


def index_columns(df: pd.DataFrame, target: str, categorical: tuple[str, ...]) -> list[Any]:
    """Columns that number the rows: ``Unnamed: 0`` / ``index`` (pandas wrote the index) or
    exactly 0..n-1 / 1..n; as features they leak the row order (often sorted by label)."""
    out = []
    for name in df.columns:
        col = df[name]
        if name == target or name in categorical or not pd.api.types.is_integer_dtype(col):
            continue
        values = col.to_numpy()
        if len(values) < 2 or not (np.diff(values) > 0).all():
            continue
        unnamed = str(name) in ("", "index", "level_0") or str(name).startswith("Unnamed: ")
        counts = values[0] in (0, 1) and values[-1] - values[0] == len(values) - 1
        if unnamed or counts:
            out.append(name)
    return out


def reject_nested(col: pd.Series, name: Any, row_name: Callable[[int], str]) -> None:
    """Lists, arrays, dicts or bytes in a cell: no feature can be made of them."""
    if not pd.api.types.is_object_dtype(col):
        return
    nested = col.map(lambda v: isinstance(v, list | tuple | dict | set | np.ndarray | bytes))
    if nested.any():
        pos = int(np.flatnonzero(nested.to_numpy())[0])
        kind = type(col.iloc[pos]).__name__
        raise MlcycleError(
            f"column {name!r} holds {kind} values ({row_name(pos)}); mlcycle needs one number or "
            "category per cell: expand it into columns"
        )


def looks_continuous(y: pd.Series) -> str | None:
    """Why a target looks like a regression target, or None: ``data.task: auto``'s rule.

    Numeric, and either fractional with more than 10 distinct values, or mostly distinct, or
    more than 50 distinct values most of which occur under 3 times (no split could hold every
    such class: scikit-learn's diabetes target, 214 integers in 442 rows)."""
    values = pd.to_numeric(y.dropna(), errors="coerce")
    if len(values) == 0 or values.isna().any():
        return None
    counts = values.value_counts()
    distinct = len(counts)
    fractional = bool((values != np.round(values)).any())
    rare = distinct > 50 and float(counts.median()) < 3
    if (fractional and distinct > 10) or distinct > max(50, len(values) // 2) or rare:
        example = _native(
            values[values != np.round(values)].iloc[0] if fractional else values.iloc[0]
        )
        return f"{distinct} distinct values in {len(values)} rows, such as {example!r}"
    return None


def reject_continuous(y: pd.Series, target: str) -> None:
    """``data.task: classification`` with a target that looks continuous: refused."""
    why = looks_continuous(y)
    if why is not None:
        raise MlcycleError(
            f"target column {target!r} looks continuous ({why}) but data.task is "
            "classification: set data.task: regression (or auto), bin it into classes, or point "
            "data.target at a categorical column"
        )


MIN_REGRESSION_VALUES = 10  # distinct target values a regressor needs


def regression_target(
    y: pd.Series, target: str, row_name: Callable[[int], str]
) -> tuple[pd.Series, tuple[float, float]]:
    """A regression target as float64 (inf refused, missing kept: unlabelled rows), and its
    observed bounds."""
    if not pd.api.types.is_numeric_dtype(y):
        parsed = pd.to_numeric(y, errors="coerce")
        bad = parsed.isna() & y.notna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise MlcycleError(
                f"target column {target!r} holds text {y.iloc[pos]!r} at {row_name(pos)}; "
                "data.task is regression, which needs a number in every labelled row"
            )
        y = parsed
    values = y.astype("float64")
    inf = np.isinf(values.to_numpy())
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise MlcycleError(
            f"target column {target!r} holds {values.iloc[pos]!r} at {row_name(pos)}; a "
            "regression target must be finite"
        )
    distinct = int(values.nunique())
    if distinct < MIN_REGRESSION_VALUES:
        raise MlcycleError(
            f"target column {target!r} has {distinct} distinct values; a regressor needs at "
            f"least {MIN_REGRESSION_VALUES} (is it a class label? set data.task: classification)"
        )
    return values, (float(values.min()), float(values.max()))


def warn_case_variants(values: list[Any], where: str, what: str) -> None:
    """Warn about text values that differ only in case (and whitespace): one class or two?"""
    groups: dict[str, list[str]] = {}
    for v in values:
        if isinstance(v, str):
            groups.setdefault(" ".join(v.casefold().split()), []).append(v)
    for variants in groups.values():
        if len(variants) > 1:
            shown = " and ".join(repr(v) for v in variants)
            warn(
                f"{where} has {what} {shown} that differ only in case or spacing; if they are "
                "one, fix the data"
            )


def datetime_days(col: pd.Series) -> pd.Series | None:
    """Dates and times as float days since 1970-01-01 UTC (NaT -> NaN); None if ``col`` is not
    a datetime column: a datetime or date dtype, date objects, or text that is all ISO 8601."""
    if pd.api.types.is_timedelta64_dtype(col):
        return col / pd.Timedelta(days=1)
    if not pd.api.types.is_datetime64_any_dtype(col):
        present = col.dropna()
        if not pd.api.types.is_object_dtype(col) and not pd.api.types.is_string_dtype(col):
            return None
        if len(present) == 0:
            return None
        if present.map(lambda v: isinstance(v, datetime.date)).all():
            col = pd.to_datetime(col, utc=True)
        elif present.map(lambda v: isinstance(v, str) and bool(ISO_DATE.match(v.strip()))).all():
            col = pd.to_datetime(
                col.map(lambda v: v.strip() if isinstance(v, str) else v),
                utc=True,
                format="ISO8601",
            )
        else:
            return None
    if getattr(col.dt, "tz", None) is None:
        col = col.dt.tz_localize("UTC")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    return ((col - epoch) / pd.Timedelta(days=1)).astype("float64")


def _mostly_numeric(col: pd.Series, name: Any, row_name: Callable[[int], str]) -> bool:
    """True if a text column holds numbers; raise if it holds numbers *and* some text, or
    numbers written with a decimal comma."""
    present = col.dropna()
    if len(present) == 0:
        return True
    parsed = pd.to_numeric(present, errors="coerce")
    bad = parsed.isna()
    share_numeric = 1.0 - float(bad.mean())
    if share_numeric == 1.0:
        return True
    text = present[bad].astype(str)
    if text.str.fullmatch(r"\s*[-+]?\d*,\d+\s*").all():
        raise MlcycleError(
            f"column {name!r} holds numbers with a decimal comma, such as {text.iloc[0]!r} "
            f"({row_name(int(text.index[0]))}); set data.decimal: ',' in params.yaml (or list "
            "the column in data.categorical if it is a category)"
        )
    if share_numeric >= 0.5:
        first = int(present[bad].index[0])
        raise MlcycleError(
            f"column {name!r} is numeric ({_pct(share_numeric)} of its values are numbers) but "
            f"holds text {present[first]!r} at {row_name(first)}; fix the value or list the "
            "column in data.categorical"
        )
    return False
