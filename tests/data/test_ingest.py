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
    "unsupported file type": (
        lambda d: {"data.source": _write(d / "t.xlsx", "x")},
        "neither 'digits' nor",
    ),
}


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
