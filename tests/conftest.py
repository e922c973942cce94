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


@pytest.fixture(autouse=True)
def _no_user_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages under test log to their own SQLite files, never to a server the shell names."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


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


@pytest.fixture(scope="session")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> preprocess -> features on digits with the repo's params, run once per session.

    The folder holds params.yaml, data/, models/features.* and an empty params/tuned.json.
    """
    from pipeline import features, ingest, preprocess

    root = tmp_path_factory.mktemp("stages")
    params = root / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    p = str(params)
    assert (
        ingest.main(
            [
                "--params",
                p,
                "--data",
                f"{root}/data/raw.parquet",
                "--schema",
                f"{root}/data/schema.json",
            ]
        )
        == 0
    )
    assert (
        preprocess.main(
            [
                "--params",
                p,
                "--data",
                f"{root}/data/raw.parquet",
                "--schema",
                f"{root}/data/schema.json",
                "--out",
                f"{root}/data/prepared",
                "--noise-report",
                f"{root}/reports/noise.csv",
                "--metrics",
                f"{root}/metrics/preprocess.json",
            ]
        )
        == 0
    )
    assert (
        features.main(
            [
                "--params",
                p,
                "--schema",
                f"{root}/data/schema.json",
                "--train",
                f"{root}/data/prepared/train.parquet",
                "--out-arrays",
                f"{root}/models/features.npz",
                "--out-spec",
                f"{root}/models/features.json",
                "--metrics",
                f"{root}/metrics/features.json",
                "--plot",
                f"{root}/plots/features.csv",
            ]
        )
        == 0
    )
    (root / "params").mkdir()
    (root / "params/tuned.json").write_text("{}\n")
    return root


def train_args(
    inputs: Path, out: Path, params: Path | None = None, tuned: Path | None = None
) -> list[str]:
    """Arguments of ``pipeline.train`` reading ``inputs`` and writing under ``out``."""
    return [
        "--params",
        str(params or inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--features",
        f"{inputs}/models/features",
        "--data",
        f"{inputs}/data/prepared",
        "--tuned",
        str(tuned or inputs / "params/tuned.json"),
        "--model",
        f"{out}/model.pt",
        "--checkpoint",
        f"{out}/checkpoints/train.pt",
        "--metrics",
        f"{out}/train.json",
        "--history",
        f"{out}/history.csv",
        "--confusion",
        f"{out}/confusion.png",
        "--tracking-db",
        f"{out}/mlflow.db",
    ]


@pytest.fixture(scope="session")
def trained(stage_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train stage with the repo's params on digits (auto: a CNN)."""
    from pipeline import train

    out = tmp_path_factory.mktemp("train")
    assert train.main(train_args(stage_inputs, out)) == 0
    return out


@pytest.fixture(scope="session")
def hardened(stage_inputs: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harden stage with the repo's params on the trained model."""
    from pipeline import harden

    out = tmp_path_factory.mktemp("harden")
    assert (
        harden.main(
            [
                "--params",
                str(stage_inputs / "params.yaml"),
                "--schema",
                f"{stage_inputs}/data/schema.json",
                "--data",
                f"{stage_inputs}/data/prepared",
                "--model",
                f"{trained}/model.pt",
                "--train-metrics",
                f"{trained}/train.json",
                "--out",
                f"{out}/hardened.pt",
                "--metrics",
                f"{out}/robustness.json",
                "--plot",
                f"{out}/robustness.csv",
                "--figure",
                f"{out}/robustness.png",
                "--tracking-db",
                f"{out}/mlflow.db",
            ]
        )
        == 0
    )
    return out


def export_args(inputs: Path, model: Path, out: Path) -> list[str]:
    return [
        "--params",
        str(inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--model",
        str(model),
        "--test",
        f"{inputs}/data/prepared/test.parquet",
        "--out",
        f"{out}/model.onnx",
        "--out-int8",
        f"{out}/model.int8.onnx",
        "--metrics",
        f"{out}/export.json",
    ]


@pytest.fixture(scope="session")
def exported(stage_inputs: Path, hardened: Path) -> Path:
    """The export stage on the hardened model; writes beside it."""
    from pipeline import export

    assert export.main(export_args(stage_inputs, hardened / "hardened.pt", hardened)) == 0
    return hardened
