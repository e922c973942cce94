"""Ingest: schema contents, and every bad input gives a clear error and leaves outputs intact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import ingest
from tests.conftest import EMPTY_FEEDBACK


def run_ingest(params: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = ingest.main(
        [
            "--params",
            str(params),
            "--feedback",
            str(EMPTY_FEEDBACK),
            "--data",
            str(out / "raw.parquet"),
            "--schema",
            str(out / "schema.json"),
        ]
    )
    return code, capsys.readouterr().err


def test_digits_schema(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _ = run_ingest(write_params(), tmp_path, capsys)
    assert code == 0
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert len(schema["features"]) == 64
    assert schema["target"] == {"name": "target", "classes": list(range(10))}
    assert schema["image_shape"] == [8, 8]
    assert {f["kind"] for f in schema["features"]} == {"numeric"}
    assert max(f["max"] for f in schema["features"]) == 16.0
    assert len(pd.read_parquet(tmp_path / "raw.parquet")) == 1797


def _table(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=40),
            "colour": rng.choice(["red", "green"], 40),
            "y": rng.choice(["a", "b"], 40),
        }
    )


def _csv(df: pd.DataFrame, path: Path) -> str:
    df.to_csv(path, index=False)
    return str(path)


BAD_INPUTS: dict[str, tuple[Callable[[Path], dict], str]] = {
    "file missing": (lambda d: {"data.source": str(d / "nope.csv")}, "not found"),
    "file empty": (lambda d: {"data.source": str(_touch(d / "empty.csv"))}, "is empty"),
    "header only": (lambda d: {"data.source": _write(d / "h.csv", "x,y\n")}, "no rows"),
    "target missing": (
        lambda d: {"data.source": _csv(_table(d), d / "t.csv"), "data.target": "label"},
        "data.target: column 'label' not found",
    ),
    "single class": (
        lambda d: {"data.source": _csv(_table(d).assign(y="a"), d / "t.csv"), "data.target": "y"},
        "single class 'a'",
    ),
    "numeric column holding text": (
        lambda d: {
            "data.source": _csv(_table(d).astype({"x": object}).pipe(_put_text), d / "t.csv"),
            "data.target": "y",
        },
        "column 'x' is numeric",
    ),
    "too many NaN": (
        lambda d: {"data.source": _csv(_table(d).pipe(_put_nan), d / "t.csv"), "data.target": "y"},
        "column 'x' has 50% missing or infinite values",
    ),
    "inf counts as missing": (
        lambda d: {"data.source": _csv(_table(d).pipe(_put_inf), d / "t.csv"), "data.target": "y"},
        "column 'x' has 50% missing or infinite values",
    ),
    "duplicate column names (csv)": (
        lambda d: {
            "data.source": _write(d / "dup.csv", "x,x,y\n1,2,a\n3,4,b\n"),
            "data.target": "y",
        },
        "duplicate column name 'x'",
    ),
    "duplicate column names (parquet)": (
        lambda d: {"data.source": _dup_parquet(d / "dup.parquet"), "data.target": "y"},
        "duplicate column name 'x'",
    ),
    "too many categories": (
        lambda d: {
            "data.source": _csv(_table(d).assign(colour=[f"c{i}" for i in range(40)]), d / "t.csv"),
            "data.target": "y",
            "data.max_categories": 30,
        },
        "column 'colour' is categorical with 40 distinct values; at most data.max_categories = 30",
    ),
    "unknown params key": (lambda d: {"data.sauce": "digits"}, "unknown key 'data.sauce'"),
    "text in a numeric column is named by its line in the file": (
        lambda d: {
            "data.source": _csv(_table(d).astype({"x": object}).pipe(_put_text), d / "t.csv"),
            "data.target": "y",
        },
        "holds text 'n/a?' at line 5",
    ),
    "share of numbers never rounds up to 100%": (
        lambda d: {"data.source": _write(d / "p.csv", _one_text_in(400)), "data.target": "y"},
        "(99.7% of its values are numbers)",
    ),
    "row with an extra field": (
        lambda d: {"data.source": _write(d / "e.csv", "x,y\n1,a\n2,b\n3,a,9\n4,b\n")},
        "is not a well-formed CSV: Expected 2 fields in line 4, saw 3",
    ),
    "binary garbage named .csv": (
        lambda d: {"data.source": _write_bytes(d / "g.csv", bytes(range(256)) * 8)},
        "is not a text CSV file",
    ),
    "a CSV named .parquet": (
        lambda d: {"data.source": _csv(_table(d), d / "t.parquet"), "data.target": "y"},
        "is not a Parquet file; it looks like CSV text: rename it to .csv",
    ),
    "a Parquet file named .csv": (
        lambda d: {"data.source": _parquet(_table(d), d / "t.csv"), "data.target": "y"},
        "is a Parquet file named .csv; rename it to .parquet",
    ),
    "a directory as source": (
        lambda d: {"data.source": str(d)},
        "is a directory; point it at one .csv or .parquet file",
    ),
    "list column in Parquet": (
        lambda d: {
            "data.source": _parquet(_table(d).assign(v=[[1.0, 2.0]] * 40), d / "l.parquet"),
            "data.target": "y",
        },
        "column 'v' holds list",
    ),
    "decimal-comma numbers with few values": (
        lambda d: {
            "data.source": _write(d / "c.csv", "x,y\n" + '"1,5",a\n"2,5",b\n' * 20),
            "data.target": "y",
        },
        "column 'x' holds numbers with a decimal comma, such as '1,5' (line 2); set data.decimal",
    ),
    "continuous target": (
        lambda d: {
            "data.source": _csv(_table(d).assign(y=np.linspace(-305.8, 90.1, 40)), d / "t.csv"),
            "data.target": "y",
            "data.task": "classification",
        },
        "target column 'y' looks continuous (40 distinct values in 40 rows, such as -305.8) but "
        "data.task is classification: set data.task: regression",
    ),
    "regression target with text": (
        lambda d: {
            "data.source": _csv(
                _table(d).assign(y=[*np.linspace(0.5, 9.5, 39), "high"]), d / "t.csv"
            ),
            "data.target": "y",
            "data.task": "regression",
        },
        "target column 'y' holds text 'high' at line 41; data.task is regression",
    ),
    "regression target with few values": (
        lambda d: {
            "data.source": _csv(_table(d).assign(y=[0.5, 1.5] * 20), d / "t.csv"),
            "data.target": "y",
            "data.task": "regression",
        },
        "target column 'y' has 2 distinct values; a regressor needs at least 10",
    ),
    "unsupported file type": (
        lambda d: {"data.source": _write(d / "t.xlsx", "x")},
        "neither 'digits', 'diabetes' nor",
    ),
}


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _parquet(df: pd.DataFrame, path: Path) -> str:
    df.to_parquet(path, index=False)
    return str(path)


def _one_text_in(n: int) -> str:
    rows = [f"{i * 0.5},{'ab'[i % 2]}" for i in range(n)]
    rows[7] = "oops,b"
    return "x,y\n" + "\n".join(rows) + "\n"


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _put_text(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, "x"] = "n/a?"
    return df


def _put_nan(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[::2, "x"] = np.nan
    return df


def _put_inf(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[::2, "x"] = np.inf
    return df


def _dup_parquet(path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        [pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array(["a", "b"])], names=["x", "x", "y"]
    )
    pq.write_table(table, path)
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_problem_and_keeps_previous_outputs(
    case: str,
    write_params: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    assert run_ingest(write_params(), out, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    make_overrides, message = BAD_INPUTS[case]
    code, err = run_ingest(write_params(make_overrides(tmp_path), name="bad.yaml"), out, capsys)

    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left either


def test_user_csv_with_categoricals(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    df = _table(tmp_path)
    df.loc[5, "colour"] = None
    params = write_params({"data.source": _csv(df, tmp_path / "t.csv"), "data.target": "y"})
    assert run_ingest(params, tmp_path, capsys)[0] == 0
    schema = json.loads((tmp_path / "schema.json").read_text())
    kinds = {f["name"]: f for f in schema["features"]}
    assert kinds["x"]["kind"] == "numeric"
    assert kinds["colour"]["kind"] == "categorical"
    assert kinds["colour"]["categories"] == ["green", "red"]
    assert schema["target"]["classes"] == ["a", "b"]


def _ingested(
    params: Path, out: Path, capsys: pytest.CaptureFixture
) -> tuple[dict, pd.DataFrame, str]:
    code, err = run_ingest(params, out, capsys)
    assert code == 0, err
    schema = json.loads((out / "schema.json").read_text())
    return schema, pd.read_parquet(out / "raw.parquet"), err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "cp1252"])
def test_common_encodings_are_read(
    encoding: str, write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    df = _table(tmp_path).assign(colour=lambda f: f["colour"].replace("red", "café"))
    df.to_csv(tmp_path / "t.csv", index=False, encoding=encoding)
    params = write_params({"data.source": str(tmp_path / "t.csv"), "data.target": "y"})
    schema, _, _ = _ingested(params, tmp_path / "out", capsys)
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == ["café", "green"]


def test_semicolon_csv_with_decimal_commas(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Excel's CSV in most of Europe: ';' between fields, ',' in numbers."""
    (tmp_path / "eu.csv").write_text("x;y\n" + "1,5;a\n2,25;b\n" * 10)
    params = write_params(
        {"data.source": str(tmp_path / "eu.csv"), "data.target": "y", "data.decimal": ","}
    )
    schema, raw, _ = _ingested(params, tmp_path / "out", capsys)
    assert schema["features"] == [
        {"name": "x", "kind": "numeric", "dtype": "float64", "min": 1.5, "max": 2.25}
    ]
    assert raw["x"].tolist()[:2] == [1.5, 2.25]


