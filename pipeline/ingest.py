"""Ingest stage: read the source, validate it, write ``raw.parquet`` and ``schema.json``.

    python -m pipeline.ingest --params params.yaml --feedback data/feedback.parquet \
        --data data/raw.parquet --schema data/schema.json

``data.source`` is ``digits`` (scikit-learn's bundled 8x8 handwritten digits, no network) or a
path to a CSV or Parquet file whose ``data.target`` column holds the label. The schema is
inferred from the source alone. ``--feedback`` holds labelled production rows (written by
``python -m monitoring``; empty until then): the same feature columns and target, plus
``_feedback``, the "request_id:index" key. They are validated against the source's schema and
appended after the source rows, marked by that key; preprocess keeps the test split to the source.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import stage
from pipeline.config import DataConfig
from pipeline.errors import MlcycleError
from pipeline.io import atomic_outputs, dump_json, write_parquet
from pipeline.schema import FEEDBACK, Schema, infer_schema


def load_source(source: str) -> tuple[pd.DataFrame, tuple[int, ...] | None]:
    """Read the configured source; returns the frame and its image shape (digits only)."""
    if source == "digits":
        from sklearn.datasets import load_digits

        return load_digits(as_frame=True).frame, (8, 8)
    path = Path(source)
    if not path.is_file():
        raise MlcycleError(f"data.source: file {source!r} not found")
    if path.stat().st_size == 0:
        raise MlcycleError(f"data.source: file {source!r} is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        _reject_duplicate_names(header, source)
        try:
            return pd.read_csv(path), None
        except pd.errors.EmptyDataError:
            raise MlcycleError(f"data.source: file {source!r} has no columns") from None
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        _reject_duplicate_names(names, source)
        return pd.read_parquet(path), None
    raise MlcycleError(f"data.source: {source!r} is neither 'digits' nor a .csv / .parquet file")


def _reject_duplicate_names(names: list[str], source: str) -> None:
    dupes = [n for n, count in Counter(names).items() if count > 1]
    if dupes:
        raise MlcycleError(f"data.source: {source!r} has duplicate column name {dupes[0]!r}")


def ingest(cfg: DataConfig, feedback: str | Path | None = None) -> tuple[pd.DataFrame, Schema]:
    """Load and validate the source described by ``cfg``, then append ``feedback`` rows."""
    df, image_shape = load_source(cfg.source)
    if cfg.sensitive is not None and cfg.sensitive not in df.columns:
        raise MlcycleError(f"data.sensitive: column {cfg.sensitive!r} not found in the data")
    df, schema = infer_schema(
        df, cfg.target, cfg.categorical, cfg.max_missing_share, cfg.max_categories, image_shape
    )
    df[FEEDBACK] = pd.Series([None] * len(df), index=df.index, dtype="string")
    if feedback is not None:
        rows = read_feedback(Path(feedback), schema, list(df.columns))
        if len(rows):
            df = pd.concat([df, rows], ignore_index=True)
    return df, schema


def read_feedback(path: Path, schema: Schema, columns: list[str]) -> pd.DataFrame:
    """Labelled production rows in the source's columns; empty if the file has no rows."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise MlcycleError(f"--feedback: file {str(path)!r} not found (an empty one is in git)")
    try:
        fb = pq.read_table(path).to_pandas()
    except Exception as exc:
        raise MlcycleError(
            f"--feedback: {str(path)!r} is not a readable Parquet file: {exc}"
        ) from None
    if len(fb) == 0:
        return fb
    missing = [c for c in columns if c not in fb.columns]
    if missing:
        raise MlcycleError(f"feedback {str(path)!r}: column {missing[0]!r} is missing")
    fb = fb[columns].reset_index(drop=True)
    unlabelled = fb[schema.target].isna() | fb[FEEDBACK].isna()
    if unlabelled.any():
        row = int(np.flatnonzero(unlabelled.to_numpy())[0])
        raise MlcycleError(f"feedback {str(path)!r}: row {row + 1} has no label or no key")
    if fb[FEEDBACK].duplicated().any():
        key = fb[FEEDBACK][fb[FEEDBACK].duplicated()].iloc[0]
        raise MlcycleError(f"feedback {str(path)!r}: key {key!r} appears twice")
    try:
        schema.encode_labels(fb[schema.target])  # a class the source does not have: refused
    except MlcycleError as exc:
        raise MlcycleError(f"feedback {str(path)!r}: {exc}") from None
    for feat in schema.features:
        if feat.kind == "numeric":
            fb[feat.name] = pd.to_numeric(fb[feat.name], errors="coerce").astype("float64")
        else:
            fb[feat.name] = fb[feat.name].astype("string")
    fb[FEEDBACK] = fb[FEEDBACK].astype("string")
    return fb


def body(ctx: stage.Context) -> None:
    args = ctx.args
    df, schema = ingest(ctx.section("data", DataConfig), args.feedback)
    with atomic_outputs(args.data, args.schema) as (data_tmp, schema_tmp):
        write_parquet(df, data_tmp)
        dump_json(schema.to_dict(), schema_tmp)
    n_feedback = int(df[FEEDBACK].notna().sum())
    print(
        f"ingest: {len(df)} rows ({n_feedback} from feedback), {len(schema.features)} features, "
        f"{schema.n_classes} classes -> {args.data}, {args.schema}"
    )


def main(argv: list[str] | None = None) -> int:
    return stage.run(
        "ingest", __doc__, argv, ("--feedback", "--data", "--schema"), body, compute=False
    )


if __name__ == "__main__":
    sys.exit(main())
