"""Ingest stage: read the source, validate it, write ``raw.parquet`` and ``schema.json``.

    python -m pipeline.ingest --params params.yaml --data data/raw.parquet --schema data/schema.json

``data.source`` is ``digits`` (scikit-learn's bundled 8x8 handwritten digits, no network) or a
path to a CSV or Parquet file whose ``data.target`` column holds the label.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from pipeline import stage
from pipeline.config import DataConfig
from pipeline.errors import MlcycleError
from pipeline.io import atomic_outputs, dump_json, write_parquet
from pipeline.schema import Schema, infer_schema


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


def ingest(cfg: DataConfig) -> tuple[pd.DataFrame, Schema]:
    """Load and validate the source described by ``cfg``."""
    df, image_shape = load_source(cfg.source)
    if cfg.sensitive is not None and cfg.sensitive not in df.columns:
        raise MlcycleError(f"data.sensitive: column {cfg.sensitive!r} not found in the data")
    return infer_schema(
        df, cfg.target, cfg.categorical, cfg.max_missing_share, cfg.max_categories, image_shape
    )


def body(ctx: stage.Context) -> None:
    args = ctx.args
    df, schema = ingest(ctx.section("data", DataConfig))
    with atomic_outputs(args.data, args.schema) as (data_tmp, schema_tmp):
        write_parquet(df, data_tmp)
        dump_json(schema.to_dict(), schema_tmp)
    print(
        f"ingest: {len(df)} rows, {len(schema.features)} features, "
        f"{schema.n_classes} classes -> {args.data}, {args.schema}"
    )


def main(argv: list[str] | None = None) -> int:
    return stage.run("ingest", __doc__, argv, ("--data", "--schema"), body, compute=False)


if __name__ == "__main__":
    sys.exit(main())