def test_a_saved_pandas_index_is_dropped_not_learned(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """to_csv without index=False on label-sorted rows: the index alone would predict the label."""
    df = _table(tmp_path).sort_values("y").reset_index(drop=True)
    df.to_csv(tmp_path / "t.csv")  # writes the index as an unnamed first column
    df.assign(row_no=np.arange(1, len(df) + 1)).to_csv(tmp_path / "n.csv", index=False)
    for name in ("t.csv", "n.csv"):
        params = write_params({"data.source": str(tmp_path / name), "data.target": "y"})
        schema, raw, err = _ingested(params, tmp_path / name.replace(".", "_"), capsys)
        assert [f["name"] for f in schema["features"]] == ["x", "colour"]
        assert "is a row index (unique increasing integers); dropped" in err
        assert list(raw.columns[:2]) == ["x", "colour"]


def test_labels_and_categories_are_stripped_and_case_variants_named(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    df = _table(tmp_path)
    df["y"] = ["yes", "yes ", " no", "no"] * 9 + ["Yes", "no", "yes", "no"]
    df["colour"] = [" red", "red", "green ", "green"] * 10
    df.to_csv(tmp_path / "t.csv", index=False)
    params = write_params({"data.source": str(tmp_path / "t.csv"), "data.target": "y"})
    schema, raw, err = _ingested(params, tmp_path / "out", capsys)
    assert schema["target"]["classes"] == ["Yes", "no", "yes"]
    assert "classes 'Yes' and 'yes' that differ only in case" in err
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == ["green", "red"]
    assert set(raw["y"]) == {"Yes", "no", "yes"}


def test_datetimes_become_days_with_nat_as_missing(
    write_params: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    df = _table(tmp_path)
    df["when"] = pd.date_range("2024-01-01", periods=40, freq="D")
    df.loc[[3, 9], "when"] = pd.NaT
    df["text_day"] = [f"2024-02-{d:02d}" for d in range(1, 29)] + [None] * 12
    df.to_parquet(tmp_path / "t.parquet", index=False)
    params = write_params({"data.source": str(tmp_path / "t.parquet"), "data.target": "y"})
    schema, raw, _ = _ingested(params, tmp_path / "out", capsys)
    when = next(f for f in schema["features"] if f["name"] == "when")
    assert when["kind"] == "numeric" and when["dtype"].startswith("datetime")
    assert when["min"] == (pd.Timestamp("2024-01-01") - pd.Timestamp("1970-01-01")).days
    assert when["max"] - when["min"] == 39  # days, not nanoseconds
    assert raw["when"].isna().sum() == 2
    text_day = next(f for f in schema["features"] if f["name"] == "text_day")
    assert text_day["kind"] == "numeric" and text_day["max"] - text_day["min"] == 27
