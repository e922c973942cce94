"""Ingest stage: read the source, validate it, write ``raw.parquet`` and ``schema.json``.

    python -m pipeline.ingest --params params.yaml --feedback data/feedback.parquet \
        --data data/raw.parquet --schema data/schema.json

``data.source`` is ``digits`` (scikit-learn's bundled 8x8 handwritten digits, no network),
``diabetes`` (scikit-learn's bundled diabetes progression, a regression target, no network) or a
path to a CSV or Parquet file whose ``data.target`` column holds the label (``data.task``: a class
or a number; auto decides from the values). The schema is
inferred from the source alone. ``--feedback`` holds labelled production rows (written by
``python -m monitoring``; empty until then): the same feature columns and target, plus
``_feedback``, the "request_id:index" key. They are validated against the source's schema and
appended after the source rows, marked by that key; preprocess keeps the test split to the source.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import atomic_outputs, dump_json, source_file, write_parquet
from pipeline.contracts.params import DataConfig
from pipeline.contracts.schema import FEEDBACK, Schema
from pipeline.contracts.tasks import served_task
from pipeline.learning import stage
from pipeline.learning.infer_schema import infer_schema, strip_text


@dataclasses.dataclass(frozen=True)
class Source:
    """The source's rows, its image shape (digits only) and how its messages name a row."""

    frame: pd.DataFrame
    image_shape: tuple[int, ...] | None = None
    first_line: int = 1  # a CSV's first data row is line 2 of the file (the header is line 1)
    unit: str = "row"


def load_source(source: str, decimal: str = ".") -> Source:
    """Read the configured source; every unreadable file becomes one :class:`MlcycleError`."""
    if source == "digits":
        from sklearn.datasets import load_digits

        return Source(load_digits(as_frame=True).frame, (8, 8))
    if source == "diabetes":  # the raw (unscaled) columns, as a user's table would hold them
        from sklearn.datasets import load_diabetes

        return Source(load_diabetes(as_frame=True, scaled=False).frame)
    path = source_file(source)
    if path.stat().st_size == 0:
        raise MlcycleError(f"data.source: file {source!r} is empty")
    with path.open("rb") as fh:
        head = fh.read(8192)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if head.startswith(PARQUET_MAGIC):
            raise MlcycleError(
                f"data.source: {source!r} is a Parquet file named .csv; rename it to .parquet"
            )
        return Source(read_csv(path, source, head, decimal), first_line=2, unit="line")
    if suffix in (".parquet", ".pq"):
        return Source(read_parquet_source(path, source, head))
    raise MlcycleError(
        f"data.source: {source!r} is neither 'digits', 'diabetes' nor a .csv / .parquet file"
    )


PARQUET_MAGIC = b"PAR1"
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def csv_encoding(head: bytes, source: str) -> str | None:
    """The encoding a byte-order mark or UTF-16's zero bytes announce; None: UTF-8 or cp1252."""
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > 0.4 * len(odd) and even.count(0) == 0:
            return "utf-16-le"
        if even.count(0) > 0.4 * len(even) and odd.count(0) == 0:
            return "utf-16-be"
        at = head.index(b"\x00")
        raise MlcycleError(
            f"data.source: {source!r} is not a text CSV file (binary data at byte {at}); "
            "export it as CSV (UTF-8) or Parquet"
        )
    return None


def read_csv(path: Path, source: str, head: bytes, decimal: str) -> pd.DataFrame:
    """A CSV in UTF-8, UTF-16 (with or without BOM) or cp1252 (Excel on Windows)."""
    announced = csv_encoding(head, source)
    for encoding in [announced] if announced else ["utf-8", "cp1252"]:
        try:
            with path.open(newline="", encoding=encoding) as fh:
                header_line = fh.readline()
            sep = sniff_separator(header_line)
            header = next(csv.reader([header_line], delimiter=sep), [])
            _reject_duplicate_names(header, source)
            df = pd.read_csv(path, encoding=encoding, sep=sep, decimal=decimal)
        except UnicodeError:
            continue
        except pd.errors.EmptyDataError:
            raise MlcycleError(f"data.source: file {source!r} has no columns") from None
        except pd.errors.ParserError as exc:
            detail = str(exc).strip().splitlines()[-1]
            detail = detail.removeprefix("Error tokenizing data. ").removeprefix("C error: ")
            raise MlcycleError(
                f"data.source: {source!r} is not a well-formed CSV: {detail}"
            ) from None
        if encoding == "cp1252":
            print(f"ingest: {source!r} is not UTF-8; read it as cp1252 (Windows)", file=sys.stderr)
        return df
    raise MlcycleError(
        f"data.source: {source!r} is neither UTF-8, UTF-16 nor cp1252 text; save it as UTF-8"
    )


def sniff_separator(header_line: str) -> str:
    """``,`` unless the header has none and one of ``;`` / tab / ``|`` (Excel in many locales)."""
    if "," in header_line:
        return ","
    counts = {sep: header_line.count(sep) for sep in (";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _reject_duplicate_names(names: list[str], source: str) -> None:
    dupes = [n for n, count in Counter(names).items() if count > 1]
    if dupes:
        raise MlcycleError(f"data.source: {source!r} has duplicate column name {dupes[0]!r}")


def read_parquet_source(path: Path, source: str, head: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not head.startswith(PARQUET_MAGIC):
        looks_text = b"\x00" not in head and (b"," in head or b";" in head)
        hint = "; it looks like CSV text: rename it to .csv" if looks_text else ""
        raise MlcycleError(f"data.source: {source!r} is not a Parquet file{hint}")
    try:
        schema = pq.read_schema(path)
        _reject_duplicate_names(schema.names, source)
        for field in schema:
            t = field.type
            if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
                raise MlcycleError(
                    f"column {field.name!r} holds {t} values; mlcycle needs one number or "
                    "category per cell: expand it into columns"
                )
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MlcycleError(f"data.source: {source!r} is not readable Parquet: {exc}") from None


def ingest(cfg: DataConfig, feedback: str | Path | None = None) -> tuple[pd.DataFrame, Schema]:
    """Load and validate the source described by ``cfg``, then append ``feedback`` rows."""
    src = load_source(cfg.source, cfg.decimal)
    if cfg.sensitive is not None and cfg.sensitive not in src.frame.columns:
        raise MlcycleError(f"data.sensitive: column {cfg.sensitive!r} not found in the data")
    df, schema = infer_schema(
        src.frame,
        cfg.target,
        cfg.categorical,
        cfg.max_missing_share,
        cfg.max_categories,
        src.image_shape,
        lambda i: f"{src.unit} {i + src.first_line}",
        cfg.task,
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
    fb[schema.target] = strip_text(fb[schema.target])
    unlabelled = fb[schema.target].isna() | fb[FEEDBACK].isna()
    if unlabelled.any():
        row = int(np.flatnonzero(unlabelled.to_numpy())[0])
        raise MlcycleError(f"feedback {str(path)!r}: row {row + 1} has no label or no key")
    if fb[FEEDBACK].duplicated().any():
        key = fb[FEEDBACK][fb[FEEDBACK].duplicated()].iloc[0]
        raise MlcycleError(f"feedback {str(path)!r}: key {key!r} appears twice")
    fb[schema.target] = served_task(schema).feedback_target(fb[schema.target])
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
        + served_task(schema).describe_target(schema)
        + f" -> {args.data}, {args.schema}"
    )


def main(argv: list[str] | None = None) -> int:
    return stage.run(
        "ingest", __doc__, argv, ("--feedback", "--data", "--schema"), body, compute=False
    )


if __name__ == "__main__":
    sys.exit(main())
