"""Shared fixtures: the repo's params with overrides, stage runners, the digits frame."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.ingest import load_source
from pipeline.schema import Schema, infer_schema

ROOT = Path(__file__).resolve().parents[1]


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``params`` with dotted keys set, e.g. ``{"data.source": "x.csv"}``."""
    out = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return out


@pytest.fixture
def write_params(tmp_path: Path) -> Callable[..., Path]:
    """Write the repo's params.yaml with overrides to a temp file and return its path."""

    def write(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(with_overrides(repo_params(), overrides or {})))
        return path

    return write


@pytest.fixture(scope="session")
def digits() -> tuple[pd.DataFrame, Schema]:
    """The validated digits frame and its schema, as ingest produces them."""
    df, shape = load_source("digits")
    return infer_schema(df, "target", None, 0.3, 50, shape)
